//! The API's real answers match the schemas of its generated OpenAPI
//! document: a project, a deployment with its instances, a domain and the
//! token list, from a running server after a real deployment, validated with
//! the `jsonschema` crate against `#/components/schemas/...` of the served
//! document (JSON Schema 2020-12, which OpenAPI 3.1 schemas are).

use super::{deploy_wait, unique, Cleanup};
use crate::harness::*;
use serde_json::{json, Value};

/// The schema `name` of `doc`, its references resolved inside `doc`.
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    assert!(
        doc["components"]["schemas"].get(name).is_some(),
        "no schema {name} in the document"
    );
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

/// The property names a schema documents (through `$ref` and `allOf`).
fn documented_fields(doc: &Value, schema: &Value, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        documented_fields(doc, &doc["components"]["schemas"][name], out);
    }
    if let Some(p) = schema["properties"].as_object() {
        out.extend(p.keys().cloned());
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        documented_fields(doc, part, out);
    }
}

/// `value` is valid against schema `name`, and has no field the schema
/// does not name.
fn check(doc: &Value, name: &str, value: &Value) {
    let v = validator(doc, name);
    let errors: Vec<String> = v.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{name} does not match its schema: {errors:?}\n{value}"
    );
    let mut fields = Vec::new();
    documented_fields(
        doc,
        &json!({"$ref": format!("#/components/schemas/{name}")}),
        &mut fields,
    );
    for key in value.as_object().expect("an object").keys() {
        assert!(
            fields.contains(key),
            "{name}.{key} is not documented: {value}"
        );
    }
}

#[test]
fn real_answers_match_the_documented_schemas() {
    let project = unique("e2eoa");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("openapi v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}\n{}", s.log());
    let c = s.client();
    let api = |method: reqwest::Method, path: &str, body: Option<Value>| -> Value {
        let mut r = c
            .request(method, format!("{}/api/v1{path}", s.api()))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let st = r.status();
        let v: Value = r.json().unwrap();
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    };
    let doc = api(reqwest::Method::GET, "/openapi.json", None);

    let id = d["id"].as_str().unwrap();
    let dep = api(reqwest::Method::GET, &format!("/deployments/{id}"), None);
    assert!(
        !dep["instances"].as_array().unwrap().is_empty(),
        "a deployment with instances: {dep}"
    );
    check(&doc, "Deployment", &dep);
    check(&doc, "InstanceInfo", &dep["instances"][0]);
    check(
        &doc,
        "Project",
        &api(reqwest::Method::GET, "/projects", None)[0],
    );
    check(
        &doc,
        "ProjectDetail",
        &api(reqwest::Method::GET, &format!("/projects/{project}"), None),
    );

    let host = format!("{project}.example.test");
    let added = api(
        reqwest::Method::POST,
        &format!("/projects/{project}/domains"),
        Some(json!({"hostname": host})),
    );
    check(&doc, "Domain", &added);
    let listed = api(
        reqwest::Method::GET,
        &format!("/projects/{project}/domains"),
        None,
    );
    check(&doc, "Domain", &listed[0]);

    let created = api(
        reqwest::Method::POST,
        "/tokens",
        Some(
            json!({"name": format!("{project}-ci"), "role": "viewer", "project": project, "expires": "1d"}),
        ),
    );
    check(&doc, "CreatedToken", &created);
    let tokens = api(reqwest::Method::GET, "/tokens", None);
    let mine: Vec<&Value> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["project"] == project.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{tokens}");
    for t in tokens.as_array().unwrap() {
        check(&doc, "TokenInfo", t);
    }

    // The checks can fail: a wrong type, a missing required field and an
    // undocumented field are each caught.
    let mut bad = dep.clone();
    bad["isActive"] = json!("yes");
    assert!(!validator(&doc, "Deployment").is_valid(&bad));
    let mut bad = dep.clone();
    bad.as_object_mut().unwrap().remove("projectName");
    assert!(!validator(&doc, "Deployment").is_valid(&bad));
    let mut bad = added.clone();
    bad["verifiedBy"] = json!("x");
    let caught = std::panic::catch_unwind(|| check(&doc, "Domain", &bad));
    assert!(caught.is_err(), "an undocumented field passed");
    api(
        reqwest::Method::DELETE,
        &format!("/tokens/{project}-ci"),
        None,
    );
}

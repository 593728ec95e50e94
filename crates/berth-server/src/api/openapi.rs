//! The OpenAPI document of the API, written by hand next to the router.

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn op(summary: &str, ok: &str) -> Value {
    json!({
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
    })
}

pub fn spec() -> Value {
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "berth API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"}}},
            }
        },
        "paths": {
            "/health": {"get": {"summary": "liveness (no token needed)", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": op("this document", "200")},
            "/projects": {"get": op("list projects", "200"), "post": op("create a project", "201")},
            "/projects/{name}": {"get": op("show a project with its environments and services", "200"), "patch": op("change a project", "200")},
            "/projects/{name}/environments": {"get": op("list environments", "200"), "post": op("create an environment", "201")},
            "/projects/{name}/environments/{env}": {"delete": op("tear an environment down", "204")},
            "/projects/{name}/environments/{env}/variables": {"get": op("list variables (secrets masked)", "200")},
            "/projects/{name}/environments/{env}/variables/{key}": {"put": op("set a variable", "200"), "delete": op("unset a variable", "204")},
            "/deployments": {"get": op("list deployments, newest first", "200"), "post": op("deploy", "201")},
            "/deployments/{id}": {"get": op("inspect a deployment", "200")},
            "/deployments/{id}/cancel": {"post": op("cancel a queued or running deployment", "200")},
            "/deployments/{id}/promote": {"post": op("make a historic deployment active again", "201")},
            "/deployments/{id}/redeploy": {"post": op("run the same commit again", "201")},
            "/deployments/{id}/logs": {"get": op("logs of a deployment; follow=true streams SSE", "200")},
            "/deployments/{id}/manifest": {"get": op("files of a deployment's image (path, size, sha256)", "200")},
            "/deployments/{id}/pin": {"get": op("the pin value that sends requests of a route under canary to this deployment (X-Berth-Deployment header or berth_rollout cookie)", "200")},
            "/logs": {"get": op("logs of a service across deployments; follow=true streams SSE", "200")},
            "/rollback": {"post": op("roll a service back to its previous deployment", "201")},
            "/projects/{name}/domains": {"get": op("list custom domains", "200"), "post": op("attach a custom domain (returns the TXT record to create)", "201")},
            "/projects/{name}/domains/{hostname}": {"delete": op("detach a custom domain", "204")},
            "/projects/{name}/domains/{hostname}/verify": {"post": op("check the TXT record; a verified domain is routed", "200")},
            "/routes": {"get": op("list external routes", "200"), "post": op("add an external route", "201")},
            "/routes/{hostname}": {"delete": op("remove an external route", "204")},
            "/cluster": {"get": op("the servers sharing this store: id, apiUrl, isLeader, epoch, lastSeenAt (the leader first)", "200")},
            "/projects/{name}/runs": {"get": op("list one-off and job runs, newest first (without output)", "200"), "post": op("start a detached one-off run of a command in the active deployment's image", "202")},
            "/projects/{name}/runs/attach": {"post": op("run a command attached: the body is its stdin, the answer NDJSON events (started, line, exit)", "200")},
            "/runs/{id}": {"get": op("a run with its output (secrets redacted)", "200")},
            "/projects/{name}/jobs": {"get": op("scheduled jobs of the project's environments (from the active deployments' berth.toml) with their next firing and last runs", "200")},
            "/projects/{name}/jobs/{job}/runs": {"get": op("a job's runs, newest first, with their output (secrets redacted)", "200"), "post": op("run a job now, outside its schedule (detached)", "202")},
            "/projects/{name}/notifications": {"get": op("notification endpoints with their latest delivery attempts (URLs shown as scheme://host/…)", "200"), "post": op("add a notification endpoint: the answer holds its signing secret, shown once", "201")},
            "/projects/{name}/notifications/{id}": {"delete": op("remove a notification endpoint and its deliveries", "204")},
            "/nodes": {"get": op("list the swarm's nodes (--runtime swarm; 409 otherwise)", "200")},
            "/nodes/{id}/drain": {"post": op("move every instance off a node (replacements healthy and routed first), then drain it", "200")},
            "/nodes/{id}/activate": {"post": op("let the swarm place instances on a node again", "200")},
        }
    });
    // Tokens and the audit log (apart: one json! of every path would pass
    // the macro's recursion limit).
    let paths = doc["paths"].as_object_mut().expect("paths");
    paths.insert("/tokens".into(), json!({"get": op("list API tokens: name, role, project, expiresAt, lastUsedAt (never the token; admin)", "200"), "post": op("create an API token (role admin, deployer or viewer; optionally one project and an expiry); the token is in this answer only", "201")}));
    paths.insert("/tokens/{name}".into(), json!({"delete": op("revoke an API token (effective at its next request, open log streams included)", "200")}));
    paths.insert("/audit".into(), json!({"get": op("the audit log, newest first: at, token, action, target, sourceIp (admin; project= narrows it)", "200")}));
    // Maintenance (apart, for the same reason).
    paths.insert("/projects/{name}/maintenance".into(), json!({"get": op("what of the project is in maintenance: projectName, environmentName, serviceName (null: every service), since", "200")}));
    paths.insert("/projects/{name}/environments/{env}/maintenance".into(), json!({"put": op("put every service of the environment in maintenance (the edge answers 503 with Retry-After and berth's maintenance page; health checks unaffected); answers what of the project is in maintenance", "200"), "delete": op("take the environment and every service of it out of maintenance", "200")}));
    paths.insert("/projects/{name}/environments/{env}/services/{service}/maintenance".into(), json!({"put": op("put one service of the environment in maintenance (404 when it was never deployed there)", "200"), "delete": op("take one service out of maintenance (409 while the whole environment is in it)", "200")}));
    // Volumes (apart, for the same reason).
    let volumes = json!({
        "/projects/{name}/volumes": {"get": op("the project's volumes (query environment), with the services that mount each", "200")},
        "/projects/{name}/volumes/{volume}/backups": {"get": op("a volume's backups (query environment), newest first: id, status, sizeBytes, checksum, createdAt", "200"), "post": op("back a volume up (query environment): a gzip tar archive with its sha256, read back before it is reported succeeded (else failed with the reason)", "200")},
        "/projects/{name}/volumes/{volume}/restore": {"post": op("restore a backup (body backupId, query environment): checksum verified first, the instances stopped, the current content kept as a backup, the archive written, the instances started again", "200")},
    });
    if let Some(more) = volumes.as_object() {
        paths.extend(more.clone());
    }
    // A deployment's event stream (apart, for the same reason).
    paths.insert("/deployments/{id}/events".into(), json!({"get": op("Server-Sent Events of a deployment as it changes: one `deployment` event (id: its version, data: the deployment JSON) at once, then one per saved change; the stream ends after the first terminal state (`deploy --wait` follows it)", "200")}));
    declare_path_parameters(&mut doc);
    doc
}

/// OpenAPI requires every `{name}` of a path to be declared as a
/// parameter: one string parameter per segment, on the path item.
fn declare_path_parameters(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let params: Vec<Value> = path_parameters(path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            item["parameters"] = Value::Array(params);
        }
    }
}

/// The `{name}` segments of a path.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

pub async fn document() -> Response {
    axum::Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    /// (path, method) of every route of the `/api/v1` router, read from
    /// the router's source (`api::router`), so a route added without its
    /// documentation, or documented without a route, fails this test.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let start = src.find("let authed").expect("api::router builds `authed`");
        let end = src[start..].find("let hooks").expect("then `hooks`") + start;
        let mut out = BTreeSet::new();
        for (at, _) in src[start..end].match_indices(".route(") {
            // The arguments of this `.route(...)` call, parentheses balanced.
            let args = &src[start + at + ".route(".len()..end];
            let mut depth = 1;
            let close = args
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .expect("balanced .route( call")
                .0;
            let call = &args[..close];
            let path = call.split('"').nth(1).expect("a path literal");
            for m in METHODS {
                let found = call.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0 || !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if found {
                    out.insert((path.to_string(), m.to_string()));
                }
            }
        }
        out
    }

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (p, item) in doc["paths"].as_object().unwrap() {
            for (m, _) in item.as_object().unwrap() {
                if m != "parameters" {
                    out.insert((p.clone(), m.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routes = routed();
        assert!(
            routes.len() >= 25,
            "router source not understood: {routes:?}"
        );
        let docs = documented(&spec());
        let undocumented: Vec<_> = routes.difference(&docs).collect();
        let unrouted: Vec<_> = docs.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_is_valid_openapi() {
        let doc = spec();
        for (p, item) in doc["paths"].as_object().unwrap() {
            let declared: BTreeSet<&str> = item["parameters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .inspect(|x| {
                            assert_eq!(
                                (&x["in"], &x["required"]),
                                (&json!("path"), &json!(true)),
                                "{p}"
                            )
                        })
                        .map(|x| x["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let wanted: BTreeSet<&str> = path_parameters(p).collect();
            assert_eq!(declared, wanted, "{p}: path parameters");
            for (m, op) in item.as_object().unwrap() {
                if m == "parameters" {
                    continue;
                }
                assert!(METHODS.contains(&m.as_str()), "{p}: {m}");
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{p} {m}"
                );
                let responses = op["responses"].as_object().unwrap();
                let ok: Vec<_> = responses.keys().filter(|k| k.starts_with('2')).collect();
                assert_eq!(ok.len(), 1, "{p} {m}: one success status");
                if p != "/health" {
                    assert_eq!(
                        responses["default"]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{p} {m}: errors documented"
                    );
                }
            }
        }
    }

    /// The checks above can fail: a router with a route the document lacks.
    #[test]
    fn an_undocumented_route_is_noticed() {
        let mut doc = spec();
        doc["paths"]
            .as_object_mut()
            .unwrap()
            .remove("/deployments/{id}/manifest");
        let missing: Vec<_> = routed().difference(&documented(&doc)).cloned().collect();
        assert_eq!(
            missing,
            [("/deployments/{id}/manifest".to_string(), "get".to_string())]
        );
    }
}

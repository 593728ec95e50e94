//! The OpenAPI document of the API, generated with `utoipa` from the
//! handlers' `#[utoipa::path]` attributes (path, method, parameters,
//! bodies, responses) and the `ToSchema` derives of the request and response
//! types, so the schemas follow serde's field names (`camelCase`, `ref`, …)
//! and cannot drift from what the handlers take and return. A route of
//! [`super::router`] missing here, or listed here without a route, fails the
//! tests below.

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "berth API"),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&Bearer),
    paths(
        super::health,
        document,
        super::projects::list,
        super::projects::create,
        super::projects::show,
        super::projects::update,
        super::projects::list_envs,
        super::projects::create_env,
        super::projects::delete_env,
        super::projects::list_vars,
        super::projects::set_var,
        super::projects::unset_var,
        super::deployments::list,
        super::deployments::create,
        super::deployments::show,
        super::deployments::cancel,
        super::deployments::promote,
        super::deployments::redeploy,
        super::logs::deployment_logs,
        super::deployments::events,
        super::deployments::manifest,
        super::deployments::pin,
        super::logs::service_logs,
        super::deployments::rollback,
        super::domains::list,
        super::domains::add,
        super::domains::remove,
        super::domains::verify,
        super::routes::list,
        super::routes::add,
        super::routes::remove,
        super::cluster::status,
        super::runs::list,
        super::runs::create,
        super::runs::attach,
        super::runs::show,
        super::jobs::list,
        super::jobs::runs,
        super::jobs::run_now,
        super::volumes::list,
        super::volumes::backups,
        super::volumes::backup,
        super::volumes::restore,
        super::notify::list,
        super::notify::add,
        super::notify::remove,
        super::maintenance::list,
        super::maintenance::env_on,
        super::maintenance::env_off,
        super::maintenance::service_on,
        super::maintenance::service_off,
        super::nodes::list,
        super::nodes::drain,
        super::nodes::activate,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::audit::list,
    )
)]
struct ApiDoc;

/// Declares the `bearer` scheme every operation but `/health` requires.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served.
pub fn spec() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
    summary = "this document",
    responses(
        (status = 200, description = "the OpenAPI document", body = Object),
        (status = "default", description = "error", body = berth_core::api::ErrorBody)
    )
)]
pub async fn document() -> Response {
    axum::Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
                out.insert((p.clone(), m.clone()));
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

    /// The `{name}` segments of a path.
    fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
        path.split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
    }

    #[test]
    fn every_operation_is_complete() {
        let doc = spec();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], json!([{"bearer": []}]));
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut ids = BTreeSet::new();
        for (p, item) in doc["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                assert!(METHODS.contains(&m.as_str()), "{p}: {m}");
                assert!(
                    ids.insert(op["operationId"].to_string()),
                    "{p} {m}: operationId"
                );
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{p} {m}"
                );
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["in"] == "path")
                    .inspect(|x| assert_eq!(x["required"], true, "{p} {m}"))
                    .map(|x| x["name"].as_str().unwrap())
                    .collect();
                let wanted: BTreeSet<&str> = path_parameters(p).collect();
                assert_eq!(declared, wanted, "{p} {m}: path parameters");
                let responses = op["responses"].as_object().unwrap();
                let ok: Vec<_> = responses.keys().filter(|k| k.starts_with('2')).collect();
                assert_eq!(ok.len(), 1, "{p} {m}: one success status");
                if p == "/health" {
                    assert_eq!(op["security"], json!([{}]), "health needs no token");
                    continue;
                }
                assert_eq!(
                    responses["default"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{p} {m}: errors documented"
                );
                // Every answer with content has a schema, and every schema
                // it names exists.
                let text = op.to_string();
                for r in text.split("\"#/components/schemas/").skip(1) {
                    let name = &r[..r.find('"').unwrap()];
                    assert!(schemas.contains_key(name), "{p} {m}: {name}");
                }
                if *ok[0] != "204" {
                    let content = responses[ok[0]]["content"].as_object();
                    assert!(
                        content.is_some_and(|c| c.values().all(|v| v["schema"].is_object())),
                        "{p} {m}: success body without a schema"
                    );
                }
            }
        }
        // The field names are serde's, not Rust's (a contract of the API).
        let d = &schemas["Deployment"]["properties"];
        for f in ["projectName", "ref", "isActive", "instances", "createdAt"] {
            assert!(d.get(f).is_some(), "Deployment.{f}: {d}");
        }
        assert!(d.get("reference").is_none() && d.get("version").is_none());
    }

    /// `openapi-spec-validator` (PyPI; scripts/ensure-deps.sh installs it
    /// in /opt/berth-openapi): `$BERTH_OPENAPI_VALIDATOR`, else on `PATH`,
    /// else in that venv.
    fn validator() -> Option<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("BERTH_OPENAPI_VALIDATOR") {
            return Some(p.into());
        }
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([std::path::PathBuf::from("/opt/berth-openapi/bin")])
            .map(|d| d.join("openapi-spec-validator"))
            .find(|p| p.is_file())
    }

    /// Runs the validator on `doc`: `Ok` when it is valid, else its output.
    fn validate(tool: &std::path::Path, doc: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, doc).unwrap();
        let out = std::process::Command::new(tool)
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }

    /// The document as `GET /api/v1/openapi.json` serves it passes a real
    /// OpenAPI validator, and the validator catches a broken document.
    #[tokio::test]
    async fn the_served_document_passes_openapi_spec_validator() {
        let Some(tool) = validator() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "openapi-spec-validator is missing (scripts/ensure-deps.sh installs it)"
            );
            eprintln!(
                "skipped: openapi-spec-validator is missing (scripts/ensure-deps.sh installs it)"
            );
            return;
        };
        let res = document().await;
        assert_eq!(res.status(), axum::http::StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        if let Err(out) = validate(&tool, &body) {
            panic!("openapi.json is not valid OpenAPI:\n{out}");
        }
        // A path parameter left undeclared is refused.
        let mut broken: Value = serde_json::from_slice(&body).unwrap();
        for op in broken["paths"]["/runs/{id}"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            op.as_object_mut().unwrap().remove("parameters");
        }
        let out = validate(&tool, &serde_json::to_vec(&broken).unwrap())
            .expect_err("a document with an undeclared path parameter passed");
        assert!(out.contains("id"), "{out}");
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

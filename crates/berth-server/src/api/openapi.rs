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
    json!({
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
            "/logs": {"get": op("logs of a service across deployments; follow=true streams SSE", "200")},
            "/rollback": {"post": op("roll a service back to its previous deployment", "201")},
            "/projects/{name}/domains": {"get": op("list custom domains", "200"), "post": op("attach a custom domain (returns the TXT record to create)", "201")},
            "/projects/{name}/domains/{hostname}": {"delete": op("detach a custom domain", "204")},
            "/projects/{name}/domains/{hostname}/verify": {"post": op("check the TXT record; a verified domain is routed", "200")},
            "/routes": {"get": op("list external routes", "200"), "post": op("add an external route", "201")},
            "/routes/{hostname}": {"delete": op("remove an external route", "204")},
        }
    })
}

pub async fn document() -> Response {
    axum::Json(spec()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_path_has_operations_with_responses() {
        let s = super::spec();
        let paths = s["paths"].as_object().unwrap();
        assert!(paths.len() >= 15);
        for (p, item) in paths {
            for (_, op) in item.as_object().unwrap() {
                assert!(op["responses"].is_object(), "{p}");
            }
        }
    }
}

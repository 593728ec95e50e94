//! GitHub webhooks at `POST /hooks/github/{project}`.
//!
//! Every delivery is verified first: `X-Hub-Signature-256` is the
//! HMAC-SHA256 of the raw body with the project's webhook secret, compared
//! in constant time; a project without a secret rejects every delivery.
//! Work is queued, so the answer comes within a second. Deliveries are
//! deduplicated by `X-GitHub-Delivery`.

use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::model::{Environment, EnvironmentKind, Trigger};
use berth_store::StoreError;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body`.
pub fn verify_signature(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn accepted(v: Value) -> Response {
    (StatusCode::ACCEPTED, axum::Json(v)).into_response()
}

pub async fn github(
    State(s): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let delivery = header(&headers, "x-github-delivery").unwrap_or("none");
    let unauthorized = |reason: &str| {
        tracing::warn!(%project, delivery, reason, "webhook refused");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "missing or invalid X-Hub-Signature-256",
        )
    };
    let secret = match s.store.webhook_secret(&project).await {
        Ok(Some(secret)) => secret,
        // Unknown projects and projects without a secret look the same.
        Ok(None) | Err(StoreError::NotFound { .. }) => {
            return Err(unauthorized("unknown project or no webhook secret"))
        }
        Err(e) => return Err(e.into()),
    };
    let sig = header(&headers, "x-hub-signature-256").unwrap_or("");
    if !verify_signature(secret.as_bytes(), &body, sig) {
        return Err(unauthorized(if sig.is_empty() {
            "missing signature"
        } else {
            "bad signature"
        }));
    }
    let event = header(&headers, "x-github-event").unwrap_or("").to_string();
    if let Some(delivery) = header(&headers, "x-github-delivery") {
        if !s.store.record_delivery(&project, delivery, now()).await? {
            tracing::info!(%project, delivery, reason = "duplicate delivery", "webhook refused");
            return Ok(accepted(
                json!({"status": "duplicate", "delivery": delivery}),
            ));
        }
    }
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        tracing::warn!(%project, delivery, reason = "body is not JSON", "webhook refused");
        ApiError::bad_request(format!("webhook body is not JSON: {e}"))
    })?;
    match event.as_str() {
        "ping" => Ok((StatusCode::OK, axum::Json(json!({"status": "pong"}))).into_response()),
        "push" => push(&s, &project, &payload).await,
        "pull_request" => pull_request(&s, &project, &payload).await,
        other => Ok(accepted(json!({"status": "ignored", "event": other}))),
    }
}

async fn push(s: &AppState, project: &str, p: &Value) -> ApiResult<Response> {
    let Some(branch) = p["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return Ok(accepted(
            json!({"status": "ignored", "reason": "not a branch"}),
        ));
    };
    let envs = s.store.list_environments(project).await?;
    let Some(env) = envs.iter().find(|e| e.branch.as_deref() == Some(branch)) else {
        return Ok(accepted(
            json!({"status": "ignored", "reason": format!("branch {branch} is not mapped to an environment")}),
        ));
    };
    if p["deleted"].as_bool() == Some(true) {
        if env.kind == EnvironmentKind::Preview {
            s.deployer.teardown_environment(project, &env.name).await?;
            return Ok(accepted(
                json!({"status": "torn_down", "environment": env.name}),
            ));
        }
        return Ok(accepted(
            json!({"status": "ignored", "reason": "branch deleted"}),
        ));
    }
    let sha = p["after"]
        .as_str()
        .filter(|x| x.len() == 40)
        .map(String::from);
    let ds = s
        .deployer
        .deploy_environment(project, &env.name, sha, Trigger::Webhook, None)
        .await?;
    Ok(accepted(json!({"status": "queued", "deployments": ds})))
}

async fn pull_request(s: &AppState, project: &str, p: &Value) -> ApiResult<Response> {
    let action = p["action"].as_str().unwrap_or("");
    let Some(number) = p["number"]
        .as_u64()
        .or(p["pull_request"]["number"].as_u64())
    else {
        return Err(ApiError::bad_request("pull_request event without a number"));
    };
    let env_name = format!("pr-{number}");
    match action {
        "opened" | "synchronize" | "reopened" => {
            let branch = p["pull_request"]["head"]["ref"].as_str().map(String::from);
            let sha = p["pull_request"]["head"]["sha"].as_str().map(String::from);
            match s
                .store
                .create_environment(Environment {
                    project_name: project.to_string(),
                    name: env_name.clone(),
                    branch,
                    kind: EnvironmentKind::Preview,
                    created_at: now(),
                })
                .await
            {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let ds = s
                .deployer
                .deploy_environment(project, &env_name, sha, Trigger::Webhook, None)
                .await?;
            Ok(accepted(
                json!({"status": "queued", "environment": env_name, "deployments": ds}),
            ))
        }
        "closed" => {
            match s.deployer.teardown_environment(project, &env_name).await {
                Ok(()) => {}
                Err(e) if e.status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
            Ok(accepted(
                json!({"status": "torn_down", "environment": env_name}),
            ))
        }
        other => Ok(accepted(json!({"status": "ignored", "action": other}))),
    }
}

#[cfg(test)]
mod tests {
    use super::verify_signature;

    #[test]
    fn githubs_documented_test_vector_validates() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(secret, body, sig));
        assert!(!verify_signature(b"wrong", body, sig));
        assert!(!verify_signature(secret, b"Hello, World?", sig));
        assert!(!verify_signature(secret, body, "sha1=abc"));
        assert!(!verify_signature(secret, body, ""));
        assert!(!verify_signature(secret, body, "sha256=zz"));
    }
}

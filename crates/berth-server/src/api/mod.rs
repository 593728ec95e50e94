//! The HTTP API under `/api/v1`: every route but health is guarded by
//! [`crate::access::guard`] (token, role, project scope, audit log; each
//! route declares its rule in [`crate::access::RULES`]), JSON bodies in
//! and out, JSON errors, bounded request bodies.

mod audit;
mod cluster;
mod deployments;
mod domains;
pub mod git;
pub mod hooks;
mod jobs;
mod logs;
mod maintenance;
mod nodes;
mod notify;
mod openapi;
mod projects;
mod routes;
mod runs;
mod tokens;
mod volumes;

use crate::access::guard;
use crate::deployer::Deployer;
use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use berth_store::Store;
use std::sync::Arc;

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 256 * 1024;
/// Largest webhook delivery accepted (GitHub caps payloads at 25 MB).
pub const HOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// Largest `git push` accepted.
pub const GIT_BODY_LIMIT: usize = 1024 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub deployer: Arc<Deployer>,
    /// The server's `--token` (an admin named `admin`).
    pub token: Arc<String>,
    /// The swarm under `--runtime swarm` (nodes API), else `None`.
    pub swarm: Option<Arc<berth_runtime::SwarmRuntime>>,
}

/// `Json<T>` whose rejections are API errors (400 bad JSON, 413 too large,
/// 415 wrong content type), each one line naming what was wrong.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => {
                let status = rej.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "invalid_json",
                };
                let message = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        format!("request body is larger than {} KiB", BODY_LIMIT / 1024)
                    }
                    _ => rej.body_text().replace('\n', " "),
                };
                Err(ApiError::new(status, code, message))
            }
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Constant-time comparison, so the token cannot be guessed by timing.
pub fn token_matches(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// `GET /health`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub version: String,
    /// `connected` or `unreachable`.
    pub docker: String,
}

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    summary = "liveness (no token needed)",
    security(()),
    responses((status = 200, description = "ok", body = Health))
)]
async fn health(State(state): State<AppState>) -> Response {
    let docker = state.deployer.engine_connected;
    axum::Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        docker: if docker { "connected" } else { "unreachable" }.into(),
    })
    .into_response()
}

/// `GET /metrics`: the edge's request metrics and the control plane's
/// (pipelines, illegal transitions, log lines dropped) on one OpenMetrics
/// page (bearer token required; see `metrics.rs`).
async fn metrics(State(state): State<AppState>) -> Response {
    let page = crate::metrics::page(&state.deployer.edge, &state.deployer.metrics);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], page).into_response()
}

/// The OpenAPI document (for the access rules' test).
#[cfg(test)]
pub fn openapi_spec() -> serde_json::Value {
    openapi::spec()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

pub fn router(state: AppState) -> Router {
    let authed = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/projects", get(projects::list).post(projects::create))
        .route(
            "/projects/{name}",
            get(projects::show).patch(projects::update),
        )
        .route(
            "/projects/{name}/environments",
            get(projects::list_envs).post(projects::create_env),
        )
        .route(
            "/projects/{name}/environments/{env}",
            delete(projects::delete_env),
        )
        .route(
            "/projects/{name}/environments/{env}/variables",
            get(projects::list_vars),
        )
        .route(
            "/projects/{name}/environments/{env}/variables/{key}",
            put(projects::set_var).delete(projects::unset_var),
        )
        .route(
            "/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route("/deployments/{id}", get(deployments::show))
        .route("/deployments/{id}/cancel", post(deployments::cancel))
        .route("/deployments/{id}/promote", post(deployments::promote))
        .route("/deployments/{id}/redeploy", post(deployments::redeploy))
        .route("/deployments/{id}/logs", get(logs::deployment_logs))
        .route("/deployments/{id}/events", get(deployments::events))
        .route("/deployments/{id}/manifest", get(deployments::manifest))
        .route("/deployments/{id}/pin", get(deployments::pin))
        .route("/logs", get(logs::service_logs))
        .route("/rollback", post(deployments::rollback))
        .route(
            "/projects/{name}/domains",
            get(domains::list).post(domains::add),
        )
        .route(
            "/projects/{name}/domains/{hostname}",
            delete(domains::remove),
        )
        .route(
            "/projects/{name}/domains/{hostname}/verify",
            post(domains::verify),
        )
        .route("/routes", get(routes::list).post(routes::add))
        .route("/routes/{hostname}", delete(routes::remove))
        .route("/cluster", get(cluster::status))
        .route("/projects/{name}/runs", get(runs::list).post(runs::create))
        .route("/runs/{id}", get(runs::show))
        .route("/projects/{name}/jobs", get(jobs::list))
        .route(
            "/projects/{name}/jobs/{job}/runs",
            get(jobs::runs).post(jobs::run_now),
        )
        .route("/projects/{name}/volumes", get(volumes::list))
        .route(
            "/projects/{name}/volumes/{volume}/backups",
            get(volumes::backups).post(volumes::backup),
        )
        .route(
            "/projects/{name}/volumes/{volume}/restore",
            post(volumes::restore),
        )
        .route(
            "/projects/{name}/notifications",
            get(notify::list).post(notify::add),
        )
        .route(
            "/projects/{name}/notifications/{id}",
            delete(notify::remove),
        )
        .route("/projects/{name}/maintenance", get(maintenance::list))
        .route(
            "/projects/{name}/environments/{env}/maintenance",
            put(maintenance::env_on).delete(maintenance::env_off),
        )
        .route(
            "/projects/{name}/environments/{env}/services/{service}/maintenance",
            put(maintenance::service_on).delete(maintenance::service_off),
        )
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}/drain", post(nodes::drain))
        .route("/nodes/{id}/activate", post(nodes::activate))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{name}", delete(tokens::revoke))
        .route("/audit", get(audit::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let api = Router::new()
        .route("/health", get(health))
        .merge(authed)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    let api = api
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        // Added after the limits: its body is a run's stdin, unbounded.
        .route(
            "/projects/{name}/runs/attach",
            post(runs::attach).route_layer(middleware::from_fn_with_state(state.clone(), guard)),
        );
    let hooks = Router::new()
        .route("/github/{project}", post(hooks::github))
        .layer(axum::extract::DefaultBodyLimit::max(HOOK_BODY_LIMIT));
    let git = Router::new()
        .route("/{repo}/info/refs", get(git::info_refs))
        .route("/{repo}/git-receive-pack", post(git::receive_pack))
        .route("/{repo}/git-upload-pack", post(git::upload_pack))
        .layer(axum::extract::DefaultBodyLimit::max(GIT_BODY_LIMIT));
    Router::new()
        .merge(crate::console::router(state.clone()))
        .nest("/api/v1", api)
        .nest("/hooks", hooks)
        .nest("/git", git)
        .route("/healthz", get(health))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), guard)),
        )
        .fallback(not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_compare() {
        assert!(super::token_matches(b"abc", b"abc"));
        assert!(!super::token_matches(b"abd", b"abc"));
        assert!(!super::token_matches(b"ab", b"abc"));
    }
}

//! External routes: hostnames the edge sends to upstreams berth does not run.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::AddRoute;
use berth_core::api::ErrorBody;
use berth_core::model::ExternalRoute;
use berth_core::names;

#[utoipa::path(
    get,
    path = "/routes",
    operation_id = "routes_list",
    summary = "list external routes",
    responses((status = 200, description = "success", body = Vec<ExternalRoute>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<ExternalRoute>>> {
    Ok(Json(s.store.list_external_routes().await?))
}

fn check_upstream(u: &str) -> ApiResult<()> {
    let bad = |why: &str| ApiError::bad_request(format!("upstream {u:?} {why}"));
    let (host, port) = u.rsplit_once(':').ok_or_else(|| bad("must be host:port"))?;
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("has no valid port (1-65535)")),
    }
}

#[utoipa::path(
    post,
    path = "/routes",
    operation_id = "routes_add",
    summary = "add an external route",
    request_body = AddRoute,
    responses((status = 201, description = "success", body = ExternalRoute), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn add(
    State(s): State<AppState>,
    Json(req): Json<AddRoute>,
) -> ApiResult<impl IntoResponse> {
    let hostname = names::hostname(&req.hostname)?;
    check_upstream(&req.upstream)?;
    crate::console::host::refuse_console_host(&s.deployer.cfg, &hostname)?;
    let taken = s
        .deployer
        .desired_routes()
        .await
        .map_err(ApiError::internal)?;
    let existing = s.store.list_external_routes().await?;
    if taken.contains_key(&hostname) && !existing.iter().any(|r| r.hostname == hostname) {
        return Err(ApiError::conflict(format!(
            "hostname {hostname} is already served by a berth deployment"
        )));
    }
    let route = ExternalRoute {
        hostname,
        upstream: req.upstream,
        created_at: now(),
    };
    s.store.put_external_route(&route).await?;
    s.deployer
        .sync_routes()
        .await
        .map_err(|e| ApiError::bad_request(format!("route refused by the edge: {e}")))?;
    Ok((StatusCode::CREATED, Json(route)))
}

#[utoipa::path(
    delete,
    path = "/routes/{hostname}",
    operation_id = "routes_remove",
    summary = "remove an external route",
    params(("hostname" = String, Path, description = "hostname")),
    responses((status = 204, description = "success"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn remove(
    State(s): State<AppState>,
    Path(hostname): Path<String>,
) -> ApiResult<StatusCode> {
    let h = names::normalize_host(&hostname);
    if !s.store.remove_external_route(&h).await? {
        return Err(ApiError::not_found(format!("no external route for {h}")));
    }
    s.deployer.sync_routes().await.map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

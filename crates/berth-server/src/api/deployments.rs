//! Deployments: create (deploy), list (status), show (inspect), cancel,
//! rollback, promote, redeploy.

use super::{AppState, Json};
use crate::deployer::NewDeployment;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::ErrorBody;
use berth_core::api::{CreateDeployment, Rollback};
use berth_core::model::{Deployment, ManifestEntry, Trigger, DEFAULT_SERVICE, PRODUCTION};
use berth_store::{DeploymentQuery, Slot};
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    project: Option<String>,
    environment: Option<String>,
    service: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/deployments",
    operation_id = "deployments_list",
    summary = "list deployments, newest first",
    params(ListQuery),
    responses((status = 200, description = "success", body = Vec<Deployment>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Deployment>>> {
    if let Some(p) = &q.project {
        s.store.get_project(p).await?;
        if let Some(e) = &q.environment {
            s.store.get_environment(p, e).await?;
        }
    }
    let ds = s
        .store
        .list_deployments(&DeploymentQuery {
            project: q.project,
            environment: q.environment,
            service: q.service,
            unfinished: false,
            limit: Some(q.limit.unwrap_or(100).min(1000)),
        })
        .await?;
    Ok(Json(ds))
}

#[utoipa::path(
    post,
    path = "/deployments",
    operation_id = "deployments_create",
    summary = "deploy",
    request_body = CreateDeployment,
    responses((status = 201, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateDeployment>,
) -> ApiResult<impl IntoResponse> {
    let d = s
        .deployer
        .create(NewDeployment {
            project: req.project,
            service: req.service,
            environment: req.environment,
            reference: req.reference,
            trigger: Trigger::Manual,
            source: None,
            source_repo: None,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[utoipa::path(
    get,
    path = "/deployments/{id}",
    operation_id = "deployments_show",
    summary = "inspect a deployment",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(s.store.get_deployment(&id).await?))
}

/// The answer of `GET /deployments/{id}/pin`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    pub deployment_id: String,
    /// The header that pins a request (`X-Berth-Deployment`).
    pub header: String,
    /// The sticky cookie that pins a client.
    pub cookie: String,
    /// The value of either.
    pub value: String,
}

/// `GET /deployments/{id}/pin`: the value that sends a request of a route
/// under canary to this deployment, as the `X-Berth-Deployment` header or
/// as the sticky cookie (for testing one version on purpose; see the edge's
/// `sticky.rs`).
#[utoipa::path(
    get,
    path = "/deployments/{id}/pin",
    operation_id = "deployments_pin",
    summary = "the pin value that sends requests of a route under canary to this deployment (X-Berth-Deployment header or berth_rollout cookie)",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = Pin), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn pin(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Pin>> {
    let d = s.store.get_deployment(&id).await?;
    let value = s.deployer.edge.pin_value(&d.id);
    Ok(Json(Pin {
        deployment_id: d.id,
        header: berth_edge::PIN_HEADER.into(),
        cookie: berth_edge::STICKY_COOKIE.into(),
        value,
    }))
}

#[utoipa::path(
    post,
    path = "/deployments/{id}/cancel",
    operation_id = "deployments_cancel",
    summary = "cancel a queued or running deployment",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(s.deployer.cancel(&id).await?))
}

#[utoipa::path(
    post,
    path = "/rollback",
    operation_id = "deployments_rollback",
    summary = "roll a service back to its previous deployment",
    request_body = Rollback,
    responses((status = 201, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn rollback(
    State(s): State<AppState>,
    Json(req): Json<Rollback>,
) -> ApiResult<impl IntoResponse> {
    let slot = Slot {
        project: req.project.clone(),
        environment: req.environment.unwrap_or_else(|| PRODUCTION.into()),
        service: req.service.unwrap_or_else(|| DEFAULT_SERVICE.into()),
    };
    let d = s.deployer.rollback(&slot).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[utoipa::path(
    post,
    path = "/deployments/{id}/promote",
    operation_id = "deployments_promote",
    summary = "make a historic deployment active again",
    params(("id" = String, Path, description = "id")),
    responses((status = 201, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn promote(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.deployer.promote(&id).await?)))
}

#[utoipa::path(
    post,
    path = "/deployments/{id}/redeploy",
    operation_id = "deployments_redeploy",
    summary = "run the same commit again",
    params(("id" = String, Path, description = "id")),
    responses((status = 201, description = "success", body = Deployment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn redeploy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.deployer.redeploy(&id).await?)))
}

#[utoipa::path(
    get,
    path = "/deployments/{id}/manifest",
    operation_id = "deployments_manifest",
    summary = "files of a deployment's image (path, size, sha256)",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = Vec<ManifestEntry>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn manifest(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ManifestEntry>>> {
    let d = s.store.get_deployment(&id).await?;
    let image = d
        .image
        .ok_or_else(|| ApiError::not_found(format!("deployment {id} has no image")))?;
    match s.store.get_manifest(&image.reference).await? {
        Some(m) => Ok(Json(m)),
        None => Err(ApiError::not_found(format!(
            "no manifest recorded for image {} yet",
            image.reference
        ))),
    }
}

/// How long an event stream waits for a change signal before it reads the
/// record again anyway (a change saved by another server of a cluster).
const EVENTS_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /deployments/{id}/events`: a Server-Sent Events stream of the
/// deployment as it changes — one `deployment` event (id: the record's
/// `version`, data: the deployment JSON) at once, then one per saved
/// change, woken by the deployer's change signal the moment a record is
/// saved. The stream ends after the first terminal state. `berth deploy
/// --wait` follows it.
#[utoipa::path(
    get,
    path = "/deployments/{id}/events",
    operation_id = "deployments_events",
    summary = "Server-Sent Events of a deployment as it changes",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "text/event-stream: one `deployment` event (id: its version, data: the Deployment JSON) at once, then one per saved change; the stream ends after the first terminal state", body = String, content_type = "text/event-stream"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn events(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // Subscribe before the first read: a save in between is not missed.
    let changes = s.deployer.subscribe_changes();
    let first = s.store.get_deployment(&id).await?;
    struct Follow {
        store: std::sync::Arc<dyn berth_store::Store>,
        changes: tokio::sync::watch::Receiver<u64>,
        id: String,
        next: Option<Deployment>,
        sent: Option<u64>,
        done: bool,
    }
    let state = Follow {
        store: s.store.clone(),
        changes,
        id,
        next: Some(first),
        sent: None,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(d) = st.next.take() {
                if st.sent != Some(d.version) {
                    st.sent = Some(d.version);
                    st.done = d.status.is_terminal();
                    let data = serde_json::to_string(&d).unwrap_or_default();
                    let ev = Event::default()
                        .event("deployment")
                        .id(d.version.to_string())
                        .data(data);
                    return Some((Ok::<_, std::convert::Infallible>(ev), st));
                }
            }
            let _ = tokio::time::timeout(EVENTS_RECHECK, st.changes.changed()).await;
            match st.store.get_deployment(&st.id).await {
                Ok(d) => st.next = Some(d),
                Err(berth_store::StoreError::NotFound { .. }) => return None,
                Err(e) => {
                    tracing::warn!(deployment = st.id, error = %e, "event stream read failed")
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

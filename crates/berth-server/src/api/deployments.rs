//! Deployments: create (deploy), list (status), show (inspect), cancel,
//! rollback, promote, redeploy.

use super::{AppState, Json};
use crate::deployer::NewDeployment;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::{CreateDeployment, Rollback};
use berth_core::model::{Deployment, Trigger, DEFAULT_SERVICE, PRODUCTION};
use berth_store::{DeploymentQuery, Slot};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    project: Option<String>,
    environment: Option<String>,
    service: Option<String>,
    limit: Option<u32>,
}

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

pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(s.store.get_deployment(&id).await?))
}

/// `GET /deployments/{id}/pin`: the value that sends a request of a route
/// under canary to this deployment, as the `X-Berth-Deployment` header or
/// as the sticky cookie (for testing one version on purpose; see the edge's
/// `sticky.rs`).
pub async fn pin(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let d = s.store.get_deployment(&id).await?;
    let value = s.deployer.edge.pin_value(&d.id);
    Ok(Json(serde_json::json!({
        "deploymentId": d.id,
        "header": berth_edge::PIN_HEADER,
        "cookie": berth_edge::STICKY_COOKIE,
        "value": value,
    })))
}

pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(s.deployer.cancel(&id).await?))
}

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

pub async fn promote(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.deployer.promote(&id).await?)))
}

pub async fn redeploy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.deployer.redeploy(&id).await?)))
}

pub async fn manifest(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<berth_core::model::ManifestEntry>>> {
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

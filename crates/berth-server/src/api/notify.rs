//! Notification endpoints of a project: add (the signing secret is in the
//! answer, once), list with their latest deliveries, remove.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::ErrorBody;
use berth_core::notify::{
    self, AddNotification, Notification, NotificationCreated, NotificationStatus, NotifyEvent,
};
use berth_store::NotifyTarget;

/// Deliveries shown per endpoint.
const SHOWN_DELIVERIES: u32 = 10;

/// `POST /projects/{name}/notifications`
#[utoipa::path(
    post,
    path = "/projects/{name}/notifications",
    operation_id = "notify_add",
    summary = "add a notification endpoint: the answer holds its signing secret, shown once",
    params(("name" = String, Path, description = "project name")),
    request_body = AddNotification,
    responses((status = 201, description = "success", body = NotificationCreated), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn add(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Json(req): Json<AddNotification>,
) -> ApiResult<impl IntoResponse> {
    let project = s.store.get_project(&project).await?.name;
    let url =
        notify::parse_url(req.url.trim()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let events = match &req.events {
        None => NotifyEvent::ALL.to_vec(),
        Some(list) => notify::parse_events(&list.join(","))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let n = Notification {
        id: new_id(),
        project_name: project,
        url: url.shown,
        events,
        created_at: now(),
    };
    let secret = crate::notify::new_secret();
    s.store
        .add_notification(
            &n,
            &NotifyTarget {
                url: req.url.trim().to_string(),
                secret: secret.clone(),
            },
        )
        .await?;
    tracing::info!(
        notification = n.id,
        project = n.project_name,
        endpoint = n.url,
        "notification endpoint added"
    );
    Ok((
        StatusCode::CREATED,
        Json(NotificationCreated {
            notification: n,
            secret,
        }),
    ))
}

/// `GET /projects/{name}/notifications`
#[utoipa::path(
    get,
    path = "/projects/{name}/notifications",
    operation_id = "notify_list",
    summary = "notification endpoints with their latest delivery attempts (URLs shown as scheme://host/…)",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, description = "success", body = Vec<NotificationStatus>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<NotificationStatus>>> {
    let project = s.store.get_project(&project).await?.name;
    let mut out = Vec::new();
    for n in s.store.list_notifications(Some(&project)).await? {
        let mut deliveries = s
            .store
            .notification_deliveries(&n.id, SHOWN_DELIVERIES)
            .await?;
        for d in &mut deliveries {
            d.body.clear();
        }
        out.push(NotificationStatus {
            notification: n,
            deliveries,
        });
    }
    Ok(Json(out))
}

/// `DELETE /projects/{name}/notifications/{id}`
#[utoipa::path(
    delete,
    path = "/projects/{name}/notifications/{id}",
    operation_id = "notify_remove",
    summary = "remove a notification endpoint and its deliveries",
    params(("name" = String, Path, description = "project name"), ("id" = String, Path, description = "id")),
    responses((status = 204, description = "success"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn remove(
    State(s): State<AppState>,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = s.store.get_project(&project).await?.name;
    if !s.store.remove_notification(&project, &id).await? {
        return Err(ApiError::not_found(format!(
            "project {project} has no notification {id}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

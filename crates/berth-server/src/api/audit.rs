//! The audit log: every change made through the API, the console or
//! `git push`, newest first. A token scoped to a project sees that
//! project's entries only (the guard fills `project` in).

use super::{AppState, Json};
use crate::error::ApiResult;
use axum::extract::{Query, State};
use berth_core::access::AuditEntry;
use berth_core::api::ErrorBody;
use berth_store::AuditQuery;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    project: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/audit",
    operation_id = "audit_list",
    summary = "the audit log, newest first: at, token, action, target, sourceIp (admin; project= narrows it)",
    params(ListQuery),
    responses((status = 200, description = "success", body = Vec<AuditEntry>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    if let Some(p) = &q.project {
        s.store.get_project(p).await?;
    }
    Ok(Json(
        s.store
            .list_audit(&AuditQuery {
                project: q.project,
                limit: Some(q.limit.unwrap_or(100).min(10_000)),
            })
            .await?,
    ))
}

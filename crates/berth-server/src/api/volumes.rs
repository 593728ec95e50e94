//! Volumes of a project and their backups: list, back up, restore.

use super::{AppState, Json};
use crate::access::Caller;
use crate::backups::RestoreOutcome;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use berth_core::model::PRODUCTION;
use berth_core::volumes::{Backup, RestoreRequest, VolumeInfo};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvQuery {
    environment: Option<String>,
}

fn environment(q: &EnvQuery) -> String {
    q.environment
        .clone()
        .unwrap_or_else(|| PRODUCTION.to_owned())
}

/// `GET /projects/{name}/volumes`
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<Vec<VolumeInfo>>> {
    s.store.get_project(&project).await?;
    if let Some(env) = &q.environment {
        s.store.get_environment(&project, env).await?;
    }
    let volumes = s
        .deployer
        .list_volumes(&project, q.environment.as_deref())
        .await
        .map_err(ApiError::conflict)?;
    Ok(Json(volumes))
}

/// `POST /projects/{name}/volumes/{volume}/backups`: the record, `succeeded`
/// or `failed` with the reason.
pub async fn backup(
    State(s): State<AppState>,
    caller: Caller,
    Path((project, volume)): Path<(String, String)>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<Backup>> {
    let b = s
        .deployer
        .backup_volume(&project, &environment(&q), &volume, &caller.name)
        .await?;
    Ok(Json(b))
}

/// `GET /projects/{name}/volumes/{volume}/backups`
pub async fn backups(
    State(s): State<AppState>,
    Path((project, volume)): Path<(String, String)>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(
        s.deployer
            .volume_backups(&project, &environment(&q), &volume)
            .await?,
    ))
}

/// `POST /projects/{name}/volumes/{volume}/restore`
pub async fn restore(
    State(s): State<AppState>,
    caller: Caller,
    Path((project, volume)): Path<(String, String)>,
    Query(q): Query<EnvQuery>,
    Json(req): Json<RestoreRequest>,
) -> ApiResult<Json<RestoreOutcome>> {
    Ok(Json(
        s.deployer
            .restore_volume(
                &project,
                &environment(&q),
                &volume,
                &req.backup_id,
                &caller.name,
            )
            .await?,
    ))
}

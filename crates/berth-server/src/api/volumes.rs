//! Volumes of a project and their backups: list, back up, restore.

use super::{AppState, Json};
use crate::access::Caller;
use crate::backups::RestoreOutcome;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use berth_core::api::ErrorBody;
use berth_core::model::PRODUCTION;
use berth_core::volumes::{Backup, RestoreRequest, VolumeInfo};
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnvQuery {
    environment: Option<String>,
}

fn environment(q: &EnvQuery) -> String {
    q.environment
        .clone()
        .unwrap_or_else(|| PRODUCTION.to_owned())
}

/// `GET /projects/{name}/volumes`
#[utoipa::path(
    get,
    path = "/projects/{name}/volumes",
    operation_id = "volumes_list",
    summary = "the project's volumes (query environment), with the services that mount each",
    params(("name" = String, Path, description = "project name"), EnvQuery),
    responses((status = 200, description = "success", body = Vec<VolumeInfo>), (status = "default", description = "error", body = ErrorBody))
)]
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
#[utoipa::path(
    post,
    path = "/projects/{name}/volumes/{volume}/backups",
    operation_id = "volumes_backup",
    summary = "back a volume up (query environment): a gzip tar archive with its sha256, read back before it is reported succeeded (else failed with the reason)",
    params(("name" = String, Path, description = "project name"), ("volume" = String, Path, description = "volume name"), EnvQuery),
    responses((status = 200, description = "success", body = Backup), (status = "default", description = "error", body = ErrorBody))
)]
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
#[utoipa::path(
    get,
    path = "/projects/{name}/volumes/{volume}/backups",
    operation_id = "volumes_backups",
    summary = "a volume's backups (query environment), newest first",
    params(("name" = String, Path, description = "project name"), ("volume" = String, Path, description = "volume name"), EnvQuery),
    responses((status = 200, description = "success", body = Vec<Backup>), (status = "default", description = "error", body = ErrorBody))
)]
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
#[utoipa::path(
    post,
    path = "/projects/{name}/volumes/{volume}/restore",
    operation_id = "volumes_restore",
    summary = "restore a backup (body backupId, query environment): checksum verified first, the instances stopped, the current content kept as a backup, the archive written, the instances started again",
    params(("name" = String, Path, description = "project name"), ("volume" = String, Path, description = "volume name"), EnvQuery),
    request_body = RestoreRequest,
    responses((status = 200, description = "success", body = RestoreOutcome), (status = "default", description = "error", body = ErrorBody))
)]
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

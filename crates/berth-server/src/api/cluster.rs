//! `GET /cluster`: the servers sharing this store, which one leads, under
//! which epoch, when each was last seen (`berth cluster status`).

use super::{AppState, Json};
use crate::error::ApiResult;
use berth_core::api::ErrorBody;
use berth_core::model::ClusterMember;

#[utoipa::path(
    get,
    path = "/cluster",
    operation_id = "cluster_status",
    summary = "the servers sharing this store: id, apiUrl, isLeader, epoch, lastSeenAt (the leader first)",
    responses((status = 200, description = "success", body = Vec<ClusterMember>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn status(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> ApiResult<Json<Vec<ClusterMember>>> {
    Ok(Json(crate::cluster::members(&s.deployer).await?))
}

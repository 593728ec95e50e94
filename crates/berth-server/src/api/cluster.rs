//! `GET /cluster`: the servers sharing this store, which one leads, under
//! which epoch, when each was last seen (`berth cluster status`).

use super::{AppState, Json};
use crate::error::ApiResult;
use berth_core::model::ClusterMember;

pub async fn status(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> ApiResult<Json<Vec<ClusterMember>>> {
    Ok(Json(crate::cluster::members(&s.deployer).await?))
}

//! Swarm nodes (`--runtime swarm`): `GET /nodes`, `POST /nodes/{id}/drain`,
//! `POST /nodes/{id}/activate`. A node is named by its id, a unique id
//! prefix or its hostname.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::nodes::{DrainReport, NodeError};
use axum::extract::{Path, State};
use berth_core::api::ErrorBody;
use berth_runtime::swarm::{Availability, NodeInfo};
use berth_runtime::{RuntimeError, SwarmRuntime};
use std::sync::Arc;

/// A node as the API shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub address: Option<String>,
    #[schema(value_type = String)]
    pub role: &'static str,
    #[schema(value_type = String)]
    pub status: &'static str,
    #[schema(value_type = String)]
    pub availability: &'static str,
    pub leader: bool,
    /// berth instances running (or starting) there.
    pub instances: u32,
}

impl From<NodeInfo> for NodeView {
    fn from(n: NodeInfo) -> Self {
        NodeView {
            id: n.id,
            hostname: n.hostname,
            address: n.address.map(|a| a.to_string()),
            role: n.role,
            status: n.status,
            availability: n.availability.as_str(),
            leader: n.leader,
            instances: n.instances,
        }
    }
}

/// The node after a drain, and what moved.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainView {
    pub node: NodeView,
    #[serde(flatten)]
    pub report: DrainReport,
}

fn swarm(s: &AppState) -> ApiResult<Arc<SwarmRuntime>> {
    s.swarm.clone().ok_or_else(|| {
        ApiError::conflict("this berth does not run on a swarm (start it with --runtime swarm)")
    })
}

fn runtime_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
        RuntimeError::Conflict(why) => ApiError::conflict(why),
        e => ApiError::internal(e),
    }
}

#[utoipa::path(
    get,
    path = "/nodes",
    operation_id = "nodes_list",
    summary = "list the swarm's nodes (--runtime swarm; 409 otherwise)",
    responses((status = 200, description = "success", body = Vec<NodeView>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<NodeView>>> {
    let swarm = swarm(&s)?;
    let nodes = swarm.nodes().await.map_err(runtime_error)?;
    Ok(Json(nodes.into_iter().map(NodeView::from).collect()))
}

#[utoipa::path(
    post,
    path = "/nodes/{id}/drain",
    operation_id = "nodes_drain",
    summary = "move every instance off a node (replacements healthy and routed first), then drain it",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "the node (`node`, a NodeView) and what moved", body = serde_json::Value), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn drain(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DrainView>> {
    let swarm = swarm(&s)?;
    let node = swarm.find_node(&id).await.map_err(runtime_error)?;
    let report = s
        .deployer
        .drain_node(&swarm, &node)
        .await
        .map_err(|e| match e {
            NodeError::Runtime(e) => runtime_error(e),
            e @ (NodeError::NowhereToGo | NodeError::Replacement { .. }) => {
                ApiError::conflict(e.to_string())
            }
            e @ NodeError::Store(_) => ApiError::internal(e),
        })?;
    let node = swarm.find_node(&node.id).await.map_err(runtime_error)?;
    Ok(Json(DrainView {
        node: node.into(),
        report,
    }))
}

#[utoipa::path(
    post,
    path = "/nodes/{id}/activate",
    operation_id = "nodes_activate",
    summary = "let the swarm place instances on a node again",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = NodeView), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn activate(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeView>> {
    let swarm = swarm(&s)?;
    let node = swarm.find_node(&id).await.map_err(runtime_error)?;
    swarm
        .set_availability(&node.id, Availability::Active)
        .await
        .map_err(runtime_error)?;
    let node = swarm.find_node(&node.id).await.map_err(runtime_error)?;
    Ok(Json(node.into()))
}

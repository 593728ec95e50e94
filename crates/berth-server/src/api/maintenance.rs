//! Maintenance mode of an environment or of one service of it (see
//! `crate::maintenance`): on, off, and what is on. Each change is one swap
//! of the edge's table.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::extract::{Path, State};
use berth_core::api::ErrorBody;
use berth_core::model::Maintenance;
use berth_core::names;
use berth_store::DeploymentQuery;

/// `GET /projects/{name}/maintenance`
#[utoipa::path(
    get,
    path = "/projects/{name}/maintenance",
    operation_id = "maintenance_list",
    summary = "what of the project is in maintenance: projectName, environmentName, serviceName (null: every service), since",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, description = "success", body = Vec<Maintenance>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    let project = s.store.get_project(&project).await?.name;
    Ok(Json(s.store.list_maintenance(Some(&project)).await?))
}

/// `PUT /projects/{name}/environments/{env}/maintenance`
#[utoipa::path(
    put,
    path = "/projects/{name}/environments/{env}/maintenance",
    operation_id = "maintenance_env_on",
    summary = "put every service of the environment in maintenance (the edge answers 503 with Retry-After and berth's maintenance page; health checks unaffected); answers what of the project is in maintenance",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name")),
    responses((status = 200, description = "success", body = Vec<Maintenance>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn env_on(
    State(s): State<AppState>,
    Path((project, env)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    turn_on(&s, &project, &env, None).await
}

/// `DELETE /projects/{name}/environments/{env}/maintenance`
#[utoipa::path(
    delete,
    path = "/projects/{name}/environments/{env}/maintenance",
    operation_id = "maintenance_env_off",
    summary = "take the environment and every service of it out of maintenance",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name")),
    responses((status = 200, description = "success", body = Vec<Maintenance>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn env_off(
    State(s): State<AppState>,
    Path((project, env)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    turn_off(&s, &project, &env, None).await
}

/// `PUT /projects/{name}/environments/{env}/services/{service}/maintenance`
#[utoipa::path(
    put,
    path = "/projects/{name}/environments/{env}/services/{service}/maintenance",
    operation_id = "maintenance_service_on",
    summary = "put one service of the environment in maintenance (404 when it was never deployed there)",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name"), ("service" = String, Path, description = "service name")),
    responses((status = 200, description = "success", body = Vec<Maintenance>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn service_on(
    State(s): State<AppState>,
    Path((project, env, service)): Path<(String, String, String)>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    turn_on(&s, &project, &env, Some(&service)).await
}

/// `DELETE /projects/{name}/environments/{env}/services/{service}/maintenance`
#[utoipa::path(
    delete,
    path = "/projects/{name}/environments/{env}/services/{service}/maintenance",
    operation_id = "maintenance_service_off",
    summary = "take one service out of maintenance (409 while the whole environment is in it)",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name"), ("service" = String, Path, description = "service name")),
    responses((status = 200, description = "success", body = Vec<Maintenance>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn service_off(
    State(s): State<AppState>,
    Path((project, env, service)): Path<(String, String, String)>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    turn_off(&s, &project, &env, Some(&service)).await
}

/// The environment exists and, when named, the service was deployed to
/// it (a typo must not turn nothing on and say it did).
async fn check(s: &AppState, project: &str, env: &str, service: Option<&str>) -> ApiResult<()> {
    s.store.get_environment(project, env).await?;
    if let Some(service) = service {
        names::service_name(service).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let deployed = s
            .store
            .list_deployments(&DeploymentQuery {
                project: Some(project.into()),
                environment: Some(env.into()),
                service: Some(service.into()),
                limit: Some(1),
                ..Default::default()
            })
            .await?;
        if deployed.is_empty() {
            return Err(ApiError::not_found(format!(
                "service {service} was never deployed to {project}/{env}"
            )));
        }
    }
    Ok(())
}

async fn turn_on(
    s: &AppState,
    project: &str,
    env: &str,
    service: Option<&str>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    check(s, project, env, service).await?;
    s.store
        .set_maintenance(&Maintenance {
            project_name: project.into(),
            environment_name: env.into(),
            service_name: service.map(Into::into),
            since: now(),
        })
        .await?;
    applied(s, project, env, service, "on").await
}

async fn turn_off(
    s: &AppState,
    project: &str,
    env: &str,
    service: Option<&str>,
) -> ApiResult<Json<Vec<Maintenance>>> {
    check(s, project, env, service).await?;
    if let Some(service) = service {
        let whole = s
            .store
            .list_maintenance(Some(project))
            .await?
            .into_iter()
            .any(|m| m.environment_name == env && m.service_name.is_none());
        if whole {
            return Err(ApiError::conflict(format!(
                "the whole of {project}/{env} is in maintenance, {service} included; turn it off without a service"
            )));
        }
    }
    s.store.clear_maintenance(project, env, service).await?;
    applied(s, project, env, service, "off").await
}

/// Swaps the edge's table to what the store now says; the project's
/// entries as they are.
async fn applied(
    s: &AppState,
    project: &str,
    env: &str,
    service: Option<&str>,
    state: &str,
) -> ApiResult<Json<Vec<Maintenance>>> {
    s.deployer.sync_routes().await.map_err(ApiError::internal)?;
    tracing::info!(
        project,
        environment = env,
        service = service.unwrap_or("*"),
        "maintenance {state}"
    );
    Ok(Json(s.store.list_maintenance(Some(project)).await?))
}

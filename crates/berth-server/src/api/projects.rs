//! Projects, environments and variables.

use super::{AppState, Json};
use crate::access::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::ErrorBody;
use berth_core::api::{
    CreateEnvironment, CreateProject, ProjectDetail, ServiceSummary, SetVariable, UpdateProject,
};
use berth_core::model::{Environment, EnvironmentKind, Project, Variable, DEFAULT_RETAIN_IMAGES};
use berth_core::names;
use berth_store::{DeploymentQuery, NewProject, ProjectPatch, VarFlags};
use std::collections::BTreeMap;

fn shown(mut p: Project) -> Project {
    p.repo = berth_core::model::mask_url(&p.repo);
    p
}

fn check_retain(n: Option<u32>) -> ApiResult<()> {
    match n {
        Some(0) => Err(ApiError::bad_request(
            "retainImages must be at least 1 (the active deployment's image is always kept)",
        )),
        Some(n) if n > 1000 => Err(ApiError::bad_request("retainImages must be at most 1000")),
        _ => Ok(()),
    }
}

fn check_repo(repo: &str) -> ApiResult<()> {
    if repo.trim().is_empty() {
        return Err(ApiError::bad_request("repo must not be empty"));
    }
    if repo.contains(['\n', '\r', '\0']) || repo.starts_with('-') {
        return Err(ApiError::bad_request(format!(
            "repo {:?} is not a git URL or path",
            berth_core::model::mask_url(repo)
        )));
    }
    Ok(())
}

/// An SSH deploy key: an OpenSSH or PEM private key, not a public key
/// or a path. `allow_empty` for updates, where "" removes the key.
fn check_deploy_key(key: &Option<String>, allow_empty: bool) -> ApiResult<()> {
    let Some(k) = key else { return Ok(()) };
    if k.trim().is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(ApiError::bad_request("deployKey must not be empty"))
        };
    }
    if k.len() > 16 * 1024 {
        return Err(ApiError::bad_request("deployKey is over 16 KiB"));
    }
    let t = k.trim();
    if !(t.starts_with("-----BEGIN ") && t.contains("PRIVATE KEY-----") && t.ends_with("-----")) {
        return Err(ApiError::bad_request(
            "deployKey is not a private key (expected -----BEGIN … PRIVATE KEY-----)",
        ));
    }
    Ok(())
}

fn check_branch(b: &Option<String>) -> ApiResult<()> {
    if let Some(b) = b {
        if b.is_empty() || b.starts_with('-') || b.contains(char::is_whitespace) || b.contains("..")
        {
            return Err(ApiError::bad_request(format!(
                "branch {b:?} is not a valid git branch name"
            )));
        }
    }
    Ok(())
}

/// Every project the caller sees (a scoped token: its own).
#[utoipa::path(
    get,
    path = "/projects",
    operation_id = "projects_list",
    summary = "list projects",
    responses((status = 200, description = "success", body = Vec<Project>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(
        s.store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| caller.sees(&p.name))
            .map(shown)
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/projects",
    operation_id = "projects_create",
    summary = "create a project",
    request_body = CreateProject,
    responses((status = 201, description = "success", body = Project), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateProject>,
) -> ApiResult<impl IntoResponse> {
    names::project_name(&req.name)?;
    check_repo(&req.repo)?;
    check_retain(req.retain_images)?;
    check_branch(&req.default_branch)?;
    if req.webhook_secret.as_deref() == Some("") {
        return Err(ApiError::bad_request("webhookSecret must not be empty"));
    }
    check_deploy_key(&req.deploy_key, false)?;
    // Its production hostname must not be the console's.
    let cfg = &s.deployer.cfg;
    let host = berth_core::hosts::route_host(
        cfg.base_domain(),
        &req.name,
        berth_core::model::DEFAULT_SERVICE,
        berth_core::model::PRODUCTION,
    );
    if cfg.console_host.as_deref() == Some(host.as_str()) {
        return Err(ApiError::conflict(format!(
            "project {}'s hostname {host} is the console's (--console-host); choose another name",
            req.name
        )));
    }
    let p = s
        .store
        .create_project(NewProject {
            name: req.name,
            repo: req.repo,
            default_branch: req.default_branch.unwrap_or_else(|| "main".into()),
            retain_images: req.retain_images.unwrap_or(DEFAULT_RETAIN_IMAGES),
            webhook_secret: req.webhook_secret,
            deploy_key: req.deploy_key,
            created_at: now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(shown(p))))
}

#[utoipa::path(
    get,
    path = "/projects/{name}",
    operation_id = "projects_show",
    summary = "show a project with its environments and services",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, description = "success", body = ProjectDetail), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn show(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ProjectDetail>> {
    let project = s.store.get_project(&name).await?;
    let environments = s.store.list_environments(&name).await?;
    let deployments = s
        .store
        .list_deployments(&DeploymentQuery {
            project: Some(name.clone()),
            ..Default::default()
        })
        .await?;
    // One summary per (environment, service), from the newest deployment
    // and the active one.
    let mut services: BTreeMap<(String, String), ServiceSummary> = BTreeMap::new();
    for d in &deployments {
        let key = (d.environment_name.clone(), d.service_name.clone());
        let entry = services.entry(key).or_insert_with(|| ServiceSummary {
            name: d.service_name.clone(),
            environment_name: d.environment_name.clone(),
            active_deployment_id: None,
            route_url: d.route_url.clone(),
            status: None,
            health: None,
        });
        if d.is_active {
            entry.active_deployment_id = Some(d.id.clone());
            entry.status = Some(d.status.to_string());
            entry.health = Some(d.health.to_string());
        }
    }
    Ok(Json(ProjectDetail {
        project: shown(project),
        environments,
        services: services.into_values().collect(),
    }))
}

#[utoipa::path(
    patch,
    path = "/projects/{name}",
    operation_id = "projects_update",
    summary = "change a project",
    params(("name" = String, Path, description = "project name")),
    request_body = UpdateProject,
    responses((status = 200, description = "success", body = Project), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn update(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<UpdateProject>,
) -> ApiResult<Json<Project>> {
    check_retain(req.retain_images)?;
    check_branch(&req.default_branch)?;
    if let Some(r) = &req.repo {
        check_repo(r)?;
    }
    if req.webhook_secret.as_deref() == Some("") {
        return Err(ApiError::bad_request("webhookSecret must not be empty"));
    }
    check_deploy_key(&req.deploy_key, true)?;
    let p = s
        .store
        .update_project(
            &name,
            ProjectPatch {
                retain_images: req.retain_images,
                webhook_secret: req.webhook_secret,
                default_branch: req.default_branch,
                repo: req.repo,
                deploy_key: req.deploy_key,
            },
        )
        .await?;
    Ok(Json(shown(p)))
}

#[utoipa::path(
    get,
    path = "/projects/{name}/environments",
    operation_id = "projects_list_envs",
    summary = "list environments",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, description = "success", body = Vec<Environment>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list_envs(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Environment>>> {
    Ok(Json(s.store.list_environments(&name).await?))
}

#[utoipa::path(
    post,
    path = "/projects/{name}/environments",
    operation_id = "projects_create_env",
    summary = "create an environment",
    params(("name" = String, Path, description = "project name")),
    request_body = CreateEnvironment,
    responses((status = 201, description = "success", body = Environment), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn create_env(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<CreateEnvironment>,
) -> ApiResult<impl IntoResponse> {
    names::environment_name(&req.name)?;
    check_branch(&req.branch)?;
    let kind = if req.name.starts_with("pr-") {
        EnvironmentKind::Preview
    } else {
        EnvironmentKind::Branch
    };
    let env = s
        .store
        .create_environment(Environment {
            project_name: name,
            name: req.name,
            branch: req.branch,
            kind,
            created_at: now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(env)))
}

#[utoipa::path(
    delete,
    path = "/projects/{name}/environments/{env}",
    operation_id = "projects_delete_env",
    summary = "tear an environment down",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name")),
    responses((status = 204, description = "success"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn delete_env(
    State(s): State<AppState>,
    Path((name, env)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.deployer.teardown_environment(&name, &env).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/projects/{name}/environments/{env}/variables",
    operation_id = "projects_list_vars",
    summary = "list variables (secrets masked)",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name")),
    responses((status = 200, description = "success", body = Vec<Variable>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list_vars(
    State(s): State<AppState>,
    Path((name, env)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Variable>>> {
    Ok(Json(s.store.list_variables(&name, &env).await?))
}

#[utoipa::path(
    put,
    path = "/projects/{name}/environments/{env}/variables/{key}",
    operation_id = "projects_set_var",
    summary = "set a variable",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name"), ("key" = String, Path, description = "variable name")),
    request_body = SetVariable,
    responses((status = 200, description = "success", body = Variable), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn set_var(
    State(s): State<AppState>,
    Path((name, env, key)): Path<(String, String, String)>,
    Json(req): Json<SetVariable>,
) -> ApiResult<Json<Variable>> {
    names::variable_name(&key)?;
    names::variable_value(&key, &req.value)?;
    Ok(Json(
        s.store
            .set_variable(
                &name,
                &env,
                &key,
                &req.value,
                VarFlags {
                    secret: req.secret,
                    build: req.build,
                },
                now(),
            )
            .await?,
    ))
}

#[utoipa::path(
    delete,
    path = "/projects/{name}/environments/{env}/variables/{key}",
    operation_id = "projects_unset_var",
    summary = "unset a variable",
    params(("name" = String, Path, description = "project name"), ("env" = String, Path, description = "environment name"), ("key" = String, Path, description = "variable name")),
    responses((status = 204, description = "success"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn unset_var(
    State(s): State<AppState>,
    Path((name, env, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    if s.store.unset_variable(&name, &env, &key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "variable {key} is not set in {name}/{env}"
        )))
    }
}

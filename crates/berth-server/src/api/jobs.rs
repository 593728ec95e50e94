//! Scheduled jobs: list them with their last runs, run one now, read its
//! runs with their output.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::jobs::JobError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::ErrorBody;
use berth_core::model::PRODUCTION;
use berth_core::ops::{Job, Run, RunJob};
use berth_store::RunQuery;
use serde::Deserialize;

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::UnknownJob { .. } => ApiError::not_found(e.to_string()),
            JobError::Run(e) => e.into(),
            JobError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    environment: Option<String>,
}

/// `GET /projects/{name}/jobs`: every environment's jobs, or one's.
#[utoipa::path(
    get,
    path = "/projects/{name}/jobs",
    operation_id = "jobs_list",
    summary = "scheduled jobs of the project's environments (from the active deployments' berth.toml) with their next firing and last runs",
    params(("name" = String, Path, description = "project name"), ListQuery),
    responses((status = 200, description = "success", body = Vec<Job>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    s.store.get_project(&project).await?;
    if let Some(e) = &q.environment {
        s.store.get_environment(&project, e).await?;
    }
    Ok(Json(
        s.deployer
            .list_jobs(&project, q.environment.as_deref())
            .await?,
    ))
}

/// `POST /projects/{name}/jobs/{job}/runs`: run the job now (detached);
/// `GET /runs/{id}` follows it.
#[utoipa::path(
    post,
    path = "/projects/{name}/jobs/{job}/runs",
    operation_id = "jobs_run_now",
    summary = "run a job now, outside its schedule (detached)",
    params(("name" = String, Path, description = "project name"), ("job" = String, Path, description = "job name")),
    request_body(content = RunJob, description = "optional (no body: production)"),
    responses((status = 202, description = "success", body = Run), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn run_now(
    State(s): State<AppState>,
    caller: crate::access::Caller,
    Path((project, job)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    // The body is optional: no body runs it in production.
    let req: RunJob = if body.iter().all(u8::is_ascii_whitespace) {
        RunJob::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let env = req.environment.unwrap_or_else(|| PRODUCTION.into());
    // Dropping the events does not stop the run.
    let (run, _events) = s
        .deployer
        .run_job_now(&project, &env, &job, &caller.name)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    environment: Option<String>,
    limit: Option<u32>,
}

/// `GET /projects/{name}/jobs/{job}/runs`: the job's runs, newest first,
/// with their output (secrets redacted).
#[utoipa::path(
    get,
    path = "/projects/{name}/jobs/{job}/runs",
    operation_id = "jobs_runs",
    summary = "a job's runs, newest first, with their output (secrets redacted)",
    params(("name" = String, Path, description = "project name"), ("job" = String, Path, description = "job name"), RunsQuery),
    responses((status = 200, description = "success", body = Vec<Run>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn runs(
    State(s): State<AppState>,
    Path((project, job)): Path<(String, String)>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Vec<Run>>> {
    s.store.get_project(&project).await?;
    if let Some(e) = &q.environment {
        s.store.get_environment(&project, e).await?;
    }
    let runs = s
        .store
        .list_runs(&RunQuery {
            project: Some(project),
            environment: q.environment,
            job: Some(job),
            limit: Some(q.limit.unwrap_or(20).min(200)),
            ..Default::default()
        })
        .await?;
    Ok(Json(runs))
}

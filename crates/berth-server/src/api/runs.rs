//! One-off runs: start one attached (the request body is its stdin, the
//! answer streams its output as NDJSON) or detached, list and show them.

use super::{AppState, Json};
use crate::access::Caller;
use crate::error::{ApiError, ApiResult};
use crate::runs::{RunError, RunEvent, RunRequest};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::api::ErrorBody;
use berth_core::ops::{CreateRun, Run, RunStreamEvent};
use berth_store::RunQuery;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::EmptyCommand | RunError::StdinUnsupported(_) => {
                ApiError::bad_request(e.to_string())
            }
            RunError::NoActiveDeployment { .. } => {
                ApiError::new(StatusCode::CONFLICT, "no_active_deployment", e.to_string())
            }
            RunError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    service: Option<String>,
    environment: Option<String>,
    /// argv as a JSON array of strings.
    command: String,
    /// Whether the body is the process's stdin (default true).
    stdin: Option<bool>,
}

fn ndjson(event: &RunStreamEvent) -> Result<bytes::Bytes, std::io::Error> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line.into())
}

/// `POST /projects/{name}/runs/attach`
#[utoipa::path(
    post,
    path = "/projects/{name}/runs/attach",
    operation_id = "runs_attach",
    summary = "run a command attached: the body is its stdin, the answer NDJSON events (started, line, exit)",
    params(("name" = String, Path, description = "project name"), AttachQuery),
    request_body(content = String, description = "the process's stdin (any bytes)", content_type = "application/octet-stream"),
    responses((status = 200, description = "application/x-ndjson: one RunStreamEvent per line", body = RunStreamEvent, content_type = "application/x-ndjson"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn attach(
    State(s): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(q): Query<AttachQuery>,
    body: Body,
) -> ApiResult<Response> {
    let command: Vec<String> = serde_json::from_str(&q.command).map_err(|e| {
        ApiError::bad_request(format!("command must be a JSON array of strings: {e}"))
    })?;
    let req = RunRequest {
        project,
        service: q.service,
        environment: q.environment,
        command,
        requested_by: caller.name,
    };
    let stdin = if q.stdin.unwrap_or(true) {
        let (tx, rx) = mpsc::channel::<bytes::Bytes>(16);
        tokio::spawn(async move {
            let mut body = body.into_data_stream();
            while let Some(Ok(chunk)) = body.next().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        Some(rx)
    } else {
        None
    };
    let (run, events) = s.deployer.start_run(req, stdin).await?;
    let started = RunStreamEvent::Started { run: Box::new(run) };
    let rest = tokio_stream::wrappers::ReceiverStream::new(events).map(|e| match e {
        RunEvent::Line(l) => RunStreamEvent::Line(l),
        RunEvent::Done(run) => RunStreamEvent::Exit { run },
    });
    let stream = futures::stream::once(async move { started })
        .chain(rest)
        .map(|e| ndjson(&e));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /projects/{name}/runs`: a detached run; `GET /runs/{id}` and
/// `berth logs <id>` follow it.
#[utoipa::path(
    post,
    path = "/projects/{name}/runs",
    operation_id = "runs_create",
    summary = "start a detached one-off run of a command in the active deployment's image",
    params(("name" = String, Path, description = "project name")),
    request_body = CreateRun,
    responses((status = 202, description = "success", body = Run), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Json(body): Json<CreateRun>,
) -> ApiResult<impl IntoResponse> {
    let req = RunRequest {
        project,
        service: body.service,
        environment: body.environment,
        command: body.command,
        requested_by: caller.name,
    };
    // Dropping the events does not stop the run.
    let (run, _events) = s.deployer.start_run(req, None).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    environment: Option<String>,
    job: Option<String>,
    limit: Option<u32>,
}

/// `GET /projects/{name}/runs`: newest first, without their output.
#[utoipa::path(
    get,
    path = "/projects/{name}/runs",
    operation_id = "runs_list",
    summary = "list one-off and job runs, newest first (without output)",
    params(("name" = String, Path, description = "project name"), ListQuery),
    responses((status = 200, description = "success", body = Vec<Run>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Run>>> {
    s.store.get_project(&project).await?;
    if let Some(e) = &q.environment {
        s.store.get_environment(&project, e).await?;
    }
    let mut runs = s
        .store
        .list_runs(&RunQuery {
            project: Some(project),
            environment: q.environment,
            job: q.job,
            limit: Some(q.limit.unwrap_or(100).min(1000)),
            ..Default::default()
        })
        .await?;
    for r in &mut runs {
        r.output.clear();
    }
    Ok(Json(runs))
}

/// `GET /runs/{id}`: the run with its output so far.
#[utoipa::path(
    get,
    path = "/runs/{id}",
    operation_id = "runs_show",
    summary = "a run with its output (secrets redacted)",
    params(("id" = String, Path, description = "id")),
    responses((status = 200, description = "success", body = Run), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn show(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(s.store.get_run(&id).await?))
}

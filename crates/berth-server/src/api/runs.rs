//! One-off runs: start one attached (the request body is its stdin, the
//! answer streams its output as NDJSON; with `tty=true` the body is
//! [`TtyFrame`]s and the output the terminal's bytes) or detached, list
//! and show them.

use super::{AppState, Json};
use crate::access::Caller;
use crate::error::{ApiError, ApiResult};
use crate::runs::{RunError, RunEvent, RunRequest, RunTty};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_core::api::ErrorBody;
use berth_core::ops::{CreateRun, Run, RunStreamEvent, TtyFrame};
use berth_runtime::TtySize;
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
    /// A terminal for the process (default false): the body is
    /// [`TtyFrame`]s (stdin bytes and window sizes).
    tty: Option<bool>,
    /// The terminal's size at start (default 80x24).
    cols: Option<u16>,
    rows: Option<u16>,
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
    summary = "run a command attached: the body is its stdin (with tty=true, terminal frames), the answer NDJSON events (started, line or output, exit)",
    params(("name" = String, Path, description = "project name"), AttachQuery),
    request_body(content = String, description = "the process's stdin (any bytes); with tty=true a sequence of frames: kind byte (0 stdin bytes, 1 resize: u16 columns, u16 rows), big-endian u32 length, payload", content_type = "application/octet-stream"),
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
    if q.tty.unwrap_or(false) {
        let tty = TtyQuery {
            stdin: q.stdin.unwrap_or(true),
            cols: q.cols,
            rows: q.rows,
        };
        return attach_tty(s, req, tty, body).await;
    }
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
    Ok(stream_events(run, events))
}

/// The attached run with a terminal: reads [`TtyFrame`]s off the body
/// (stdin bytes to the process, sizes to its terminal); a malformed
/// frame ends its stdin.
struct TtyQuery {
    stdin: bool,
    cols: Option<u16>,
    rows: Option<u16>,
}

async fn attach_tty(s: AppState, req: RunRequest, q: TtyQuery, body: Body) -> ApiResult<Response> {
    let size = TtySize {
        cols: q.cols.filter(|&c| c > 0).unwrap_or(80),
        rows: q.rows.filter(|&r| r > 0).unwrap_or(24),
    };
    let (resize_tx, resize_rx) = mpsc::channel::<TtySize>(8);
    let with_stdin = q.stdin;
    let (stdin_tx, stdin_rx) = mpsc::channel::<bytes::Bytes>(16);
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            loop {
                match TtyFrame::decode(&mut buf) {
                    Ok(Some(TtyFrame::Stdin(b))) => {
                        if with_stdin && stdin_tx.send(b.into()).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(TtyFrame::Resize { cols, rows })) => {
                        if cols > 0 && rows > 0 {
                            let _ = resize_tx.try_send(TtySize { cols, rows });
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "attached run: bad terminal frame");
                        return;
                    }
                }
            }
        }
    });
    let tty = RunTty {
        size,
        resize: resize_rx,
    };
    let stdin = with_stdin.then_some(stdin_rx);
    let (run, events) = s.deployer.start_run_tty(req, stdin, tty).await?;
    Ok(stream_events(run, events))
}

/// The NDJSON answer of an attached run: `started`, its output, `exit`.
fn stream_events(run: Run, events: mpsc::Receiver<RunEvent>) -> Response {
    let started = RunStreamEvent::Started { run: Box::new(run) };
    let rest = tokio_stream::wrappers::ReceiverStream::new(events).map(|e| match e {
        RunEvent::Line(l) => RunStreamEvent::Line(l),
        RunEvent::Output(b) => RunStreamEvent::Output {
            data: base64::engine::general_purpose::STANDARD.encode(&b),
        },
        RunEvent::Done(run) => RunStreamEvent::Exit { run },
    });
    let stream = futures::stream::once(async move { started })
        .chain(rest)
        .map(|e| ndjson(&e));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
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

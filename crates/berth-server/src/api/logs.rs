//! Logs of one deployment, or of a service across its deployments; with
//! `follow=true` a Server-Sent Events stream whose event ids are the lines'
//! `seq`, so a client resumes with `Last-Event-ID` (or `after=`) and loses
//! or repeats nothing.

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_core::api::ErrorBody;
use berth_core::model::{LogLine, LogStream, StepName, DEFAULT_SERVICE, PRODUCTION};
use berth_core::state::Stage;
use berth_store::{LogQuery, Slot, Store};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    project: Option<String>,
    service: Option<String>,
    environment: Option<String>,
    after: Option<i64>,
    stream: Option<String>,
    step: Option<String>,
    since: Option<String>,
    limit: Option<u32>,
    tail: Option<bool>,
    follow: Option<bool>,
}

fn parse_streams(s: &Option<String>) -> ApiResult<Vec<LogStream>> {
    let Some(s) = s else { return Ok(vec![]) };
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            LogStream::parse(x.trim()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown log stream {x:?} (streams: berth, build, stdout, stderr)"
                ))
            })
        })
        .collect()
}

/// `since`: the rule of the CLI's `--since` ([`berth_core::units::parse_since`]).
fn parse_since(s: &Option<String>) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(s) = s else { return Ok(None) };
    berth_core::units::parse_since(s, Utc::now())
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("since: {e}")))
}

fn last_event_id(h: &HeaderMap) -> Option<i64> {
    h.get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn build_query(p: &LogParams, headers: &HeaderMap) -> ApiResult<LogQuery> {
    let step = match &p.step {
        Some(s) => Some(
            StepName::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown step {s:?}")))?,
        ),
        None => None,
    };
    Ok(LogQuery {
        deployment_id: None,
        slot: None,
        streams: parse_streams(&p.stream)?,
        step,
        after_seq: last_event_id(headers).or(p.after),
        since: parse_since(&p.since)?,
        limit: Some(p.limit.unwrap_or(5000).min(50_000)),
        tail: p.tail.unwrap_or(false),
    })
}

#[utoipa::path(
    get,
    path = "/deployments/{id}/logs",
    operation_id = "logs_deployment_logs",
    summary = "logs of a deployment; follow=true streams SSE",
    params(("id" = String, Path, description = "id"), LogParams),
    responses((status = 200, description = "log lines (JSON), or with follow=true a text/event-stream of `log` events whose data is one LogLine", body = Vec<LogLine>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn deployment_logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<LogParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    s.store.get_deployment(&id).await?;
    let mut q = build_query(&p, &headers)?;
    q.deployment_id = Some(id.clone());
    respond(s, q, p.follow.unwrap_or(false), Some(id)).await
}

#[utoipa::path(
    get,
    path = "/logs",
    operation_id = "logs_service_logs",
    summary = "logs of a service across deployments; follow=true streams SSE",
    params(LogParams),
    responses((status = 200, description = "log lines (JSON), or with follow=true a text/event-stream of `log` events whose data is one LogLine", body = Vec<LogLine>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn service_logs(
    State(s): State<AppState>,
    Query(p): Query<LogParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let project = p
        .project
        .clone()
        .ok_or_else(|| ApiError::bad_request("project is required"))?;
    let slot = Slot {
        environment: p.environment.clone().unwrap_or_else(|| PRODUCTION.into()),
        service: p.service.clone().unwrap_or_else(|| DEFAULT_SERVICE.into()),
        project,
    };
    s.store
        .get_environment(&slot.project, &slot.environment)
        .await?;
    let mut q = build_query(&p, &headers)?;
    q.slot = Some(slot);
    respond(s, q, p.follow.unwrap_or(false), None).await
}

async fn respond(
    s: AppState,
    q: LogQuery,
    follow: bool,
    deployment: Option<String>,
) -> ApiResult<Response> {
    if !follow {
        let lines = s.store.read_logs(&q).await?;
        return Ok(Json(lines).into_response());
    }
    let state = Follow {
        store: s.store.clone(),
        q: LogQuery {
            tail: false,
            limit: Some(1000),
            ..q
        },
        buf: VecDeque::new(),
        written: s.deployer.logs.subscribe(),
        deployment,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.buf.pop_front() {
                let data = serde_json::to_string(&line).unwrap_or_default();
                let ev = Event::default().id(line.seq.to_string()).data(data);
                return Some((Ok::<_, Infallible>(ev), st));
            }
            match st.store.read_logs(&st.q).await {
                Ok(lines) if !lines.is_empty() => {
                    st.q.after_seq = lines.last().map(|l| l.seq);
                    st.buf.extend(lines);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "log follow read failed");
                }
            }
            if st.done {
                return None;
            }
            if let Some(id) = &st.deployment {
                if let Ok(d) = st.store.get_deployment(id).await {
                    let live = !d.status.is_terminal()
                        || matches!(d.promotion_stage, Stage::Active | Stage::DrainingPrevious);
                    if !live {
                        // One last read catches lines written meanwhile.
                        st.done = true;
                        continue;
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), st.written.changed()).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Follow {
    store: Arc<dyn Store>,
    q: LogQuery,
    buf: VecDeque<LogLine>,
    written: tokio::sync::watch::Receiver<u64>,
    deployment: Option<String>,
    done: bool,
}

//! Runs the built `berth` binary against a small fake of the API on
//! 127.0.0.1:0 and checks stdout, stderr and exit codes.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const TOKEN: &str = "t0k3n";

#[derive(Default)]
struct Fake {
    polls: AtomicUsize,
    puts: AtomicUsize,
    /// Connections to a deployment's event stream.
    streams: AtomicUsize,
}

type S = State<Arc<Fake>>;

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// The 401 answer unless the request carries the token.
fn unauthorized(h: &HeaderMap) -> Option<Response> {
    match h.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == format!("Bearer {TOKEN}") => None,
        _ => Some(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bearer token required",
        )),
    }
}

fn deployment(id: &str, status: &str, stage: &str) -> Value {
    let failed = status == "failed";
    json!({
        "id": id, "projectName": "shop", "serviceName": "web",
        "environmentName": "production", "status": status, "promotionStage": stage,
        "health": if failed { "unhealthy" } else { "healthy" },
        "isActive": status == "succeeded",
        "routeUrl": "http://shop.localhost:8080", "previewUrl": null,
        "failureMessage": if failed { Value::from("health_check: app never answered on port 3000") } else { Value::Null },
        "createdAt": "2026-04-24T10:00:00Z", "startedAt": null, "completedAt": null,
        "ref": "main", "commit": null, "trigger": "manual", "sourceDeploymentId": null,
        "image": null,
        "build": { "provider": null, "framework": null, "runtime": null, "port": null, "startCommand": null, "cacheHit": false },
        "steps": [
            { "name": "clone", "status": "succeeded", "startedAt": "2026-04-24T10:00:00Z", "completedAt": "2026-04-24T10:00:01Z", "durationMs": 1000, "log": "" },
            { "name": "health_check", "status": if failed { "failed" } else { "succeeded" }, "startedAt": "2026-04-24T10:00:01Z", "completedAt": "2026-04-24T10:00:02Z", "durationMs": 1000, "log": "probe: connection refused\nprobe: gave up" }
        ],
        "canaryWeight": null
    })
}

fn log_line(seq: i64) -> Value {
    json!({
        "seq": seq, "ts": "2026-04-24T10:01:45Z", "deploymentId": "dep_f",
        "projectName": "shop", "serviceName": "web", "environmentName": "production",
        "sha": "abc1234", "stream": "stdout", "step": null, "text": format!("line {seq}")
    })
}

async fn projects(h: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    // Keys deliberately not in alphabetical order: --json must keep them.
    let body = r#"[{"name":"shop","repo":"https://u:secret@git.example/shop.git","defaultBranch":"main","retainImages":3,"hasWebhookSecret":false,"createdAt":"2026-04-24T10:00:00Z"}]"#;
    ([("content-type", "application/json")], body).into_response()
}

async fn project(h: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    err(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("project {name} not found"),
    )
}

async fn set_var(
    State(s): S,
    h: HeaderMap,
    Path((_p, _e, key)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    s.puts.fetch_add(1, Ordering::SeqCst);
    let secret = body["secret"].as_bool().unwrap_or(false);
    let value = if secret {
        Value::Null
    } else {
        body["value"].clone()
    };
    Json(json!({ "key": key, "value": value, "secret": secret, "updatedAt": "2026-04-24T10:00:00Z" }))
        .into_response()
}

async fn create_deployment(h: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let id = if body["service"] == "broken" {
        "dep_f"
    } else {
        "dep_w"
    };
    (
        StatusCode::CREATED,
        Json(deployment(id, "queued", "pending")),
    )
        .into_response()
}

async fn list_deployments(h: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    Json(json!([deployment("dep_w", "succeeded", "active")])).into_response()
}

async fn get_deployment(State(s): S, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let n = s.polls.fetch_add(1, Ordering::SeqCst);
    let d = match (id.as_str(), n) {
        ("dep_w", 0) => deployment("dep_w", "running", "checking_readiness"),
        ("dep_w", _) => deployment("dep_w", "succeeded", "active"),
        ("dep_f", _) => deployment("dep_f", "failed", "checking_readiness"),
        // Logging while it runs; finished on the second look.
        ("dep_l", 0) => deployment("dep_l", "running", "checking_readiness"),
        ("dep_l", _) => deployment("dep_l", "failed", "checking_readiness"),
        _ => return err(StatusCode::NOT_FOUND, "not_found", "no such deployment"),
    };
    Json(d).into_response()
}

/// A deployment's event stream. dep_w: the first connection sends one
/// event (still running) and breaks; the next one sends it succeeded.
/// Other ids: 404 without berth's body, as a server older than the stream
/// answers (the CLI polls those).
async fn events(State(s): S, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    if id != "dep_w" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let d = match s.streams.fetch_add(1, Ordering::SeqCst) {
        0 => deployment("dep_w", "running", "checking_readiness"),
        _ => deployment("dep_w", "succeeded", "active"),
    };
    let body = format!(": keep-alive\n\nevent: deployment\nid: 3\ndata: {d}\n\n");
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn logs(
    h: HeaderMap,
    Path(_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let after: i64 = h
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.get("after").map(String::as_str))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if q.get("follow").map(String::as_str) == Some("true") {
        // First connection: lines 1 and 2, then the stream breaks. On
        // resume the server repeats line 2 (the client must drop it).
        let seqs: Vec<i64> = if after < 2 { vec![1, 2] } else { vec![2, 3] };
        let body: String = seqs
            .into_iter()
            .map(|s| format!(": ping\nid: {s}\ndata: {}\n\n", log_line(s)))
            .collect();
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    let page: Vec<Value> = match after {
        0 => vec![log_line(1), log_line(2)],
        2 => vec![log_line(3)],
        _ => vec![],
    };
    Json(page).into_response()
}

async fn start() -> String {
    start_fake().await.0
}

/// [`start`], with the fake's counters.
async fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route(
            "/api/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/api/v1/projects", get(projects))
        .route("/api/v1/projects/{name}", get(project))
        .route(
            "/api/v1/projects/{p}/environments/{e}/variables/{key}",
            put(set_var),
        )
        .route(
            "/api/v1/deployments",
            post(create_deployment).get(list_deployments),
        )
        .route("/api/v1/deployments/{id}", get(get_deployment))
        .route("/api/v1/deployments/{id}/logs", get(logs))
        .route("/api/v1/deployments/{id}/events", get(events))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

async fn berth(api: &str, token: Option<&str>, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .current_dir(dir.path())
        .env("BERTH_API", api)
        .env("BERTH_DATA_DIR", dir.path())
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_PROJECT");
    if let Some(t) = token {
        cmd.env("BERTH_TOKEN", t);
    }
    cmd.output().await.unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn projects_list_human_and_json() {
    let api = start().await;
    let o = berth(&api, Some(TOKEN), &["projects", "list"]).await;
    assert!(o.status.success(), "{}", err_text(&o));
    let text = out(&o);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAME  REPO"), "{text}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("shop  https://***@git.example/shop.git  main"),
        "{row}"
    );
    assert!(
        !text.contains("secret"),
        "credentials must be masked: {text}"
    );

    let o = berth(&api, Some(TOKEN), &["projects", "list", "--json"]).await;
    assert!(o.status.success());
    let text = out(&o);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[0]["name"], "shop");
    // Exactly as returned: the server's key order, not alphabetical.
    let name = text.find("\"name\"").unwrap();
    let created = text.find("\"createdAt\"").unwrap();
    assert!(name < created, "{text}");
}

#[tokio::test]
async fn server_error_is_one_line_exit_1() {
    let api = start().await;
    let o = berth(&api, Some(TOKEN), &["projects", "show", "nope"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err_text(&o), "error: project nope not found\n");
    assert!(out(&o).is_empty());
}

#[tokio::test]
async fn unauthorized_names_the_token() {
    let api = start().await;
    let o = berth(&api, None, &["projects", "list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err_text(&o), "error: 401 unauthorized: set BERTH_TOKEN\n");
    let o = berth(&api, Some("wrong"), &["status", "--json"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err_text(&o).starts_with("error: 401 unauthorized"));
    assert!(out(&o).is_empty());
}

#[tokio::test]
async fn token_is_read_from_data_dir() {
    let api = start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["projects", "list", "--data-dir"])
        .arg(dir.path())
        .env("BERTH_API", &api)
        .env_remove("BERTH_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", err_text(&o));
}

#[tokio::test]
async fn unreachable_api() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let api = format!("http://{addr}");
    let o = berth(&api, Some(TOKEN), &["projects", "list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err_text(&o),
        format!("error: cannot reach berth API at {api}: connection refused\n")
    );
}

#[tokio::test]
async fn env_set_rejects_a_pair_without_equals_before_sending() {
    let api = start().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &["env", "set", "--project", "shop", "A=1", "BROKEN"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let e = err_text(&o);
    assert!(
        e.starts_with("error: ") && e.contains("BROKEN") && e.lines().count() == 1,
        "{e}"
    );
    assert!(out(&o).is_empty());

    let o = berth(
        &api,
        Some(TOKEN),
        &[
            "env",
            "set",
            "--project",
            "shop",
            "--secret",
            "DB=postgres://u:hunter2@h/db",
            "E=",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err_text(&o));
    let text = out(&o);
    assert!(
        text.contains("set DB (secret)") && text.contains("set E"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

#[tokio::test]
async fn deploy_wait_success_prints_url() {
    let api = start().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &["deploy", "--project", "shop", "--wait"],
    )
    .await;
    assert!(o.status.success(), "{}", err_text(&o));
    let text = out(&o);
    assert!(text.contains("stage: checking_readiness"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("deployment dep_w succeeded: http://shop.localhost:8080"),
        "{text}"
    );
}

#[tokio::test]
async fn deploy_wait_follows_the_event_stream_and_polls_only_when_it_breaks() {
    let (api, fake) = start_fake().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &["deploy", "--project", "shop", "--wait", "--json"],
    )
    .await;
    assert!(o.status.success(), "{}", err_text(&o));
    let v: Value = serde_json::from_str(&out(&o)).expect("stdout is one JSON object");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["promotionStage"], "active");
    // The first stream broke while running: one poll, then the stream again.
    assert_eq!(fake.streams.load(Ordering::SeqCst), 2);
    assert_eq!(fake.polls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn deploy_wait_json_prints_only_the_final_object() {
    let api = start().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &["deploy", "--project", "shop", "--wait", "--json"],
    )
    .await;
    assert!(o.status.success(), "{}", err_text(&o));
    let v: Value = serde_json::from_str(&out(&o)).expect("stdout is one JSON object");
    assert_eq!(v["status"], "succeeded");
    assert!(err_text(&o).contains("stage: active"));
}

#[tokio::test]
async fn deploy_wait_failure_exit_1_with_reason_and_step_log() {
    let api = start().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &[
            "deploy",
            "--project",
            "shop",
            "--service",
            "broken",
            "--wait",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let e = err_text(&o);
    assert!(e.contains("probe: gave up"), "{e}");
    assert_eq!(
        e.lines().last().unwrap(),
        "error: deployment dep_f failed: health_check: app never answered on port 3000"
    );
}

#[tokio::test]
async fn deploy_without_wait_returns_at_once() {
    let api = start().await;
    let o = berth(
        &api,
        Some(TOKEN),
        &["deploy", "--project", "shop", "--json"],
    )
    .await;
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["status"], "queued");
}

#[tokio::test]
async fn logs_pages_until_empty() {
    let api = start().await;
    let o = berth(&api, Some(TOKEN), &["logs", "dep_f"]).await;
    assert!(o.status.success(), "{}", err_text(&o));
    assert_eq!(
        out(&o),
        "2026-04-24T10:01:45Z [stdout] line 1\n2026-04-24T10:01:45Z [stdout] line 2\n2026-04-24T10:01:45Z [stdout] line 3\n"
    );
}

#[tokio::test]
async fn logs_follow_resumes_without_loss_or_repeat() {
    let api = start().await;
    let o = berth(&api, Some(TOKEN), &["logs", "dep_l", "--follow", "--json"]).await;
    assert!(o.status.success(), "{}", err_text(&o));
    let seqs: Vec<i64> = out(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

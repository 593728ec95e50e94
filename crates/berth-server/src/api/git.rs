//! `git push` to berth: Git's smart HTTP protocol at `/git/<project>.git`
//! (HTTP basic auth, an API token as password: fetching needs a viewer,
//! pushing a deployer, of that project; see [`crate::access`]; each push
//! is in the audit log). The pushed repository is kept in the store as a
//! bundle, so every server of a cluster serves it and the leader builds it
//! (see [`crate::pushed`]; each server's working copy is in
//! `<data-dir>/git/`); after a push it deploys the
//! environment mapped to each pushed branch and streams the deployment's
//! stages back to the pusher's terminal as `remote:` messages (side band 2),
//! the way Heroku and Dokku do. Fetch and clone work too.

use super::AppState;
use crate::access::{self, Caller, Peer};
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::access::{AuditEntry, Role};
use berth_core::model::{Deployment, Trigger};
use berth_core::state::Status;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Deserialize)]
pub struct ServiceQuery {
    service: Option<String>,
}

fn unauthorized() -> Response {
    let mut r = ApiError::unauthorized().into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\""),
    );
    r
}

fn project_of(repo: &str) -> Option<&str> {
    repo.strip_suffix(".git")
}

/// The project's working copy of its pushed repository on this server,
/// brought up to the stored version (see [`crate::pushed`]).
async fn synced_repo(s: &AppState, project: &str) -> Result<PathBuf, ApiError> {
    crate::pushed::sync(&*s.store, &s.deployer.cfg.data_dir, project)
        .await
        .map(|(dir, _)| dir)
        .map_err(pushed_error)
}

fn pushed_error(e: crate::pushed::PushedError) -> ApiError {
    match e {
        crate::pushed::PushedError::Store(e) => ApiError::from(e),
        e => ApiError::internal(e.to_string()),
    }
}

fn pkt(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:04x}", data.len() + 4).into_bytes();
    v.extend_from_slice(data);
    v
}

fn progress(msg: &str) -> Bytes {
    let mut data = vec![2u8];
    data.extend_from_slice(msg.as_bytes());
    data.push(b'\n');
    Bytes::from(pkt(&data))
}

#[allow(clippy::result_large_err)]
async fn checked(
    s: &AppState,
    repo: &str,
    headers: &HeaderMap,
    peer: &Peer,
    need: Role,
) -> Result<(String, PathBuf, Caller), Response> {
    let caller = match access::identify(s, headers, peer.ip(), false).await {
        Ok(c) => c,
        Err(access::Denied::Missing) => return Err(unauthorized()),
        Err(d) => return Err(ApiError::from(d).into_response()),
    };
    let Some(project) = project_of(repo) else {
        return Err(ApiError::not_found("repository paths end in .git").into_response());
    };
    if let Err(d) = access::permit(&caller, need, access::Scope::Path("repo"), Some(project)) {
        return Err(ApiError::from(d).into_response());
    }
    if let Err(e) = s.store.get_project(project).await {
        return Err(ApiError::from(e).into_response());
    }
    let dir = crate::pushed::dir(&s.deployer.cfg.data_dir, project);
    Ok((project.to_string(), dir, caller))
}

pub async fn info_refs(
    State(s): State<AppState>,
    Path(repo): Path<String>,
    Query(q): Query<ServiceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let service = q.service.unwrap_or_default();
    let need = if service == "git-receive-pack" {
        Role::Deployer
    } else {
        Role::Viewer
    };
    let (project, _, _) = match checked(&s, &repo, &headers, &peer, need).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let dir = match synced_repo(&s, &project).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let sub = match service.as_str() {
        "git-receive-pack" => "receive-pack",
        "git-upload-pack" => "upload-pack",
        _ => {
            return ApiError::bad_request(
                "only smart HTTP (service=git-receive-pack or git-upload-pack) is supported",
            )
            .into_response()
        }
    };
    let out = match tokio::process::Command::new("git")
        .args([sub, "--stateless-rpc", "--advertise-refs"])
        .arg(&dir)
        .output()
        .await
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => return ApiError::internal(String::from_utf8_lossy(&o.stderr)).into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut body = pkt(format!("# service={service}\n").as_bytes());
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&out);
    (
        [
            (
                header::CONTENT_TYPE,
                format!("application/x-{service}-advertisement"),
            ),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}

#[allow(clippy::result_large_err)]
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Vec<u8>, Response> {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if !gz {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("bad gzip body: {e}")).into_response())?;
    Ok(out)
}

/// The ref updates at the start of a receive-pack request:
/// `(old, new, refname)` and whether the client asked for a side band.
fn parse_commands(body: &[u8]) -> (Vec<(String, String, String)>, bool) {
    let mut cmds = Vec::new();
    let mut sideband = false;
    let mut i = 0;
    while i + 4 <= body.len() {
        let Ok(len) =
            usize::from_str_radix(std::str::from_utf8(&body[i..i + 4]).unwrap_or("x"), 16)
        else {
            break;
        };
        if len == 0 || i + len > body.len() || len < 4 {
            break;
        }
        let line = &body[i + 4..i + len];
        let (cmd, caps) = match line.iter().position(|b| *b == 0) {
            Some(z) => (&line[..z], Some(&line[z + 1..])),
            None => (line, None),
        };
        if let Some(c) = caps {
            sideband |= String::from_utf8_lossy(c).contains("side-band");
        }
        let text = String::from_utf8_lossy(cmd);
        let parts: Vec<&str> = text.trim_end().split(' ').collect();
        if parts.len() == 3 {
            cmds.push((parts[0].into(), parts[1].into(), parts[2].into()));
        }
        i += len;
    }
    (cmds, sideband)
}

pub async fn upload_pack(
    State(s): State<AppState>,
    Path(repo): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(s, repo, peer, headers, body, "upload-pack").await
}

pub async fn receive_pack(
    State(s): State<AppState>,
    Path(repo): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    rpc(s, repo, peer, headers, body, "receive-pack").await
}

async fn rpc(
    s: AppState,
    repo: String,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
    sub: &str,
) -> Response {
    let need = if sub == "receive-pack" {
        Role::Deployer
    } else {
        Role::Viewer
    };
    let (project, dir, caller) = match checked(&s, &repo, &headers, &peer, need).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let input = match decode_body(&headers, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (cmds, sideband) = if sub == "receive-pack" {
        parse_commands(&input)
    } else {
        (vec![], false)
    };
    // A push holds the working copy from its sync to its save.
    let lock = crate::pushed::lock(&dir);
    let held = if sub == "receive-pack" {
        Some(lock.lock().await)
    } else {
        None
    };
    let data_dir = &s.deployer.cfg.data_dir;
    let synced = match held {
        Some(_) => crate::pushed::sync_locked(&*s.store, data_dir, &project).await,
        None => crate::pushed::sync(&*s.store, data_dir, &project).await,
    };
    let started_from = match synced {
        Ok((_, v)) => v,
        Err(e) => return pushed_error(e).into_response(),
    };
    let mut child = match tokio::process::Command::new("git")
        .args([sub, "--stateless-rpc"])
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(si) = stdin.as_mut() {
            let _ = si.write_all(&input).await;
            let _ = si.shutdown().await;
        }
    });
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let _ = writer.await;
    let content_type = format!("application/x-git-{sub}-result");
    if sub != "receive-pack" || !out.status.success() {
        return ([(header::CONTENT_TYPE, content_type)], out.stdout).into_response();
    }
    // Every server (the leader builds) sees the push through the store.
    let saved = if cmds.is_empty() {
        Ok(started_from)
    } else {
        crate::pushed::save_locked(&*s.store, &s.deployer.cfg.data_dir, &project, started_from)
            .await
    };
    drop(held);

    // Deploy each pushed branch's environment and stream its progress.
    let mut pushed: Vec<(String, String)> = Vec::new();
    for (_, new, r) in &cmds {
        if let Some(branch) = r.strip_prefix("refs/heads/") {
            if new.bytes().any(|b| b != b'0') {
                pushed.push((branch.to_string(), new.clone()));
            }
        }
    }
    if !cmds.is_empty() {
        let refs: Vec<&str> = cmds.iter().map(|(_, _, r)| r.as_str()).collect();
        access::record(
            &s,
            AuditEntry {
                at: crate::ids::now(),
                token: caller.name.clone(),
                action: "git-push".into(),
                target: format!("{project} {}", refs.join(" ")),
                project: Some(project.clone()),
                source_ip: caller.ip.clone(),
            },
        )
        .await;
    }
    let mut report = out.stdout;
    if sideband && report.ends_with(b"0000") {
        report.truncate(report.len() - 4);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let _ = tx.send(Ok(Bytes::from(report))).await;
    tokio::spawn(async move {
        let say = |m: String| {
            let tx = tx.clone();
            async move {
                if sideband {
                    let _ = tx.send(Ok(progress(&m))).await;
                }
            }
        };
        if let Err(e) = saved {
            tracing::warn!(project = %project, error = %e, "a git push was not kept");
            say(format!("berth: push not kept, nothing deployed: {e}")).await;
            if sideband {
                let _ = tx.send(Ok(Bytes::from_static(b"0000"))).await;
            }
            return;
        }
        let envs = s
            .store
            .list_environments(&project)
            .await
            .unwrap_or_default();
        let mut started: Vec<Deployment> = Vec::new();
        for (branch, sha) in &pushed {
            match envs
                .iter()
                .find(|e| e.branch.as_deref() == Some(branch.as_str()))
            {
                None => {
                    say(format!(
                        "berth: branch {branch} is not mapped to an environment; nothing deployed"
                    ))
                    .await
                }
                Some(env) => {
                    match s
                        .deployer
                        .deploy_environment(
                            &project,
                            &env.name,
                            Some(sha.clone()),
                            Trigger::GitPush,
                            Some(crate::pushed::source_of(&project)),
                        )
                        .await
                    {
                        Ok(ds) => {
                            for d in &ds {
                                say(format!(
                                    "berth: deploying {} of {} to {} as {}",
                                    &sha[..sha.len().min(7)],
                                    d.service_name,
                                    d.environment_name,
                                    d.id
                                ))
                                .await;
                            }
                            started.extend(ds);
                        }
                        Err(e) => {
                            say(format!("berth: cannot deploy {branch}: {}", e.message)).await
                        }
                    }
                }
            }
        }
        follow(&s, &started, sideband, &tx).await;
        if sideband {
            let _ = tx.send(Ok(Bytes::from_static(b"0000"))).await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Print stage and step changes of `ds` until they all end (30 min max).
async fn follow(
    s: &AppState,
    ds: &[Deployment],
    sideband: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    if !sideband || ds.is_empty() {
        return;
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    loop {
        let mut all_done = true;
        for d in ds {
            let Ok(cur) = s.store.get_deployment(&d.id).await else {
                continue;
            };
            let running = cur
                .steps
                .iter()
                .find(|st| st.status == berth_core::model::StepStatus::Running)
                .map(|st| st.name.as_str())
                .unwrap_or("");
            let key = format!("{} {} {running}", cur.status, cur.promotion_stage);
            if seen.get(&cur.id) != Some(&key) {
                let line = if running.is_empty() {
                    format!("berth: {} {} ({})", cur.id, cur.promotion_stage, cur.status)
                } else {
                    format!("berth: {} {} — {running}", cur.id, cur.promotion_stage)
                };
                let _ = tx.send(Ok(progress(&line))).await;
                seen.insert(cur.id.clone(), key);
            }
            if cur.status.is_terminal() {
                let end = match cur.status {
                    Status::Succeeded => format!(
                        "berth: {} is live at {}",
                        cur.id,
                        cur.route_url.clone().unwrap_or_default()
                    ),
                    _ => format!(
                        "berth: {} {}: {}",
                        cur.id,
                        cur.status,
                        cur.failure_message.clone().unwrap_or_default()
                    ),
                };
                if let std::collections::hash_map::Entry::Vacant(e) =
                    seen.entry(format!("end:{}", cur.id))
                {
                    e.insert(String::new());
                    let _ = tx.send(Ok(progress(&end))).await;
                }
            } else {
                all_done = false;
            }
        }
        if all_done || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_receive_pack_commands() {
        let z = "0".repeat(40);
        let a = "a".repeat(40);
        let mut body =
            pkt(format!("{z} {a} refs/heads/main\0report-status side-band-64k\n").as_bytes());
        body.extend(pkt(format!("{a} {z} refs/heads/old\n").as_bytes()));
        body.extend_from_slice(b"0000PACK...");
        let (cmds, sb) = parse_commands(&body);
        assert!(sb);
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0], (z.clone(), a.clone(), "refs/heads/main".into()));
        assert_eq!(cmds[1].2, "refs/heads/old");
        assert_eq!(progress("hi"), Bytes::from_static(b"0008\x02hi\n"));
    }
}

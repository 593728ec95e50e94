//! Canary rollouts (004): weighted stages judged against the previous
//! deployment, automatic rollback on regression.

use super::{deploy_wait, host, unique, Cleanup};
use crate::harness::*;
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CANARY_TOML: &str = "[services.web.canary]
stages = [50, 100]
observation_window = \"3s\"
error_rate_threshold = 0.05
min_requests = 20
";

fn app_cgi(repo: &AppRepo, status: &str) {
    let p = repo.dir.path().join("www/cgi-bin/app");
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho 'Status: {status}'\necho 'Content-Type: text/plain'\necho\necho app-{status}\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_regressing_canary_is_rolled_back_and_a_healthy_one_goes_live() {
    let project = unique("e2ey");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("c1");
    std::fs::write(repo.dir.path().join("berth.toml"), CANARY_TOML).unwrap();
    app_cgi(&repo, "200 OK");
    repo.commit_app("c1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);

    // v2 answers 500: the 50% stage sees it and rolls back.
    app_cgi(&repo, "500 Internal Server Error");
    repo.commit_app("c2", DOCKERFILE, "v2 broken");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(60),
    );
    let (ok, d2) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(!ok, "{d2}");
    assert_eq!(d2["status"], "failed");
    // a failed canary ends rolled back, its weight cleared (issue 16)
    assert_eq!(d2["promotionStage"], "rolled_back");
    assert_eq!(d2["canaryWeight"], serde_json::Value::Null);
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(msg.contains("canary at 50% regressed: error rate"), "{msg}");
    assert!(report.non2xx > 0, "the canary really took traffic");
    assert!(report.ok > report.non2xx, "most requests went to v1");
    let after = s.get_host(&h, "/cgi-bin/app").unwrap();
    assert_eq!(after.0, 200, "v1 serves again: {after:?}");
    let active: Vec<_> = s
        .deployments(&project)
        .into_iter()
        .filter(|d| d["isActive"] == true)
        .collect();
    assert_eq!(active[0]["id"], d1["id"]);

    // v3 is healthy: it passes the stages and goes live.
    app_cgi(&repo, "200 OK");
    repo.commit_app("c3", DOCKERFILE, "v3");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(60),
    );
    let (ok, d3) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(ok, "{d3}");
    // the rollout is over: the weight is cleared
    assert_eq!(d3["canaryWeight"], serde_json::Value::Null);
    assert_eq!(d3["promotionStage"], "active");
    assert_eq!(report.non2xx + report.errors, 0, "{:?}", report.samples);
    let logs = s.ok(&["logs", d3["id"].as_str().unwrap()]);
    assert!(logs.contains("canary: 50% of traffic"), "{logs}");
    assert_eq!(s.get_host(&h, "/").unwrap().1, "c3");
}

/// "No data" is not a pass (issue 16): a canary nobody calls extends its
/// window 3 times and fails with "saw 0 requests", the previous version
/// serving; with `on_low_traffic = "promote"` it completes on health alone
/// and says so. `berth inspect` lists every judged window.
#[test]
fn a_canary_without_traffic_is_not_promoted_silently() {
    let project = unique("e2ez");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("q1");
    let toml = |rule: &str| {
        format!(
            "[services.web.canary]\nstages = [50, 100]\nobservation_window = \"1s\"\non_low_traffic = \"{rule}\"\n"
        )
    };
    std::fs::write(repo.dir.path().join("berth.toml"), toml("extend")).unwrap();
    repo.commit_app("q1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);

    repo.commit_app("q2", DOCKERFILE, "v2 nobody calls");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(!ok, "{d2}");
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(
        msg.contains("canary at 50% saw 0 requests in 4 windows, fewer than min_requests = 100"),
        "{msg}"
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "q1", "v1 still serves");
    let inspect = s.ok(&["inspect", d2["id"].as_str().unwrap()]);
    assert!(inspect.contains("Canary decisions"), "{inspect}");
    for window in 1..=3 {
        assert!(
            inspect.contains(&format!(
                "50% stage, window {window}: candidate 0 requests, 0 errors, p95 -;"
            )),
            "{inspect}"
        );
    }
    assert!(
        inspect.contains("window 4: candidate 0 requests")
            && inspect.contains("verdict: failed: saw 0 requests"),
        "{inspect}"
    );

    std::fs::write(repo.dir.path().join("berth.toml"), toml("promote")).unwrap();
    repo.commit_app("q3", DOCKERFILE, "v3 promoted on health");
    let (ok, d3) = deploy_wait(&s, &project);
    assert!(ok, "{d3}");
    // the rollout is over: the weight is cleared
    assert_eq!(d3["canaryWeight"], serde_json::Value::Null);
    assert_eq!(d3["promotionStage"], "active");
    let logs = s.ok(&["logs", d3["id"].as_str().unwrap()]);
    assert!(
        logs.contains("canary: 50% stage promoted on health alone: it saw 0 request(s)"),
        "{logs}"
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "q3");
}

/// (service.version, berth.deployment.id) of every span received.
type Spans = Arc<Mutex<Vec<(String, String)>>>;

/// A small OTLP/HTTP receiver on 127.0.0.1: every POST body decoded with
/// the `opentelemetry-proto` definitions; per span, its resource's
/// `service.version` and `berth.deployment.id`.
fn otlp_receiver() -> (u16, Spans) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use prost::Message as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Spans = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let body = loop {
                let n = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let Some(body) = body else { continue };
            let export = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for rs in export.resource_spans {
                let attrs = rs.resource.unwrap_or_default().attributes;
                let text = |k: &str| {
                    attrs
                        .iter()
                        .find(|a| a.key == k)
                        .and_then(|a| a.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            V::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default()
                };
                let (sha, id) = (text("service.version"), text("berth.deployment.id"));
                for ss in rs.scope_spans {
                    for _ in ss.spans {
                        g.lock().unwrap().push((sha.clone(), id.clone()));
                    }
                }
            }
        }
    });
    (port, got)
}

/// Sticky visitors (issue 16): during a 25 % stage, 2000 fresh visitors
/// see v2 25 % ± 3 points and each gets the cookie of the version it saw;
/// one visitor that keeps its cookies sees one version for all 50 of its
/// requests; the pin value from the API forces v2 (header or cookie); a
/// bare deployment id does not; after the rollout the cookie is ignored.
/// The server runs with `--access-log` and `--otlp-endpoint --trace-sample
/// 1` (issue 17): during the canary both versions' SHAs appear in the
/// exported spans and both deployment ids in the access log.
#[test]
fn canary_visitors_stay_on_the_version_they_first_got() {
    let project = unique("e2es");
    let _c = Cleanup(project.clone());
    let (otlp_port, spans) = otlp_receiver();
    let logs_dir = tempfile::tempdir().unwrap();
    let access_log = logs_dir.path().join("access.log");
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    let s = Server::start_with(&[
        "--access-log",
        access_log.to_str().unwrap(),
        "--otlp-endpoint",
        &otlp,
        "--trace-sample",
        "1",
    ]);
    let repo = AppRepo::new("s1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web.canary]\nstages = [25, 100]\nobservation_window = \"60s\"\nmin_requests = 20\n",
    )
    .unwrap();
    repo.commit_app("s1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);

    repo.commit_app("s2", DOCKERFILE, "v2");
    let d2 = s.json(&["deploy", "--project", &project, "--json"]);
    let d2_id = d2["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let d = s.json(&["inspect", &d2_id, "--json"]);
        if d["promotionStage"] == "canary" && d["canaryWeight"] == 25 {
            break;
        }
        assert!(d["status"] != "failed", "{d}");
        assert!(
            std::time::Instant::now() < deadline,
            "never reached 25 %: {d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/", s.http_port);
    let get = |headers: &[(&str, &str)]| {
        let mut r = client.get(&url).header("host", &h);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        (r.text().unwrap().trim().to_string(), cookie)
    };

    // 2000 fresh visitors (no cookie sent)
    let mut v2 = 0;
    let mut cookies = std::collections::HashMap::<String, String>::new();
    for _ in 0..2000 {
        let (body, cookie) = get(&[]);
        let cookie = cookie.expect("a fresh visitor of a canary gets a cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        if let Some(before) = cookies.insert(pair, body.clone()) {
            assert_eq!(before, body, "one cookie value, one version");
        }
        v2 += usize::from(body == "s2");
    }
    let share = v2 as f64 / 2000.0 * 100.0;
    assert!(
        (22.0..=28.0).contains(&share),
        "v2 saw {share:.1} % of new visitors"
    );

    // every one of them was exported as a span carrying the SHA and the
    // deployment that answered it, and logged
    let (sha1, sha2) = (
        d1["commit"]["sha"].as_str().unwrap().to_string(),
        d2["commit"]["sha"].as_str().unwrap_or_default().to_string(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (by_v1, by_v2) = loop {
        let got = spans.lock().unwrap().clone();
        let by = |id: &str| {
            got.iter()
                .filter(|(_, d)| d == id)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (a, b) = (by(d1["id"].as_str().unwrap()), by(&d2_id));
        if a.len() + b.len() >= 2000 || std::time::Instant::now() > deadline {
            break (a, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(by_v2.len() >= v2, "spans of v2: {} < {v2}", by_v2.len());
    assert!(by_v1.len() >= 2000 - v2, "spans of v1: {}", by_v1.len());
    assert!(
        by_v1.iter().all(|(sha, _)| *sha == sha1),
        "v1 spans carry v1's SHA"
    );
    let v2_shas: std::collections::BTreeSet<_> = by_v2.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(v2_shas.len(), 1, "{v2_shas:?}");
    assert_ne!(
        v2_shas.iter().next().unwrap(),
        &sha1,
        "v2 spans carry v2's SHA"
    );
    if !sha2.is_empty() {
        assert!(v2_shas.contains(&sha2), "{v2_shas:?} vs {sha2}");
    }
    let log = std::fs::read_to_string(&access_log).unwrap();
    let ids: std::collections::BTreeSet<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["host"] == h.as_str() && v["path"] == "/")
        .filter_map(|v| v["deploymentId"].as_str().map(str::to_string))
        .collect();
    assert!(
        ids.contains(d1["id"].as_str().unwrap()) && ids.contains(&d2_id),
        "access log ids {ids:?}"
    );

    // one visitor keeping its cookies: one version for 50 requests
    let (first, cookie) = get(&[]);
    let pair = cookie.unwrap().split(';').next().unwrap().to_string();
    for _ in 0..50 {
        let (body, again) = get(&[("cookie", &pair)]);
        assert_eq!(body, first, "a cookie-keeping visitor switched versions");
        assert!(again.is_none(), "a kept visitor is not given a new cookie");
    }

    // the pin value from the API forces v2; a bare id does not
    let pin: serde_json::Value = client
        .get(format!("{}/api/v1/deployments/{d2_id}/pin", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let value = pin["value"].as_str().unwrap();
    assert_eq!(pin["header"], "x-berth-deployment");
    for _ in 0..20 {
        assert_eq!(get(&[("x-berth-deployment", value)]).0, "s2");
        assert_eq!(
            get(&[("cookie", &format!("berth_rollout={value}"))]).0,
            "s2"
        );
    }
    let bare: usize = (0..40)
        .map(|_| usize::from(get(&[("x-berth-deployment", &d2_id)]).0 == "s2"))
        .sum();
    assert!(bare < 25, "a bare id forced v2 {bare} times of 40");

    // the rollout completes; then the cookie is ignored and not set
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let d2 = loop {
        let d = s.json(&["inspect", &d2_id, "--json"]);
        if d["status"] == "succeeded" || d["status"] == "failed" {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout never ended: {d}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(d2["status"], "succeeded", "{d2}");
    let v1_pin = cookies
        .iter()
        .find(|(_, b)| b.as_str() == "s1")
        .map(|(c, _)| c.clone())
        .unwrap();
    for _ in 0..10 {
        let (body, cookie) = get(&[("cookie", &v1_pin)]);
        assert_eq!(body, "s2");
        assert!(cookie.is_none());
    }
}

//! End-to-end tests on a real Docker Engine: build, run, route, cut over
//! under load, fail safely, roll back, survive kill -9.

mod bake;
mod build_secrets;
mod canary;
mod cluster;
mod console;
mod domains;
mod jobs;
mod logs;
mod maintenance;
mod microvm;
mod notify;
mod openapi;
mod replicas;
mod runs;
mod ssh;
mod swarm;
mod takeover;
mod telemetry;
mod tls;
mod tls_dns01;
mod triggers;
mod volumes;

use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

pub(crate) fn unique(prefix: &str) -> String {
    let n: u32 = rand_u32();
    format!("{prefix}{:05x}", n & 0xfffff)
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    t ^ std::process::id().rotate_left(16)
}

pub(crate) struct Cleanup(pub String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_project_containers(&self.0);
        remove_project_images(&self.0);
    }
}

pub(crate) fn host(project: &str) -> String {
    format!("{project}.{BASE}")
}

pub(crate) fn deploy_wait(s: &Server, project: &str) -> (bool, Value) {
    let o = s.cli(&["deploy", "--project", project, "--wait", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "deploy --json printed no JSON ({e}): {}\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            s.log()
        )
    });
    (o.status.success(), v)
}

pub(crate) fn step<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {d}"))
}

pub(crate) fn wait_body(s: &Server, host: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = s.get_host(host, "/") {
            if body.contains(want) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{host} never served {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn deploy_busybox_app_records_commit_steps_image_and_serves_it() {
    let project = unique("e2ea");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("hello v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["promotionStage"], "active");
    assert_eq!(d["health"], "healthy");
    assert_eq!(d["isActive"], true);
    assert_eq!(d["commit"]["sha"], repo.head());
    assert_eq!(d["commit"]["branch"], "main");
    assert_eq!(d["commit"]["message"], "first version");
    assert!(d["commit"]["author"]
        .as_str()
        .unwrap()
        .contains("Ada Tester"));
    for name in ["clone", "analyze", "build"] {
        let st = step(&d, name);
        assert_eq!(st["status"], "succeeded", "{name}: {st}");
        assert!(st["durationMs"].is_i64(), "{name}: {st}");
        assert!(!st["log"].as_str().unwrap().is_empty(), "{name} has a log");
    }
    assert_eq!(step(&d, "push")["status"], "skipped");
    assert!(d["image"]["ref"]
        .as_str()
        .unwrap()
        .starts_with(&format!("berth/{project}-web:")));
    assert_eq!(
        d["routeUrl"],
        format!("http://{project}.{BASE}:{}/", s.http_port)
    );
    let (status, body) = s.get_host(&host(&project), "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello v1"));
    // The preview hostname serves exactly this deployment.
    let preview = d["previewUrl"].as_str().unwrap();
    let preview_host = preview
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    assert_eq!(s.get_host(preview_host, "/").unwrap().1, "hello v1");
    // Unknown hosts never reach an app.
    assert_eq!(s.get_host("other.berth.test", "/").unwrap().0, 404);

    // The same commit again: no build.
    let (ok, again) = deploy_wait(&s, &project);
    assert!(ok, "{again}");
    let build = step(&again, "build");
    assert!(
        build["log"].as_str().unwrap().contains("cache hit"),
        "{build}"
    );
    assert_eq!(again["image"]["ref"], d["image"]["ref"]);

    // The old one was superseded; exactly one is active.
    let all = s.deployments(&project);
    assert_eq!(all[0]["id"], again["id"]);
    assert_eq!(all.iter().filter(|x| x["isActive"] == true).count(), 1);
    assert_eq!(all[1]["promotionStage"], "superseded");

    // The build output manifest (path, size, sha256) is recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let manifest = loop {
        let r = s
            .client()
            .get(format!(
                "{}/api/v1/deployments/{}/manifest",
                s.api(),
                d["id"].as_str().unwrap()
            ))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        if r.status() == 200 {
            break r.json::<Value>().unwrap();
        }
        assert!(Instant::now() < deadline, "no manifest recorded");
        std::thread::sleep(Duration::from_millis(200));
    };
    let index = manifest
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with("www/index.html"))
        .unwrap_or_else(|| panic!("index.html in {manifest}"));
    assert_eq!(index["size"], 8);
    assert_eq!(index["sha256"].as_str().unwrap().len(), 64);

    // Metrics: token required; edge and pipeline figures present.
    let r = s
        .client()
        .get(format!("{}/metrics", s.api()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let m = s
        .client()
        .get(format!("{}/metrics", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains(&format!(
            "berth_pipelines_total{{project=\"{project}\",status=\"succeeded\"}} 2"
        )),
        "{m}"
    );
    assert!(
        m.contains(again["id"].as_str().unwrap()),
        "edge metrics name the deployment: {m}"
    );

    // inspect and logs work on it.
    let inspected = s.json(&["inspect", again["id"].as_str().unwrap(), "--json"]);
    assert_eq!(inspected["id"], again["id"]);
    let logs = s.ok(&["logs", d["id"].as_str().unwrap()]);
    assert!(logs.contains("stage: building"), "{logs}");
    assert!(logs.contains("stage: active"), "{logs}");
}

#[test]
fn a_broken_build_fails_naming_the_step_and_the_app_keeps_serving() {
    let project = unique("e2eb");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("stable");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, good) = deploy_wait(&s, &project);
    assert!(ok, "{good}");
    let broken = DOCKERFILE.replace("COPY www /www", "COPY missing-dir /www");
    repo.commit_app("broken", &broken, "break the build");
    let (ok, bad) = deploy_wait(&s, &project);
    assert!(!ok, "a broken build must exit non-zero");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["image"], Value::Null);
    let msg = bad["failureMessage"].as_str().unwrap();
    assert!(msg.starts_with("build:"), "{msg}");
    assert!(
        msg.contains("missing-dir"),
        "Docker's error is named: {msg}"
    );
    assert_eq!(
        s.get_host(&host(&project), "/").unwrap(),
        (200, "stable".into())
    );
    let all = s.deployments(&project);
    let active: Vec<_> = all.iter().filter(|d| d["isActive"] == true).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id"], good["id"]);
}

#[test]
fn a_candidate_that_never_gets_healthy_fails_and_the_previous_serves_every_request() {
    let project = unique("e2ec");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("v1");
    // A short readiness deadline so the test is quick.
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\n[services.web.readiness]\ndeadline = \"4s\"\n",
    )
    .unwrap();
    repo.commit_app("v1", DOCKERFILE, "v1 with readiness");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let wrong_port = DOCKERFILE.replace("\"-p\", \"3000\"", "\"-p\", \"3999\"");
    repo.commit_app("v2 wrong port", &wrong_port, "listen on the wrong port");
    let load = Load::start(
        s.http_port,
        &host(&project),
        4,
        50_000,
        Duration::from_secs(60),
    );
    let (ok, d2) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(!ok);
    assert_eq!(d2["status"], "failed");
    assert_eq!(d2["promotionStage"], "checking_readiness");
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(msg.starts_with("health_check:"), "{msg}");
    assert!(
        msg.contains("GET / -> connection refused") || msg.contains("GET / ->"),
        "{msg}"
    );
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "samples: {:?}",
        report.samples
    );
    assert!(report.ok > 0);
    assert_eq!(s.get_host(&host(&project), "/").unwrap().1, "v1");
    // Its container was removed.
    let d2_full = s.json(&["inspect", d2["id"].as_str().unwrap(), "--json"]);
    assert_eq!(d2_full["runtime"], Value::Null);
}

#[test]
fn cutovers_and_rollback_under_load_drop_no_request() {
    let project = unique("e2ed");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);
    let load = Load::start(s.http_port, &h, 4, 200_000, Duration::from_secs(120));

    // A request in flight at the switch completes on the version that
    // took it. It is held in v1's container until the route serves v2,
    // so it is provably in flight across the cutover, then released while
    // v1 drains.
    let d1 = s.json(&["inspect", d1["id"].as_str().unwrap(), "--json"]);
    let c1 = d1["runtime"]["instanceId"]
        .as_str()
        .unwrap_or_else(|| panic!("no runtime.instanceId: {d1}"))
        .to_string();
    let held = hold_request(s.http_port, &h, &c1);
    let in_c1 = |cmd: &str| docker(&["exec", &c1, "/bin/sh", "-c", cmd]);
    repo.commit_app("v2", DOCKERFILE, "v2");
    let d2 = s.json(&["deploy", "--project", &project, "--json"]);
    let id2 = d2["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, body)) = s.get_host(&h, "/") {
            if body.contains("v2") {
                break;
            }
        }
        let cur = s.json(&["inspect", &id2, "--json"]);
        if !cur["completedAt"].is_null() {
            // The switch and the end of the deployment can both fall
            // between the GET above and this inspect (with a bake window
            // nothing waits for v1's drain): once v2 has ended, the edge
            // must serve it.
            let served = s.get_host(&h, "/");
            assert!(
                matches!(&served, Ok((200, body)) if body.contains("v2")),
                "v2 ended but the edge does not serve it: {served:?}\n{cur}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "v2 never served: {cur}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !held.is_finished(),
        "the held request ended before the switch: nothing was in flight across it"
    );
    in_c1("touch /tmp/held-release");
    let (st, body) = held.join().unwrap().expect("held request");
    assert_eq!((st, body.trim()), (200, "held-done v1"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let d2 = loop {
        let cur = s.json(&["inspect", &id2, "--json"]);
        if !cur["completedAt"].is_null() {
            break cur;
        }
        assert!(Instant::now() < deadline, "v2 never ended: {cur}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(d2["status"], "succeeded", "{d2}");

    let c2 = d2["runtime"]["instanceId"].as_str().unwrap().to_string();
    let started = |c: &str| docker(&["inspect", "-f", "{{.State.StartedAt}}", c]);
    let c2_started = started(&c2);

    repo.commit_app("v3", DOCKERFILE, "v3");
    let (ok, d3) = deploy_wait(&s, &project);
    assert!(ok, "{d3}");
    wait_body(&s, &h, "v3");
    // v2 is warm: unrouted, still running, until its bakeUntil.
    let warm = s.json(&["inspect", &id2, "--json"]);
    assert_eq!(warm["promotionStage"], "superseded");
    assert!(warm["bakeUntil"].is_string(), "{warm}");

    let o = s.cli(&[
        "rollback",
        "--project",
        &project,
        "--service",
        "web",
        "--wait",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rb: Value = serde_json::from_slice(&o.stdout).unwrap();
    wait_body(&s, &h, "v2");
    let report = load.finish();

    assert_eq!(rb["trigger"], "rollback");
    assert_eq!(rb["status"], "succeeded");
    assert_eq!(rb["image"], d2["image"], "the rollback runs the same image");
    assert_eq!(step(&rb, "build")["status"], "skipped");
    // Inside the bake window the rollback is a route flip: v2's container,
    // same id, same start time.
    assert_eq!(rb["runtime"]["instanceId"], c2.as_str(), "{rb}");
    assert_eq!(started(&c2), c2_started, "v2's container was not restarted");
    let d3_after = s.json(&["inspect", d3["id"].as_str().unwrap(), "--json"]);
    assert_eq!(d3_after["promotionStage"], "rolled_back");
    let rate = report.ok as f64 / report.secs;
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "{} ok, {} non-2xx, {} errors; samples {:?}",
        report.ok,
        report.non2xx,
        report.errors,
        report.samples
    );
    assert!(report.ok > 500, "the load generator ran ({rate:.0} req/s)");
}

#[test]
fn kill_9_then_restart_serves_from_the_same_container_and_nothing_is_stuck() {
    let project = unique("e2ee");
    let _c = Cleanup(project.clone());
    let mut s = Server::start();
    let repo = AppRepo::new("survivor");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");
    let container =
        s.json(&["inspect", d["id"].as_str().unwrap(), "--json"])["runtime"]["instanceId"].clone();
    assert!(container.is_string());

    // Kill -9 in the middle of a second deployment's pipeline.
    let slow_build = DOCKERFILE.replace(
        "COPY www /www",
        "COPY www /www\nRUN [\"/bin/sleep\", \"8\"]",
    );
    repo.commit_app("next", &slow_build, "next");
    let pending = s.json(&["deploy", "--project", &project, "--json"]);
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    s.spawn();
    wait_body(&s, &host(&project), "survivor");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = s.deployments(&project);
        let stuck: Vec<_> = all
            .iter()
            .filter(|x| x["status"] == "queued" || x["status"] == "running")
            .collect();
        if stuck.is_empty() {
            let p = all.iter().find(|x| x["id"] == pending["id"]).unwrap();
            assert_eq!(p["status"], "failed");
            assert!(p["failureMessage"]
                .as_str()
                .unwrap()
                .contains("interrupted by restart"));
            break;
        }
        assert!(Instant::now() < deadline, "deployments stuck: {stuck:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = s.json(&["inspect", d["id"].as_str().unwrap(), "--json"]);
    assert_eq!(after["isActive"], true);
    assert_eq!(
        after["runtime"]["instanceId"], container,
        "the container was adopted, not restarted"
    );
}

/// Issue 16: kill -9 of berth while a cutover drains the previous
/// deployment (no bake window; a request held in v1's container keeps the
/// drain going). After the restart v2's `finalize` is done (or failed with
/// a reason), v1 records no runtime and says why in its log, and what
/// `inspect` says of both matches `docker ps`.
#[test]
fn kill_9_during_the_drain_finishes_the_cutover_after_restart() {
    let project = unique("e2eq");
    let _c = Cleanup(project.clone());
    let mut s = Server::start();
    let repo = AppRepo::new("v1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nbake = \"0\"\n",
    )
    .unwrap();
    repo.commit_app("v1", DOCKERFILE, "v1 without a bake window");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let id1 = d1["id"].as_str().unwrap().to_string();
    let h = host(&project);
    let c1 = s.json(&["inspect", &id1, "--json"])["runtime"]["instanceId"]
        .as_str()
        .expect("v1 has a container")
        .to_string();
    let _held = hold_request(s.http_port, &h, &c1);

    repo.commit_app("v2", DOCKERFILE, "v2");
    let d2 = s.json(&["deploy", "--project", &project, "--json"]);
    let id2 = d2["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cur = s.json(&["inspect", &id2, "--json"]);
        if cur["promotionStage"] == "draining_previous" {
            break;
        }
        assert!(
            cur["completedAt"].is_null(),
            "v2 ended before the drain was caught: {cur}"
        );
        assert!(Instant::now() < deadline, "v2 never drained v1: {cur}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The held request keeps v1 draining: kill -9 now.
    std::thread::sleep(Duration::from_millis(500));
    let during = s.json(&["inspect", &id2, "--json"]);
    assert_eq!(during["promotionStage"], "draining_previous", "{during}");
    assert_eq!(step(&during, "finalize")["status"], "pending");
    s.kill9();
    s.spawn();
    wait_body(&s, &h, "v2");

    let running = || {
        docker(&["ps", "-q", "--no-trunc"])
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (v1, v2) = loop {
        let v1 = s.json(&["inspect", &id1, "--json"]);
        let v2 = s.json(&["inspect", &id2, "--json"]);
        let finalize = step(&v2, "finalize")["status"].clone();
        let done = v2["status"] == "succeeded"
            && (finalize == "succeeded" || finalize == "failed")
            && v1["runtime"].is_null()
            && !running().contains(&c1);
        if done {
            break (v1, v2);
        }
        assert!(
            Instant::now() < deadline,
            "not settled after the restart:\nv1 {v1}\nv2 {v2}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v2["isActive"], true);
    assert_eq!(v2["promotionStage"], "active");
    let fin = step(&v2, "finalize");
    if fin["status"] == "failed" {
        assert!(!fin["log"].as_str().unwrap_or("").is_empty(), "{fin}");
    } else {
        assert!(
            fin["log"].as_str().unwrap().contains("retention"),
            "finalize ran retention: {fin}"
        );
    }
    assert_eq!(v1["promotionStage"], "superseded");
    assert!(
        v1["instances"].as_array().is_none_or(|a| a.is_empty()),
        "{v1}"
    );
    // inspect and docker ps agree: v2's container runs, v1's is gone.
    let c2 = v2["runtime"]["instanceId"].as_str().expect("v2 runtime");
    assert!(running().iter().any(|c| c == c2), "{c2} is not running");
    assert!(!running().contains(&c1));
    let logs = s.ok(&["logs", &id1]);
    assert!(
        logs.contains("left running by an interrupted drain"),
        "v1's log says why its container went: {logs}"
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "v2");
}

#[test]
fn a_node_app_without_dockerfile_is_detected_built_and_served() {
    if !image_exists("local/node:18") {
        missing_tool("the image local/node:18", "run scripts/make-node-image.sh");
        return;
    }
    let project = unique("e2en");
    let _c = Cleanup(project.clone());
    let s = Server::start_with(&["--node-image", "local/node:18"]);
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/node-npm");
    for f in ["package.json", "package-lock.json", "server.js"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "node app"]);
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        dir.path().to_str().unwrap(),
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}\n{}", s.log());
    assert_eq!(d["build"]["provider"], "node");
    assert_eq!(d["build"]["port"], 3000);
    assert!(step(&d, "analyze")["log"]
        .as_str()
        .unwrap()
        .contains("Dockerfile generated"));
    wait_body(&s, &host(&project), "hello from node-npm");
}

#[test]
fn cancel_stops_a_running_build_and_ends_cancelled() {
    let project = unique("e2ek");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("never");
    let slow = DOCKERFILE.replace(
        "COPY www /www",
        "COPY www /www\nRUN [\"/bin/sleep\", \"47\"]",
    );
    repo.commit_app("never", &slow, "slow build");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let d = s.json(&["deploy", "--project", &project, "--json"]);
    let id = d["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cur = s.json(&["inspect", &id, "--json"]);
        if step(&cur, "build")["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "build never started: {cur}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let c = s.json(&["cancel", &id, "--json"]);
    assert_eq!(c["status"], "cancelled", "{c}");
    assert_eq!(step(&c, "build")["status"], "cancelled");
    assert_eq!(c["image"], Value::Null);
    // The build's container is gone soon after.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = docker(&["ps", "--no-trunc", "--format", "{{.Command}}"]);
        if !ps.contains("sleep 47") {
            break;
        }
        assert!(Instant::now() < deadline, "the build kept running");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Cancelling again is a clear conflict.
    let o = s.cli(&["cancel", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already ended"));
}

/// A GET of the app's `/cgi-bin/held` through the edge that the app holds
/// until `/tmp/held-release` exists in `container`; returns once the app
/// has it (`/tmp/held-started`), so the request is provably in flight.
fn hold_request(
    port: u16,
    host: &str,
    container: &str,
) -> std::thread::JoinHandle<reqwest::Result<(u16, String)>> {
    let h = host.to_owned();
    let held = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/cgi-bin/held"))
            .header("host", h)
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while docker(&[
        "exec",
        container,
        "/bin/sh",
        "-c",
        "test -e /tmp/held-started && echo yes || echo no",
    ])
    .trim()
        != "yes"
    {
        assert!(!held.is_finished(), "the held request ended early");
        assert!(
            Instant::now() < deadline,
            "the held request never reached v1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    held
}

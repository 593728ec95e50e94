//! `--runtime swarm` through the binary. The machine's engine is only
//! asked whether it is a swarm manager (read only); nothing joins a swarm.

use super::{deploy_wait, host, unique};
use crate::harness::*;
use berth_runtime::swarm::testnet::{self, TestSwarm};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The engine is not a swarm manager: the server does not start, and says
/// in one line how to make it one.
#[test]
fn swarm_runtime_on_an_engine_that_is_no_manager_refuses_to_start() {
    let info = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
    if info.trim() == "true" {
        eprintln!("SKIPPED: this engine is a swarm manager");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--token",
            "x",
            "--runtime",
            "swarm",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("--runtime swarm"))
        .unwrap_or_else(|| panic!("no --runtime swarm line: {err}"));
    assert!(line.contains("not a swarm manager"), "{line}");
    assert!(line.contains("docker swarm init"), "{line}");
}

/// On a two-node swarm the test makes: a deploy runs as a Swarm service
/// reached on its node's address, `berth nodes list` shows the nodes and
/// where the instance is, and `berth nodes drain` of that node under load
/// moves it to the other node with no failed request; `activate` puts the
/// node back.
#[test]
fn deploy_and_drain_on_a_two_node_swarm() {
    if testnet::skip_reason().is_some() {
        return;
    }
    let swarm = TestSwarm::up_with(false).expect("test swarm");
    let project = unique("e2esw");
    let docker_host = format!("unix://{}", swarm.manager_sock.display());
    let s = Server::start_with_env(
        &["--runtime", "swarm", "--registry", &swarm.registry],
        &[("DOCKER_HOST", docker_host.as_str())],
    );
    let repo = AppRepo::new("on the swarm");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}\n{}", s.log());
    assert_eq!(s.get_host(&host(&project), "/").unwrap().1, "on the swarm");

    let nodes = s.json(&["nodes", "list", "--json"]);
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for key in [
        "id",
        "hostname",
        "address",
        "role",
        "status",
        "availability",
        "instances",
    ] {
        assert!(nodes[0].get(key).is_some(), "{key} missing: {}", nodes[0]);
    }
    let busy: Vec<&Value> = nodes.iter().filter(|n| n["instances"] == 1).collect();
    assert_eq!(busy.len(), 1, "one node runs the instance: {nodes:?}");
    let (from, other) = (busy[0], nodes.iter().find(|n| n["instances"] == 0).unwrap());
    let address = d["runtime"]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let full = s.json(&["inspect", d["id"].as_str().unwrap(), "--json"]);
    let address = full["runtime"]["address"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or(address);
    assert!(
        address.starts_with(from["address"].as_str().unwrap()),
        "instance at {address} on {from}"
    );

    let load = Load::start(
        s.http_port,
        &host(&project),
        4,
        200_000,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(500));
    let drained = s.json(&[
        "nodes",
        "drain",
        from["hostname"].as_str().unwrap(),
        "--json",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.finish();
    assert_eq!(drained["node"]["availability"], "drain", "{drained}");
    assert_eq!(
        drained["moved"].as_array().map(Vec::len),
        Some(1),
        "{drained}"
    );
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "failed requests during the drain: {:?}",
        report.samples
    );
    assert!(report.ok > 0);
    let after = s.json(&["inspect", d["id"].as_str().unwrap(), "--json"]);
    let moved_to = after["runtime"]["address"].as_str().unwrap_or_default();
    assert!(
        moved_to.starts_with(other["address"].as_str().unwrap()),
        "moved to {moved_to}, want {other}"
    );
    assert_eq!(s.get_host(&host(&project), "/").unwrap().1, "on the swarm");

    let active = s.json(&["nodes", "activate", from["id"].as_str().unwrap(), "--json"]);
    assert_eq!(active["availability"], "active", "{active}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let nodes = s.json(&["nodes", "list", "--json"]);
        if nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["availability"] == "active")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the node did not become active again");
}

/// Answers the task container's hostname: which replica served.
const WHO_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
hostname
";

fn nodes_of(d: &Value) -> Vec<String> {
    let mut n: Vec<String> = d["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i["node"].as_str().unwrap_or("?").to_owned())
        .collect();
    n.sort();
    n
}

/// `replicas = 2` on the two-node swarm, images pushed to a registry that
/// asks for credentials (`--registry-user/--registry-password`): one
/// instance per node, the edge answers from both; `nodes drain` of the
/// worker under load fails no request and ends with both on the manager;
/// after `nodes activate` the next deploy spreads them again; then the
/// worker's dockerd dies under load: its instance leaves the rotation at the
/// first failed probe, Swarm reschedules it on the manager, and the edge
/// keeps serving (the failed requests are counted and printed).
#[test]
fn replicas_spread_drain_and_a_dying_node_on_a_two_node_swarm() {
    if testnet::skip_reason().is_some() {
        return;
    }
    let swarm = TestSwarm::up_with(true).expect("test swarm");
    let project = unique("e2eswr");
    let docker_host = format!("unix://{}", swarm.manager_sock.display());
    let s = Server::start_with_env(
        &[
            "--runtime",
            "swarm",
            "--registry",
            &swarm.registry,
            "--registry-user",
            &swarm.registry_auth.username,
            "--registry-password",
            &swarm.registry_auth.password,
        ],
        &[("DOCKER_HOST", docker_host.as_str())],
    );
    let repo = AppRepo::new("r1");
    let p = repo.dir.path();
    std::fs::write(
        p.join("berth.toml"),
        // No bake window: the worker dies right after a cutover below, and
        // this test is about replacing its instance, not about the automatic
        // rollback that the errors would otherwise trigger.
        "[services.web]\nreplicas = 2\nbake = \"0\"\n\n[services.web.readiness]\ninterval = \"1s\"\n",
    )
    .unwrap();
    std::fs::write(p.join("www/cgi-bin/who"), WHO_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            p.join("www/cgi-bin/who"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    repo.commit_app("r1", DOCKERFILE, "two replicas");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}\n{}", s.log());
    let push = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "push")
        .cloned()
        .unwrap();
    assert_eq!(
        push["status"], "succeeded",
        "pushed with credentials: {push}"
    );
    assert_eq!(d["replicas"], 2);
    assert_eq!(
        nodes_of(&d),
        ["berth-sw-manager", "berth-sw-worker"],
        "one instance per node: {d}"
    );
    let h = host(&project);
    let who = |n: usize| -> std::collections::BTreeSet<String> {
        (0..n)
            .filter_map(|_| s.get_host(&h, "/cgi-bin/who").ok())
            .filter(|(st, _)| *st == 200)
            .map(|(_, b)| b.trim().to_owned())
            .collect()
    };
    assert_eq!(who(20).len(), 2, "the edge answers from both replicas");

    // Drain the worker under load.
    let load = Load::start(s.http_port, &h, 4, 200_000, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let drained = s.json(&["nodes", "drain", "berth-sw-worker", "--json"]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.finish();
    assert_eq!(drained["node"]["availability"], "drain", "{drained}");
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "failed requests during the drain: {:?}",
        report.samples
    );
    assert!(report.ok > 0);
    let id = d["id"].as_str().unwrap().to_owned();
    let after = s.json(&["inspect", &id, "--json"]);
    assert_eq!(
        nodes_of(&after),
        ["berth-sw-manager", "berth-sw-manager"],
        "both on the manager: {after}"
    );
    assert_eq!(who(20).len(), 2);

    // Activate; the next deploy spreads them again.
    s.ok(&["nodes", "activate", "berth-sw-worker"]);
    repo.commit_app("r2", DOCKERFILE, "r2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}\n{}", s.log());
    assert_eq!(
        nodes_of(&d2),
        ["berth-sw-manager", "berth-sw-worker"],
        "spread again: {d2}"
    );

    // The worker dies under load.
    let id2 = d2["id"].as_str().unwrap().to_owned();
    let load = Load::start(s.http_port, &h, 4, 400_000, Duration::from_secs(150));
    std::thread::sleep(Duration::from_millis(500));
    swarm.stop_worker().expect("stop the worker's dockerd");
    let died = Instant::now();
    let mut out_of_rotation = None;
    let moved = loop {
        let cur = s.json(&["inspect", &id2, "--json"]);
        let inst = cur["instances"].as_array().cloned().unwrap_or_default();
        if out_of_rotation.is_none() && inst.iter().any(|i| i["health"] == "unhealthy") {
            out_of_rotation = Some(died.elapsed());
        }
        if nodes_of(&cur) == ["berth-sw-manager", "berth-sw-manager"]
            && inst.iter().all(|i| i["health"] == "healthy")
        {
            break cur;
        }
        assert!(
            died.elapsed() < Duration::from_secs(120),
            "the worker's instance was not rescheduled: {cur}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let rescheduled = died.elapsed();
    let failed_before = load.non2xx.load(std::sync::atomic::Ordering::Relaxed)
        + load.errors.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let report = load.finish();
    let failed = report.non2xx + report.errors;
    eprintln!(
        "worker dockerd stopped under load: out of rotation after {out_of_rotation:?}, \
         rescheduled and healthy after {:.1}s; {failed} of {} requests failed; samples {:?}",
        rescheduled.as_secs_f64(),
        report.ok + failed,
        report.samples.iter().take(2).collect::<Vec<_>>()
    );
    assert_eq!(moved["health"], "healthy", "{moved}");
    assert_eq!(
        failed, failed_before,
        "requests failed after the reschedule"
    );
    assert!(
        failed * 10 < report.ok + failed,
        "more than 10 % of the requests failed: {failed} of {}",
        report.ok + failed
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "r2");
}

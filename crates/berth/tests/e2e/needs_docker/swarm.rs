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

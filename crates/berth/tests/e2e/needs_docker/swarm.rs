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
    // Out of the edge at the first failed probe (interval 1 s; a probe
    // waits at most its timeout), or at once when the edge's own dial is
    // refused.
    let out_of_rotation = out_of_rotation.expect("the dead node's instance was never unhealthy");
    assert!(
        out_of_rotation < Duration::from_secs(7),
        "out of rotation only after {out_of_rotation:?}"
    );
    // A refused connection is retried on the other replica: at most the
    // requests in flight on the dying node fail (4 load connections).
    assert!(
        failed <= 4,
        "more than the requests in flight failed: {failed} of {}; {:?}",
        report.ok + failed,
        report.samples
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "r2");
}

/// The berth services on the test swarm whose labels match `label`.
fn swarm_services(docker_host: &str, label: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "-H",
            docker_host,
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label={label}"),
        ])
        .output()
        .expect("docker service ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

const RUN_TOML: &str = "[services.web]\nport = 3000\n\n\
[jobs.tick]\nschedule = \"0 0 1 1 *\"\ncommand = \"echo tick $GREETING\"\n\n\
[jobs.slow]\nschedule = \"0 0 1 1 *\"\ncommand = \"sleep 60\"\ntimeout = \"5s\"\n";

/// `berth run` and jobs on the two-node swarm: a run is a one-off Swarm
/// service whose output comes live from its task's logs (stdout and stderr
/// apart), berth exits with the task's exit code, a stdin from a pipe is
/// refused in one line before anything runs, `--detach` and `berth logs`
/// work, a job runs and its timeout kills it; a run left going by a kill -9
/// of berth is marked failed by the next start and its service removed;
/// nothing of the runs is left on the swarm.
#[test]
fn runs_and_jobs_on_a_two_node_swarm() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    if testnet::skip_reason().is_some() {
        return;
    }
    let swarm = TestSwarm::up_with(false).expect("test swarm");
    let project = unique("e2eswrun");
    let docker_host = format!("unix://{}", swarm.manager_sock.display());
    let mut s = Server::start_with_env(
        &["--runtime", "swarm", "--registry", &swarm.registry],
        &[("DOCKER_HOST", docker_host.as_str())],
    );
    let repo = AppRepo::new("runs on the swarm");
    std::fs::write(repo.dir.path().join("berth.toml"), RUN_TOML).unwrap();
    repo.commit_app("runs on the swarm", DOCKERFILE, "with jobs");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&["env", "set", "--project", &project, "GREETING=bonjour"]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}\n{}", s.log());
    let run_label = format!("dev.berth.project={project}");
    let berth = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args)
            .env("BERTH_API", s.api())
            .env("BERTH_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };

    // Attached: the exit code, stdout and stderr apart, the variables.
    let o = s.cli(&[
        "run",
        "--project",
        &project,
        "--",
        "sh",
        "-c",
        "echo $GREETING; echo oops >&2; exit 3",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}\n{}", s.log());
    assert_eq!(out.trim(), "bonjour", "{out}");
    assert_eq!(err.trim(), "oops", "{err}");

    // Live: the first line is printed while the run still goes.
    let mut child = berth(&[
        "run",
        "--project",
        &project,
        "--",
        "sh",
        "-c",
        "echo first; sleep 4; echo second",
    ])
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    let at_first = Instant::now();
    assert_eq!(first, "first");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before its first line was printed"
    );
    assert_eq!(lines.next().expect("a second line").unwrap(), "second");
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        at_first.elapsed() >= Duration::from_secs(2),
        "the first line came at the end"
    );

    // A stdin from a pipe: refused in one line; no run recorded, nothing
    // created.
    let runs_of = |s: &Server| -> Value {
        s.client()
            .get(format!("{}/api/v1/projects/{project}/runs", s.api()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let runs_before = runs_of(&s);
    let mut child = berth(&["run", "--project", &project, "--", "cat"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--no-stdin"), "{err}");
    let runs_after = runs_of(&s);
    assert_eq!(runs_before, runs_after, "a refused run was recorded");
    // --no-stdin with the same pipe runs.
    let o = s.cli(&[
        "run",
        "--project",
        &project,
        "--no-stdin",
        "--",
        "echo",
        "no-stdin-ok",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no-stdin-ok");

    // --detach, then berth logs --follow until it ends.
    let o = s.ok(&[
        "run",
        "--project",
        &project,
        "--detach",
        "--",
        "sh",
        "-c",
        "sleep 1; echo detached-$GREETING",
    ]);
    let id = o.split_whitespace().nth(1).expect("an id").to_owned();
    let logs = s.ok(&["logs", &id, "--follow"]);
    assert!(logs.contains("detached-bonjour"), "{logs}");

    // Jobs: one runs now; the timeout kills another.
    let o = s.cli(&["jobs", "run", "--project", &project, "tick"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tick bonjour"), "{out}");
    let o = s.cli(&["jobs", "run", "--project", &project, "slow"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        swarm_services(&docker_host, "dev.berth.role=job").is_empty(),
        "job services left"
    );

    // A run left going by a kill -9: failed at the next start, its service
    // removed.
    let o = s.ok(&[
        "run",
        "--project",
        &project,
        "--detach",
        "--",
        "sleep",
        "120",
    ]);
    let id = o.split_whitespace().nth(1).expect("an id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while swarm_services(&docker_host, &format!("dev.berth.run={id}")).is_empty() {
        assert!(Instant::now() < deadline, "the run's service never came");
        std::thread::sleep(Duration::from_millis(200));
    }
    s.kill9();
    s.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Value = s
            .client()
            .get(format!("{}/api/v1/runs/{id}", s.api()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let gone = swarm_services(&docker_host, &format!("dev.berth.run={id}")).is_empty();
        if r["status"] == "failed" && gone {
            assert!(r["error"].as_str().unwrap_or("").contains("restart"), "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted run: {r}, service gone: {gone}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The deployment itself was adopted and still serves.
    assert_eq!(
        s.get_host(&host(&project), "/").unwrap().1,
        "runs on the swarm"
    );
    let left = swarm_services(&docker_host, "dev.berth.role=run");
    assert!(left.is_empty(), "run services left: {left:?}");
    // The restart fires the jobs' firing of this year it missed (less than
    // one period late): those runs end (the slow one by its timeout) and
    // their services go too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut services = swarm_services(&docker_host, &run_label);
    while services.len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        services = swarm_services(&docker_host, &run_label);
    }
    let described = std::process::Command::new("docker")
        .args(["-H", &docker_host, "service", "inspect", "--format"])
        .arg("{{.Spec.Name}} {{json .Spec.Labels}} {{json .Spec.Mode}}")
        .args(&services)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert_eq!(
        services.len(),
        1,
        "only the deployment's service is left: {described}\n{}",
        s.log()
    );
}

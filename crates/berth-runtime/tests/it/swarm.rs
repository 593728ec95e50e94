//! [`SwarmRuntime`] against a real two-node swarm made by the test itself
//! (`berth_runtime::swarm::testnet`: two dockerds in network namespaces, a
//! registry with basic auth). Every address dialled is inside namespaces
//! the test made; the swarm is torn down when `TestSwarm` drops, also on
//! failure. Without root or the tools it is skipped with a notice, and
//! fails when CI=true.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use berth_runtime::swarm::testnet::{self, TestSwarm};
use berth_runtime::swarm::{Availability, RegistryAuth};
use berth_runtime::testing;
use berth_runtime::{
    berth_labels, probe, shell_command, InstanceSpec, InstanceStatus, LogOptions, LogStream,
    RestartPolicy, Runtime, RuntimeError, SwarmConfig, SwarmRuntime, DEPLOYMENT_LABEL, OWNER_LABEL,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec(image: &str, command: &str) -> InstanceSpec {
    let suffix = testing::unique_suffix();
    let mut spec = InstanceSpec::new(berth_runtime::instance_name(&["sw"], &suffix), image);
    spec.labels = berth_labels("sw-test", "web", "test", &suffix);
    spec.command = Some(shell_command(command));
    spec
}

fn config(auth: Option<RegistryAuth>) -> SwarmConfig {
    SwarmConfig {
        registry_auth: auth,
        registry: None,
        start_timeout: Duration::from_secs(90),
        poll_interval: Duration::from_millis(200),
    }
}

/// `GET path` over HTTP/1.0; the body.
/// An IP endpoint as a socket address (swarm tasks are reached at node IPs).
fn sock(e: berth_runtime::Endpoint) -> SocketAddr {
    e.to_string().parse().expect("an ip endpoint")
}

async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "{addr}{path}: {}",
                text.lines().next().unwrap_or("")
            ));
        }
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{addr}{path}: timed out"))?
}

#[tokio::test]
async fn swarm_runtime_on_a_two_node_swarm() {
    if testnet::skip_reason().is_some() {
        return;
    }
    let swarm = tokio::task::spawn_blocking(TestSwarm::up)
        .await
        .expect("join")
        .expect("test swarm");
    eprintln!("test swarm up in {:?}", swarm.up_time);
    let image = swarm.push_test_image().await.expect("push test image");
    let manager = swarm.manager().await.expect("manager client");
    let rt = SwarmRuntime::new(manager.clone(), config(Some(swarm.registry_auth.clone())))
        .await
        .expect("the manager is a swarm manager");

    replicas_spread_serve_log_and_are_adopted(&swarm, &rt, &image).await;
    oneoff_runs_to_completion(&rt, &image).await;
    attached_run_streams_live_from_the_task_logs(&rt, &image).await;
    worker_without_credentials_fails_naming_the_node(&swarm).await;
    nodes_list_and_availability(&swarm, &rt).await;

    // The worker's engine is not a manager: one line saying what to do.
    let worker = swarm.worker().await.expect("worker client");
    let err = SwarmRuntime::new(worker, config(None))
        .await
        .expect_err("a worker is refused");
    let msg = err.to_string();
    assert!(msg.contains("worker, not a manager"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    // Nothing of berth is left on the swarm.
    assert!(rt.list_owned().await.expect("list").is_empty());
}

async fn replicas_spread_serve_log_and_are_adopted(
    swarm: &TestSwarm,
    rt: &SwarmRuntime,
    image: &str,
) {
    let mut spec = spec(
        image,
        "echo \"started $HOSTNAME\"; echo warn >&2; echo $HOSTNAME > /www/who; exec httpd -f -p 3000 -h /www",
    );
    spec.port = Some(3000);
    spec.restart = RestartPolicy::Always;
    let instances = rt
        .start_replicated(&spec, 2)
        .await
        .expect("start 2 replicas");
    assert_eq!(instances.len(), 2);
    let hosts: BTreeSet<_> = instances
        .iter()
        .map(|i| sock(i.endpoint.clone().expect("address")).ip())
        .collect();
    assert_eq!(
        hosts,
        BTreeSet::from([swarm.manager_addr, swarm.worker_addr]),
        "one replica on each node"
    );
    // Each instance answers over HTTP at its own endpoint, from its own task.
    let mut whos = BTreeSet::new();
    for inst in &instances {
        assert!(inst.running);
        assert_eq!(inst.labels[OWNER_LABEL], "true");
        let endpoint = inst.endpoint.clone().expect("address");
        let addr = sock(endpoint.clone());
        assert!(probe(&endpoint, "/", Duration::from_secs(2))
            .await
            .is_healthy());
        let who = get(addr, "/who").await.expect("GET /who");
        whos.insert(who.trim().to_owned());
        let state = rt.inspect(&inst.id).await.expect("inspect");
        assert_eq!(state.status, InstanceStatus::Running);
        assert_eq!(state.endpoint, Some(endpoint));
        assert_eq!(
            state.labels[DEPLOYMENT_LABEL],
            spec.labels[DEPLOYMENT_LABEL]
        );
    }
    assert_eq!(whos.len(), 2, "two distinct tasks answered: {whos:?}");

    // Logs per instance, with the stream, also from the worker's task.
    for inst in &instances {
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines = rt
                .logs(&inst.id, LogOptions::default())
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .expect("logs");
            if lines.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            lines
                .iter()
                .any(|c| c.stream == LogStream::Stdout && c.line.starts_with("started ")),
            "{lines:?}"
        );
        assert!(lines
            .iter()
            .any(|c| c.stream == LogStream::Stderr && c.line == "warn"));
    }

    // A new runtime (berth restarted) adopts them: same ids, same addresses.
    let manager = swarm.manager().await.expect("manager client");
    let again = SwarmRuntime::new(manager, config(Some(swarm.registry_auth.clone())))
        .await
        .expect("runtime again");
    let owned: Vec<_> = again
        .list_owned()
        .await
        .expect("list owned")
        .into_iter()
        .filter(|i| i.labels.get(DEPLOYMENT_LABEL) == spec.labels.get(DEPLOYMENT_LABEL))
        .collect();
    let mut want: Vec<_> = instances
        .iter()
        .map(|i| (i.id.clone(), i.endpoint.clone()))
        .collect();
    let mut got: Vec<_> = owned
        .iter()
        .map(|i| (i.id.clone(), i.endpoint.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(owned.iter().all(|i| i.running));

    // Remove one slot of two, then the rest: the service is gone.
    again.remove(&instances[0].id).await.expect("remove one");
    let left = again.list_owned().await.expect("list");
    assert_eq!(
        left.iter()
            .filter(|i| i.labels.get(DEPLOYMENT_LABEL) == spec.labels.get(DEPLOYMENT_LABEL))
            .count(),
        1
    );
    again.remove(&instances[1].id).await.expect("remove last");
    again
        .remove(&instances[1].id)
        .await
        .expect("remove is idempotent");
    assert!(matches!(
        again.inspect(&instances[1].id).await,
        Err(RuntimeError::NotFound(_))
    ));

    // One instance through the trait: stop keeps it inspectable, exited.
    let single = rt.start(&spec).await.expect("start one");
    let endpoint = single.endpoint.clone().expect("address");
    let addr = sock(endpoint.clone());
    assert!(probe(&endpoint, "/", Duration::from_secs(2))
        .await
        .is_healthy());
    rt.stop(&single.id, Duration::from_secs(2))
        .await
        .expect("stop");
    let state = rt.inspect(&single.id).await.expect("inspect stopped");
    assert!(
        matches!(state.status, InstanceStatus::Exited { .. }),
        "{state:?}"
    );
    assert_eq!(state.endpoint, None);
    assert!(
        get(addr, "/").await.is_err(),
        "stopped instance still answers"
    );
    rt.stop(&single.id, Duration::from_secs(2))
        .await
        .expect("stop is idempotent");
    rt.remove(&single.id).await.expect("remove");
}

async fn oneoff_runs_to_completion(rt: &SwarmRuntime, image: &str) {
    let spec = spec(image, "echo out-line; echo err-line >&2; exit 7");
    let outcome = rt
        .run_oneoff(&spec, Duration::from_secs(60))
        .await
        .expect("one-off");
    assert_eq!(outcome.exit_code, 7);
    let lines: Vec<_> = outcome.output.iter().map(|c| c.line.as_str()).collect();
    assert!(
        lines.contains(&"out-line") && lines.contains(&"err-line"),
        "{lines:?}"
    );

    let spec = self::spec(image, "sleep 30");
    let err = rt
        .run_oneoff(&spec, Duration::from_secs(3))
        .await
        .expect_err("times out");
    assert!(matches!(err, RuntimeError::OneOffTimeout { .. }), "{err}");
}

/// `run_attached` on Swarm: lines reach the output while the task still
/// runs (from its logs), stdout and stderr apart, the exit code is the
/// task's, the service is gone afterwards; a stdin is refused before
/// anything is created; the timeout kills and removes it.
async fn attached_run_streams_live_from_the_task_logs(rt: &SwarmRuntime, image: &str) {
    let spec = spec(
        image,
        "echo first; sleep 3; echo second; echo err-line >&2; exit 4",
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let io = berth_runtime::Attach {
        stdin: None,
        output: tx,
        tty: None,
    };
    let run = {
        let rt = rt.clone();
        let spec = spec.clone();
        tokio::spawn(async move { rt.run_attached(&spec, io, Duration::from_secs(90)).await })
    };
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a first line within 60 s")
        .expect("a line");
    assert_eq!(first.line, "first");
    assert_eq!(first.stream, LogStream::Stdout);
    assert!(
        !run.is_finished(),
        "the first line came only after the run ended"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = rx.recv().await {
        rest.push((chunk.stream, chunk.line));
    }
    let outcome = run.await.expect("join").expect("attached run");
    assert_eq!(outcome.exit_code, 4);
    assert!(
        rest.contains(&(LogStream::Stdout, "second".to_owned()))
            && rest.contains(&(LogStream::Stderr, "err-line".to_owned())),
        "{rest:?}"
    );
    assert_eq!(rest.len(), 2, "each line once: {rest:?}");
    let kept: Vec<&str> = outcome.output.iter().map(|c| c.line.as_str()).collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(
        outcome.duration >= Duration::from_secs(3),
        "{:?}",
        outcome.duration
    );
    let left: Vec<_> = rt
        .list_owned()
        .await
        .expect("list")
        .into_iter()
        .filter(|i| i.name.starts_with(&spec.name))
        .collect();
    assert!(left.is_empty(), "run service left: {left:?}");

    // A stdin: refused in one line, nothing created.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let (_stdin_tx, stdin) = tokio::sync::mpsc::channel(1);
    let spec = self::spec(image, "cat");
    let err = rt
        .run_attached(
            &spec,
            berth_runtime::Attach {
                stdin: Some(stdin),
                output: tx,
                tty: None,
            },
            Duration::from_secs(30),
        )
        .await
        .expect_err("stdin is refused");
    let msg = err.to_string();
    assert!(msg.contains("--no-stdin") && !msg.contains('\n'), "{msg}");
    assert!(rt
        .list_owned()
        .await
        .expect("list")
        .iter()
        .all(|i| !i.name.starts_with(&spec.name)));

    // The timeout: killed, removed, OneOffTimeout.
    let spec = self::spec(image, "echo going; sleep 60");
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let err = rt
        .run_attached(
            &spec,
            berth_runtime::Attach {
                stdin: None,
                output: tx,
                tty: None,
            },
            Duration::from_secs(15),
        )
        .await
        .expect_err("times out");
    assert!(matches!(err, RuntimeError::OneOffTimeout { .. }), "{err}");
    assert_eq!(rx.recv().await.map(|c| c.line).as_deref(), Some("going"));
    assert!(rt
        .list_owned()
        .await
        .expect("list")
        .iter()
        .all(|i| !i.name.starts_with(&spec.name)));
}

async fn worker_without_credentials_fails_naming_the_node(swarm: &TestSwarm) {
    // No credentials: the manager has the image locally (it built it), the
    // worker must pull it and the registry refuses.
    let image = swarm
        .push_fresh_image("never-pulled")
        .await
        .expect("push a fresh image");
    let manager = swarm.manager().await.expect("manager client");
    let rt = SwarmRuntime::new(manager, config(None))
        .await
        .expect("runtime");
    let mut spec = spec(&image, "exec httpd -f -p 3000 -h /www");
    spec.port = Some(3000);
    let err = rt
        .start_replicated(&spec, 2)
        .await
        .expect_err("the worker cannot pull");
    let msg = err.to_string();
    eprintln!("a worker that cannot pull: {msg}");
    assert!(msg.contains("berth-sw-worker"), "names the node: {msg}");
    assert!(
        msg.contains(&swarm.worker_addr.to_string()),
        "names its address: {msg}"
    );
    assert!(
        msg.contains("no basic auth credentials") || msg.contains("unauthorized"),
        "carries the registry's error: {msg}"
    );
    // The failed start left nothing behind.
    assert!(rt
        .list_owned()
        .await
        .expect("list")
        .iter()
        .all(|i| i.labels.get(DEPLOYMENT_LABEL) != spec.labels.get(DEPLOYMENT_LABEL)));
}

async fn nodes_list_and_availability(swarm: &TestSwarm, rt: &SwarmRuntime) {
    let nodes = rt.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 2);
    let manager = nodes.iter().find(|n| n.role == "manager").expect("manager");
    let worker = nodes.iter().find(|n| n.role == "worker").expect("worker");
    assert_eq!(manager.hostname, "berth-sw-manager");
    assert_eq!(manager.address, Some(swarm.manager_addr));
    assert!(manager.leader);
    assert_eq!(worker.address, Some(swarm.worker_addr));
    assert_eq!(worker.status, "ready");
    assert_eq!(worker.availability, Availability::Active);
    let found = rt.find_node("berth-sw-worker").await.expect("by hostname");
    assert_eq!(found.id, worker.id);
    let found = rt.find_node(&worker.id[..6]).await.expect("by id prefix");
    assert_eq!(found.id, worker.id);
    assert!(matches!(
        rt.find_node("no-such-node").await,
        Err(RuntimeError::NotFound(_))
    ));

    // A paused worker gets no new task: both replicas land on the manager.
    rt.set_availability(&worker.id, Availability::Pause)
        .await
        .expect("pause");
    let image = swarm.registry.clone() + "/berth-test/busybox-httpd:latest";
    let mut spec = spec(&image, "exec httpd -f -p 3000 -h /www");
    spec.port = Some(3000);
    let instances = rt.start_replicated(&spec, 2).await.expect("start");
    assert!(instances
        .iter()
        .all(|i| i.endpoint.clone().map(|a| sock(a).ip()) == Some(swarm.manager_addr)));
    assert_ne!(
        instances[0].endpoint, instances[1].endpoint,
        "two tasks on one node get distinct ports"
    );
    let counted = rt.nodes().await.expect("nodes");
    let on_manager = counted.iter().find(|n| n.role == "manager").expect("m");
    assert_eq!(on_manager.instances, 2);
    assert_eq!(
        counted
            .iter()
            .find(|n| n.role == "worker")
            .expect("w")
            .availability,
        Availability::Pause
    );
    rt.set_availability(&worker.id, Availability::Active)
        .await
        .expect("activate");
    let (service, _) = instances[0].id.rsplit_once('.').expect("slot id");
    rt.remove_service(service).await.expect("remove service");
}

//! [`DockerRuntime`] against the local engine, with the busybox test image.
//! Every container is labelled `dev.berth.test` and removed by a
//! [`Cleanup`] guard, also when an assertion fails.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_runtime::testing::{self, Cleanup, TEST_LABEL};
use berth_runtime::{
    berth_labels, instance_name, probe, shell_command, DockerRuntime, Images, InstanceSpec,
    InstanceStatus, Limits, LogOptions, LogStream, ProbeSchedule, RestartPolicy, Runtime,
    RuntimeError, VolumeMount, ONEOFF_MAX_LINES, OWNER_LABEL, PORT_LABEL,
};
use futures::StreamExt;

async fn runtime() -> (DockerRuntime, String) {
    let docker = testing::connect().await.expect("connect to docker");
    let image = testing::ensure_test_image(&docker)
        .await
        .expect("test image");
    (DockerRuntime::from_docker(docker), image)
}

fn spec(image: &str, command: &str) -> InstanceSpec {
    let suffix = testing::unique_suffix();
    let mut spec = InstanceSpec::new(instance_name(&["test"], &suffix), image);
    spec.labels = berth_labels("rt-test", "web", "test", &suffix);
    spec.labels
        .insert(TEST_LABEL.to_owned(), "berth-runtime".to_owned());
    spec.command = Some(shell_command(command));
    spec
}

/// Polls `inspect` until the instance is no longer running (bounded).
async fn wait_not_running(rt: &DockerRuntime, id: &str) -> berth_runtime::InstanceState {
    for _ in 0..100 {
        let state = rt.inspect(id).await.expect("inspect");
        if !matches!(
            state.status,
            InstanceStatus::Running | InstanceStatus::Restarting
        ) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("instance {id} still running after 10s");
}

#[tokio::test]
async fn web_instance_lifecycle() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut spec = spec(
        &image,
        "echo hello; echo oops >&2; echo \"GREETING=$GREETING\"; exec httpd -f -p 3000 -h /www",
    );
    spec.env = vec![("GREETING".into(), "bonjour le monde".into())];
    spec.port = Some(3000);
    spec.limits = Limits {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        pids: Some(64),
    };
    spec.restart = RestartPolicy::OnFailure { max_retries: 2 };
    cleanup.container(spec.name.clone());

    let instance = rt.start(&spec).await.expect("start");
    assert!(instance.running);
    assert_eq!(instance.name, spec.name);
    let addr = instance.endpoint.clone().expect("endpoint");
    assert_eq!(addr.host, "127.0.0.1");
    assert_ne!(addr.port, 3000);
    assert_eq!(instance.labels[OWNER_LABEL], "true");

    // What the engine actually holds.
    let raw = rt
        .docker()
        .inspect_container(
            &instance.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("raw inspect");
    let config = raw.config.expect("config");
    let labels = config.labels.expect("labels");
    assert_eq!(labels[OWNER_LABEL], "true");
    assert_eq!(labels[PORT_LABEL], "3000");
    assert_eq!(labels["dev.berth.project"], "rt-test");
    assert_eq!(labels["dev.berth.service"], "web");
    assert_eq!(labels["dev.berth.environment"], "test");
    assert!(labels.contains_key("dev.berth.deployment"));
    assert!(config
        .env
        .expect("env")
        .contains(&"GREETING=bonjour le monde".to_owned()));
    let host = raw.host_config.expect("host config");
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.init, Some(true));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host
        .cap_add
        .expect("cap_add")
        .contains(&"NET_BIND_SERVICE".to_owned()));
    assert_ne!(host.privileged, Some(true));
    assert!(host.binds.unwrap_or_default().is_empty());
    assert_eq!(
        host.log_config.expect("log config").typ.as_deref(),
        Some("json-file")
    );
    let ports = raw.network_settings.expect("network").ports.expect("ports");
    let bindings = ports["3000/tcp"].clone().expect("bindings");
    assert!(bindings
        .iter()
        .all(|b| b.host_ip.as_deref() == Some("127.0.0.1")));
    assert_eq!(
        bindings[0].host_port.as_deref(),
        Some(addr.port.to_string().as_str())
    );

    // Healthy over the published port, following the startup schedule.
    let schedule = ProbeSchedule::STARTUP;
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..100 {
        let result = probe(&addr, "/", Duration::from_secs(2)).await;
        if result.is_healthy() {
            last = Some(result);
            break;
        }
        last = Some(result);
        tokio::time::sleep(schedule.interval_at(started.elapsed())).await;
    }
    let last = last.expect("probed");
    assert!(last.is_healthy(), "{}", last.describe("/"));

    let state = rt.inspect(&instance.id).await.expect("inspect");
    assert!(state.is_running());
    assert_eq!(state.endpoint, Some(addr));
    assert!(state.started_at.is_some());
    assert_eq!(state.restart_count, 0);
    assert!(!state.oom_killed);

    // Logs: stdout and stderr lines, tagged and timestamped.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = rt
            .logs(&instance.id, LogOptions::default())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("logs");
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |text: &str| lines.iter().find(|c| c.line == text).cloned();
    let hello = find("hello").expect("hello line");
    assert_eq!(hello.stream, LogStream::Stdout);
    assert!(hello.ts <= chrono::Utc::now());
    assert_eq!(find("oops").expect("stderr line").stream, LogStream::Stderr);
    assert!(find("GREETING=bonjour le monde").is_some(), "{lines:?}");

    // A following stream ends when the instance stops; `since` after the
    // first lines filters them out.
    let since = hello.ts + chrono::Duration::seconds(3600);
    let follow = rt.logs(
        &instance.id,
        LogOptions {
            follow: true,
            since: Some(since),
            tail: None,
        },
    );
    let follower = tokio::spawn(follow.collect::<Vec<_>>());

    // SIGTERM reaches httpd through the init: exit 143 (128 + SIGTERM), not
    // 137 (SIGKILL after the grace period).
    rt.stop(&instance.id, Duration::from_secs(30))
        .await
        .expect("stop");
    let state = rt.inspect(&instance.id).await.expect("inspect stopped");
    assert_eq!(state.status, InstanceStatus::Exited { code: 143 });
    assert_eq!(state.endpoint, None);
    assert!(state.finished_at.is_some());
    let followed = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("follow stream ended")
        .expect("join");
    assert!(followed.is_empty(), "{followed:?}");

    // Idempotent teardown.
    rt.stop(&instance.id, Duration::from_secs(1))
        .await
        .expect("stop again");
    rt.remove(&instance.id).await.expect("remove");
    rt.remove(&instance.id).await.expect("remove again");
    assert!(matches!(
        rt.inspect(&instance.id).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        rt.stop(&instance.id, Duration::from_secs(1)).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn exited_instance_shows_its_code_and_is_listed() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut spec = spec(&image, "echo bye; exit 3");
    spec.port = Some(3000);
    cleanup.container(spec.name.clone());

    let instance = rt.start(&spec).await.expect("start");
    let state = wait_not_running(&rt, &instance.id).await;
    assert_eq!(state.status, InstanceStatus::Exited { code: 3 });
    assert_eq!(state.exit_code(), Some(3));
    assert_eq!(state.endpoint, None);

    let owned = rt.list_owned().await.expect("list");
    let listed = owned.iter().find(|i| i.id == instance.id).expect("listed");
    assert!(!listed.running);
    assert_eq!(listed.name, spec.name);
    assert_eq!(listed.labels["dev.berth.service"], "web");
    assert_eq!(listed.labels[TEST_LABEL], "berth-runtime");
    assert!(owned
        .iter()
        .all(|i| i.labels.get(OWNER_LABEL).map(String::as_str) == Some("true")));
    rt.remove(&instance.id).await.expect("remove");
    let owned = rt.list_owned().await.expect("list");
    assert!(owned.iter().all(|i| i.id != instance.id));
}

#[tokio::test]
async fn list_owned_reports_the_published_address() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut spec = spec(&image, "exec httpd -f -p 3000 -h /www");
    spec.port = Some(3000);
    cleanup.container(spec.name.clone());
    let instance = rt.start(&spec).await.expect("start");
    let owned = rt.list_owned().await.expect("list");
    let listed = owned.iter().find(|i| i.id == instance.id).expect("listed");
    assert!(listed.running);
    assert_eq!(listed.endpoint, instance.endpoint);
    assert_eq!(listed.image, image);
    rt.remove(&instance.id).await.expect("remove");
}

#[tokio::test]
async fn oneoff_returns_exit_code_and_output_and_is_removed() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let spec = spec(&image, "echo one; echo two >&2; exit 5");
    cleanup.container(spec.name.clone());
    let outcome = rt
        .run_oneoff(&spec, Duration::from_secs(60))
        .await
        .expect("run");
    assert_eq!(outcome.exit_code, 5);
    assert!(!outcome.success());
    let lines: Vec<_> = outcome
        .output
        .iter()
        .map(|c| (c.line.as_str(), c.stream))
        .collect();
    assert!(lines.contains(&("one", LogStream::Stdout)), "{lines:?}");
    assert!(lines.contains(&("two", LogStream::Stderr)), "{lines:?}");
    assert_eq!(outcome.dropped_lines, 0);
    assert!(matches!(
        rt.inspect(&spec.name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn oneoff_output_keeps_the_last_lines() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let spec = spec(&image, "seq 1 1500");
    cleanup.container(spec.name.clone());
    let outcome = rt
        .run_oneoff(&spec, Duration::from_secs(60))
        .await
        .expect("run");
    assert!(outcome.success());
    assert_eq!(outcome.output.len(), ONEOFF_MAX_LINES);
    assert_eq!(outcome.dropped_lines, 500);
    assert_eq!(outcome.output.first().map(|c| c.line.as_str()), Some("501"));
    assert_eq!(outcome.output.last().map(|c| c.line.as_str()), Some("1500"));
}

#[tokio::test]
async fn oneoff_timeout_kills_and_says_so() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let spec = spec(&image, "echo started; sleep 300");
    cleanup.container(spec.name.clone());
    let err = rt
        .run_oneoff(&spec, Duration::from_millis(1500))
        .await
        .expect_err("must time out");
    assert!(matches!(err, RuntimeError::OneOffTimeout { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("timed out after 1.5s and was killed"),
        "{err}"
    );
    assert!(matches!(
        rt.inspect(&spec.name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn refused_specs_and_missing_images_leave_nothing() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut bad = spec(&image, "true");
    bad.mounts.push(VolumeMount {
        volume: "/var/run/docker.sock".into(),
        target: "/var/run/docker.sock".into(),
        read_only: true,
    });
    cleanup.container(bad.name.clone());
    let err = rt.start(&bad).await.expect_err("socket mount refused");
    assert!(matches!(err, RuntimeError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("engine socket"), "{err}");
    assert!(matches!(
        rt.inspect(&bad.name).await,
        Err(RuntimeError::NotFound(_))
    ));

    let missing = spec("berth-test/does-not-exist:nope", "true");
    cleanup.container(missing.name.clone());
    let err = rt.start(&missing).await.expect_err("missing image");
    assert!(matches!(err, RuntimeError::ImageNotFound(_)), "{err}");
    assert!(matches!(
        rt.inspect(&missing.name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn remove_image_refuses_in_use_and_accepts_missing() {
    let (rt, _) = runtime().await;
    let mut cleanup = Cleanup::new();
    let suffix = testing::unique_suffix();
    let tag = format!("berth-test/remove-me:{suffix}");
    cleanup.image(tag.clone());
    let labels = BTreeMap::from([("dev.berth.test.unique".to_owned(), suffix.clone())]);
    testing::build_busybox_image(rt.docker(), &tag, &labels)
        .await
        .expect("build");
    let images = rt.images();
    assert!(images.exists(&tag).await.expect("exists"));

    let user = spec(&tag, "sleep 300");
    cleanup.container(user.name.clone());
    let instance = rt.start(&user).await.expect("start");
    let err = images.remove(&tag).await.expect_err("in use");
    assert!(matches!(err, RuntimeError::ImageInUse { .. }), "{err}");
    assert!(images.exists(&tag).await.expect("still exists"));

    rt.remove(&instance.id).await.expect("remove container");
    images.remove(&tag).await.expect("remove image");
    assert!(!images.exists(&tag).await.expect("gone"));
    images.remove(&tag).await.expect("missing is ok");
}

#[tokio::test]
async fn restart_policy_counts_restarts() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut spec = spec(&image, "echo crash; exit 1");
    spec.restart = RestartPolicy::OnFailure { max_retries: 2 };
    cleanup.container(spec.name.clone());
    let instance = rt.start(&spec).await.expect("start");
    // Exited for good once the two retries are used (bounded wait).
    let mut state = rt.inspect(&instance.id).await.expect("inspect");
    for _ in 0..100 {
        if state.restart_count == 2 && state.exit_code().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = rt.inspect(&instance.id).await.expect("inspect");
    }
    assert_eq!(state.restart_count, 2);
    assert_eq!(state.status, InstanceStatus::Exited { code: 1 });
    rt.remove(&instance.id).await.expect("remove");
}

/// An app killed by the kernel's OOM killer under its memory limit is
/// reported as such; one killed by SIGKILL otherwise is not. The engine
/// learns of an OOM from containerd's notice, which containerd drops when it
/// reads it only after the container's cgroup is gone (seen once in CI
/// under load): up to three runs, each on a fresh container.
#[tokio::test]
async fn memory_limit_overrun_is_reported_as_oom() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        // The shell holds 64 MB in a variable under a 16 MiB limit.
        let mut spec = spec(
            &image,
            "a=$(head -c 64000000 /dev/zero | tr '\\0' x); echo survived",
        );
        spec.limits.memory_bytes = Some(16 << 20);
        cleanup.container(spec.name.clone());
        let instance = rt.start(&spec).await.expect("start");
        let state = wait_not_running(&rt, &instance.id).await;
        rt.remove(&instance.id).await.expect("remove");
        assert_ne!(state.exit_code(), Some(0), "{state:?}");
        if state.oom_killed {
            break;
        }
        seen.push(state);
    }
    assert!(seen.len() < 3, "no run was reported oom killed: {seen:?}");

    // A SIGKILL under the same limit exits 137 too, and is no OOM.
    let mut spec = spec(&image, "kill -9 $$");
    spec.limits.memory_bytes = Some(16 << 20);
    cleanup.container(spec.name.clone());
    let instance = rt.start(&spec).await.expect("start");
    let state = wait_not_running(&rt, &instance.id).await;
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 137 },
        "{state:?}"
    );
    assert!(!state.oom_killed, "{state:?}");
    rt.remove(&instance.id).await.expect("remove");
}

#[tokio::test]
async fn attached_run_streams_output_live_and_forwards_stdin() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let spec = spec(
        &image,
        "echo first; read x; echo \"second:$x\"; echo oops >&2; cat; exit 7",
    );
    cleanup.container(spec.name.clone());
    let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel(4);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    let io = berth_runtime::Attach {
        stdin: Some(stdin_rx),
        output: out_tx,
        tty: None,
    };
    let run = {
        let rt = rt.clone();
        let spec = spec.clone();
        tokio::spawn(async move { rt.run_attached(&spec, io, Duration::from_secs(60)).await })
    };
    // "first" arrives while the process waits for its stdin: live.
    let first = tokio::time::timeout(Duration::from_secs(30), out_rx.recv())
        .await
        .expect("first line in time")
        .expect("a line");
    assert_eq!(
        (first.line.as_str(), first.stream),
        ("first", LogStream::Stdout)
    );
    assert!(!run.is_finished());
    stdin_tx
        .send(bytes::Bytes::from_static(b"hello\nrest 1\n"))
        .await
        .unwrap();
    stdin_tx
        .send(bytes::Bytes::from_static(b"rest 2\n"))
        .await
        .unwrap();
    // Closing our end is EOF for `cat`, so the process can exit.
    drop(stdin_tx);
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run ends")
        .unwrap()
        .expect("run");
    let mut lines = vec![first];
    while let Ok(l) = out_rx.try_recv() {
        lines.push(l);
    }
    let seen: Vec<_> = lines.iter().map(|c| (c.line.as_str(), c.stream)).collect();
    assert_eq!(outcome.exit_code, 7);
    assert!(!outcome.oom_killed);
    for want in [
        ("second:hello", LogStream::Stdout),
        ("oops", LogStream::Stderr),
        ("rest 1", LogStream::Stdout),
        ("rest 2", LogStream::Stdout),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    assert_eq!(outcome.output.len(), lines.len());
    assert!(matches!(
        rt.inspect(&spec.name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// Up to three runs, as in [`memory_limit_overrun_is_reported_as_oom`]:
/// the engine may never hear of an OOM.
#[tokio::test]
async fn attached_run_without_stdin_reports_oom() {
    let (rt, image) = runtime().await;
    let mut cleanup = Cleanup::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut spec = spec(
            &image,
            "echo before; a=$(head -c 64000000 /dev/zero | tr '\\0' x); echo survived",
        );
        spec.limits.memory_bytes = Some(16 << 20);
        cleanup.container(spec.name.clone());
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
        let io = berth_runtime::Attach {
            stdin: None,
            output: out_tx,
            tty: None,
        };
        let outcome = rt
            .run_attached(&spec, io, Duration::from_secs(60))
            .await
            .expect("run");
        assert_ne!(outcome.exit_code, 0);
        assert_eq!(out_rx.recv().await.map(|c| c.line), Some("before".into()));
        assert!(!outcome.output.iter().any(|c| c.line == "survived"));
        if outcome.oom_killed {
            break;
        }
        seen.push(outcome);
    }
    assert!(seen.len() < 3, "no run was reported oom killed: {seen:?}");
}

/// A volume's content goes out as a tar and back in through never-started
/// helper containers of the busybox image (`FROM scratch`), replacing what
/// was there; a volume in use is never replaced.
#[tokio::test]
async fn volume_export_and_replace_round_trip() {
    use berth_runtime::{DockerVolumes, Volumes};
    let (rt, image) = runtime().await;
    let volumes = DockerVolumes::from_docker(rt.docker().clone());
    let mut cleanup = Cleanup::new();
    let name = format!("berth-rt-test-{}", testing::unique_suffix());
    cleanup.volume(name.clone());
    let labels = BTreeMap::from([(TEST_LABEL.to_owned(), "berth-runtime".to_owned())]);
    let made = volumes.ensure(&name, &labels).await.expect("ensure");
    assert_eq!(made.labels[OWNER_LABEL], "true");
    assert_eq!(made.labels[TEST_LABEL], "berth-runtime");
    // Idempotent.
    volumes.ensure(&name, &labels).await.expect("ensure again");
    let listed = volumes.list(&labels).await.expect("list");
    assert!(listed.iter().any(|v| v.name == name), "{listed:?}");

    let run = |command: &str| {
        let mut s = spec(&image, command);
        s.mounts.push(VolumeMount {
            volume: name.clone(),
            target: "/data".into(),
            read_only: false,
        });
        s
    };
    let write =
        run("mkdir -p /data/sub && echo first > /data/a.txt && echo deep > /data/sub/b.txt");
    cleanup.container(write.name.clone());
    let out = rt
        .run_oneoff(&write, Duration::from_secs(60))
        .await
        .expect("write");
    assert!(out.success(), "{:?}", out.output);

    let mut tar = Vec::new();
    let n = volumes
        .export(&name, &image, &mut tar)
        .await
        .expect("export");
    assert_eq!(n, tar.len() as u64);
    let mut entries: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    entries.sort();
    assert!(
        entries.contains(&"berth-volume/a.txt".to_owned()),
        "{entries:?}"
    );
    assert!(
        entries.contains(&"berth-volume/sub/b.txt".to_owned()),
        "{entries:?}"
    );

    // Change the content, keeping a (stopped) container that mounts it.
    let mut change = run("rm /data/a.txt && echo second > /data/c.txt && sleep 300");
    change.restart = RestartPolicy::Never;
    cleanup.container(change.name.clone());
    let inst = rt.start(&change).await.expect("start");
    let users = volumes.users(&name).await.expect("users");
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0].name, change.name);
    assert!(users[0].running);
    let body = futures::stream::iter(vec![Ok(bytes::Bytes::from(tar.clone()))]).boxed();
    match volumes.replace(&name, &image, body).await {
        Err(RuntimeError::Conflict(m)) => assert!(m.contains(&change.name), "{m}"),
        other => panic!("replace of a volume in use: {other:?}"),
    }
    rt.stop(&inst.id, Duration::from_secs(1))
        .await
        .expect("stop");
    rt.remove(&inst.id).await.expect("remove");

    let body = futures::stream::iter(vec![Ok(bytes::Bytes::from(tar))]).boxed();
    volumes.replace(&name, &image, body).await.expect("replace");
    let after = volumes
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("volume");
    assert_eq!(after.labels[TEST_LABEL], "berth-runtime", "labels kept");
    let read = run("cat /data/a.txt /data/sub/b.txt; ls /data");
    cleanup.container(read.name.clone());
    let out = rt
        .run_oneoff(&read, Duration::from_secs(60))
        .await
        .expect("read");
    let lines: Vec<&str> = out.output.iter().map(|c| c.line.as_str()).collect();
    assert!(out.success(), "{lines:?}");
    assert!(
        lines.contains(&"first") && lines.contains(&"deep"),
        "{lines:?}"
    );
    assert!(
        !lines.contains(&"c.txt"),
        "the replaced content is gone: {lines:?}"
    );

    // A helper never outlives its call.
    let helpers = rt
        .docker()
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(std::collections::HashMap::from([(
                "volume".to_owned(),
                vec![name.clone()],
            )])),
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(helpers.is_empty(), "{helpers:?}");
    volumes.remove(&name).await.expect("remove volume");
    assert!(volumes.inspect(&name).await.expect("inspect").is_none());
}

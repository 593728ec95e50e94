//! [`MicroVmRuntime`] on real QEMU (TCG) with the host's guest kernel and
//! the busybox test image. Each test skips with a notice when QEMU or the
//! kernel is missing, and fails under `CI=true`.

use std::time::{Duration, Instant};

use berth_runtime::microvm::testing::{self as vm_testing, require_host};
use berth_runtime::microvm::Accel;
use berth_runtime::testing::{self, TEST_LABEL};
use berth_runtime::{
    berth_labels, shell_command, InstanceSpec, InstanceState, InstanceStatus, LogOptions,
    LogStream, MicroVmRuntime, RestartPolicy, Runtime,
};
use futures::StreamExt;

/// Boots take seconds under TCG on a loaded host.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

async fn setup(test: &str) -> Option<(MicroVmRuntime, tempfile::TempDir, String)> {
    require_host(test)?;
    let docker = testing::connect().await.expect("connect to docker");
    let image = testing::ensure_test_image(&docker)
        .await
        .expect("test image");
    let dir = tempfile::Builder::new()
        .prefix("berth-mvm-")
        .tempdir_in("/tmp")
        .unwrap();
    let rt = vm_testing::runtime(dir.path(), Accel::Tcg).await;
    Some((rt, dir, image))
}

fn spec(image: &str, command: &str) -> InstanceSpec {
    let suffix = testing::unique_suffix();
    let mut spec = InstanceSpec::new(berth_runtime::instance_name(&["mvm"], &suffix), image);
    spec.labels = berth_labels("rt-test", "web", "test", &suffix);
    spec.labels
        .insert(TEST_LABEL.to_owned(), "berth-runtime".to_owned());
    spec.command = Some(shell_command(command));
    spec
}

/// Removes the VM even when an assertion fails.
struct VmGuard(MicroVmRuntime, String);

impl Drop for VmGuard {
    fn drop(&mut self) {
        let (rt, id) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(r) = r {
                let _ = r.block_on(rt.remove(&id));
            }
        })
        .join();
    }
}

async fn wait_exited(rt: &MicroVmRuntime, id: &str) -> InstanceState {
    wait_exited_within(rt, id, BOOT_DEADLINE).await
}

async fn wait_exited_within(rt: &MicroVmRuntime, id: &str, within: Duration) -> InstanceState {
    let deadline = Instant::now() + within;
    loop {
        let state = rt.inspect(id).await.expect("inspect");
        if state.status != InstanceStatus::Running {
            return state;
        }
        assert!(Instant::now() < deadline, "{id} still running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lines(rt: &MicroVmRuntime, id: &str) -> Vec<(LogStream, String)> {
    rt.logs(id, LogOptions::default())
        .map(|c| {
            let c = c.expect("log chunk");
            (c.stream, c.line)
        })
        .collect()
        .await
}

async fn http_get(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock =
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    sock.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    out.starts_with("HTTP/1.").then_some(out)
}

#[tokio::test]
async fn vm_serves_logs_apart_stops_with_grace_and_is_adopted() {
    let Some((rt, dir, image)) =
        setup("vm_serves_logs_apart_stops_with_grace_and_is_adopted").await
    else {
        return;
    };
    let mut spec = spec(
        &image,
        "trap 'echo got-term; exit 7' TERM; echo hello-out; echo hello-err >&2; \
         echo \"cmdline=$(cat /proc/1/cmdline)\"; echo \"kernel=$(busybox uname -r)\"; \
         echo \"greeting=$GREETING\"; ls /proc | busybox grep -c '^[0-9]' ; \
         httpd -p 3000 -h /www; while true; do sleep 1; done",
    );
    spec.env = vec![("GREETING".into(), "bonjour le monde".into())];
    spec.port = Some(3000);
    let instance = rt.start(&spec).await.expect("start");
    let _guard = VmGuard(rt.clone(), instance.id.clone());
    assert!(instance.running);
    let endpoint = instance.endpoint.clone().expect("endpoint");
    assert_eq!(endpoint.host, "127.0.0.1");
    let addr: std::net::SocketAddr = endpoint.to_string().parse().expect("socket address");

    let deadline = Instant::now() + BOOT_DEADLINE;
    let body = loop {
        if let Some(body) = http_get(addr).await {
            break body;
        }
        assert!(Instant::now() < deadline, "no HTTP answer from the VM");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(body.ends_with(testing::INDEX_BODY), "{body}");

    let logs = lines(&rt, &instance.id).await;
    let stdout: Vec<&str> = logs
        .iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    let stderr: Vec<&str> = logs
        .iter()
        .filter(|(s, _)| *s == LogStream::Stderr)
        .map(|(_, l)| l.as_str())
        .collect();
    assert!(stdout.contains(&"hello-out"), "{logs:?}");
    assert_eq!(stderr, ["hello-err"], "{logs:?}");
    assert!(stdout.contains(&"cmdline=/berth-init"), "{logs:?}");
    assert!(stdout.contains(&"greeting=bonjour le monde"), "{logs:?}");
    let kernel = rt
        .kernel()
        .expect("kernel settled")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let version = kernel.strip_prefix("vmlinuz-").unwrap();
    assert!(
        stdout.contains(&format!("kernel={version}").as_str()),
        "{logs:?}"
    );

    // A second runtime on the same state dir (berth restarted) adopts it.
    let again = vm_testing::runtime(dir.path(), Accel::Tcg).await;
    let owned = again.list_owned().await.expect("list_owned");
    let found = owned.iter().find(|i| i.id == instance.id).expect("adopted");
    assert!(found.running);
    assert_eq!(found.endpoint, Some(endpoint.clone()));
    assert_eq!(found.labels["dev.berth.port"], "3000");
    assert!(
        http_get(addr).await.is_some(),
        "still serving after adoption"
    );

    again
        .stop(&instance.id, Duration::from_secs(30))
        .await
        .expect("stop");
    let state = again.inspect(&instance.id).await.expect("inspect");
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 7 },
        "{state:?}"
    );
    assert!(!state.oom_killed);
    assert_eq!(state.endpoint, None);
    let logs = lines(&again, &instance.id).await;
    assert!(
        logs.contains(&(LogStream::Stdout, "got-term".into())),
        "{logs:?}"
    );
    // Stopping again is fine; remove, then it is gone.
    again
        .stop(&instance.id, Duration::from_secs(1))
        .await
        .expect("stop again");
    again.remove(&instance.id).await.expect("remove");
    assert!(again
        .inspect(&instance.id)
        .await
        .unwrap_err()
        .is_not_found());
    again.remove(&instance.id).await.expect("remove again");
}

#[tokio::test]
async fn missing_entrypoint_fails_naming_it() {
    let Some((rt, _dir, image)) = setup("missing_entrypoint_fails_naming_it").await else {
        return;
    };
    let mut spec = spec(&image, "unused");
    spec.command = Some(vec!["/nonexistent-entrypoint".into(), "x".into()]);
    let instance = rt.start(&spec).await.expect("start");
    let _guard = VmGuard(rt.clone(), instance.id.clone());
    let state = wait_exited(&rt, &instance.id).await;
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 127 },
        "{state:?}"
    );
    let error = state.error.expect("init error");
    assert!(error.contains("/nonexistent-entrypoint"), "{error}");
    // The VM powered itself off.
    assert!(!rt
        .list_owned()
        .await
        .unwrap()
        .iter()
        .any(|i| i.id == instance.id && i.running));
}

#[tokio::test]
async fn oneoff_reports_exit_code_and_output_and_leaves_nothing() {
    let Some((rt, _dir, image)) =
        setup("oneoff_reports_exit_code_and_output_and_leaves_nothing").await
    else {
        return;
    };
    let spec = spec(&image, "echo one; echo two >&2; exit 3");
    let outcome = rt
        .run_oneoff(&spec, BOOT_DEADLINE)
        .await
        .expect("run_oneoff");
    assert_eq!(outcome.exit_code, 3);
    let lines: Vec<(LogStream, &str)> = outcome
        .output
        .iter()
        .map(|c| (c.stream, c.line.as_str()))
        .collect();
    assert!(lines.contains(&(LogStream::Stdout, "one")), "{lines:?}");
    assert!(lines.contains(&(LogStream::Stderr, "two")), "{lines:?}");
    assert!(rt.list_owned().await.unwrap().is_empty());
}

#[tokio::test]
async fn auto_accel_never_hangs() {
    if require_host("auto_accel_never_hangs").is_none() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-mvm-")
        .tempdir_in("/tmp")
        .unwrap();
    vm_testing::init_binary().expect("berth-init");
    let started = Instant::now();
    let rt = vm_testing::runtime(dir.path(), Accel::Auto).await;
    let took = started.elapsed();
    assert!(matches!(rt.accel(), Accel::Kvm | Accel::Tcg));
    assert!(
        took < berth_runtime::microvm::PROBE_TIMEOUT + Duration::from_secs(15),
        "auto took {took:?}"
    );
    eprintln!("auto chose {} in {took:?}", rt.accel().as_str());
}

/// OOM reported from a real VM (issue 12): a guest of the smallest memory
/// whose app holds more than that in a shell variable is killed by the
/// guest kernel's OOM killer; the init reports it, and `inspect` says
/// exited 137 (SIGKILL) with `oom_killed`. A VM whose app just exits is
/// not reported OOM.
#[tokio::test]
async fn an_app_over_the_memory_limit_is_reported_oom_killed() {
    let Some((rt, _dir, image)) =
        setup("an_app_over_the_memory_limit_is_reported_oom_killed").await
    else {
        return;
    };
    let mut hungry = spec(
        &image,
        "echo allocating; x=$(head -c 400000000 /dev/zero | tr '\\0' x); echo survived ${#x}",
    );
    hungry.limits.memory_bytes = Some(berth_runtime::microvm::MIN_MEMORY_MIB * 1024 * 1024);
    let instance = rt.start(&hungry).await.expect("start");
    let _guard = VmGuard(rt.clone(), instance.id.clone());
    // Boot under TCG, then the guest reclaims its page cache before the
    // OOM killer runs: slow on a loaded host.
    let state = wait_exited_within(&rt, &instance.id, BOOT_DEADLINE * 3).await;
    let out = lines(&rt, &instance.id).await;
    assert!(
        out.iter().any(|(_, l)| l == "allocating"),
        "the app ran: {out:?}"
    );
    assert!(
        !out.iter().any(|(_, l)| l.starts_with("survived")),
        "the allocation fit in the guest: {out:?}"
    );
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 137 },
        "{state:?}"
    );
    assert!(state.oom_killed, "not reported OOM: {state:?}");

    let fine = spec(&image, "echo small; exit 0");
    let instance = rt.start(&fine).await.expect("start");
    let _guard = VmGuard(rt.clone(), instance.id.clone());
    let state = wait_exited(&rt, &instance.id).await;
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 0 },
        "{state:?}"
    );
    assert!(!state.oom_killed, "{state:?}");
}

/// Waits until `check` holds for `id`'s state, or panics with the last one.
async fn wait_state(
    rt: &MicroVmRuntime,
    id: &str,
    within: Duration,
    check: impl Fn(&InstanceState) -> bool,
) -> InstanceState {
    let deadline = Instant::now() + within;
    loop {
        let state = rt.inspect(id).await.expect("inspect");
        if check(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "{id}: still {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The spec's restart policy runs inside the VM, as the Docker Engine runs
/// a container's: an app that crashes after it served is started again in
/// the same VM (same QEMU process, same address, nothing rebooted),
/// `inspect` counts the restarts, and the init's line on stderr names each
/// exit code; `on-failure` gives up after its retries with the last code;
/// a stop from the host is never restarted.
#[tokio::test]
async fn the_restart_policy_restarts_the_app_inside_the_same_vm() {
    let Some((rt, _dir, image)) =
        setup("the_restart_policy_restarts_the_app_inside_the_same_vm").await
    else {
        return;
    };
    let mut always = spec(
        &image,
        "echo run; httpd -p 3000 -h /www; sleep 3; echo crashing >&2; exit 3",
    );
    always.port = Some(3000);
    always.restart = RestartPolicy::Always;
    let mut on_failure = spec(&image, "echo try; exit 4");
    on_failure.restart = RestartPolicy::OnFailure { max_retries: 2 };
    let instance = rt.start(&always).await.expect("start");
    let _guard = VmGuard(rt.clone(), instance.id.clone());
    let failing = rt.start(&on_failure).await.expect("start");
    let _guard2 = VmGuard(rt.clone(), failing.id.clone());
    let addr: std::net::SocketAddr = instance
        .endpoint
        .clone()
        .expect("endpoint")
        .to_string()
        .parse()
        .expect("socket address");

    let deadline = Instant::now() + BOOT_DEADLINE;
    while http_get(addr).await.is_none() {
        assert!(Instant::now() < deadline, "no HTTP answer from the VM");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let vmm = rt.vmm_pid(&instance.id).expect("qemu runs");

    // It served, crashed with 3, and runs (and serves) again, twice.
    let state = wait_state(&rt, &instance.id, BOOT_DEADLINE, |s| {
        s.restart_count >= 2 && s.is_running()
    })
    .await;
    assert!(!state.oom_killed, "{state:?}");
    assert_eq!(state.endpoint, instance.endpoint, "{state:?}");
    assert_eq!(rt.vmm_pid(&instance.id), Some(vmm), "the VM was rebooted");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(addr).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the restarted app does not serve"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = lines(&rt, &instance.id).await;
    let runs = logs.iter().filter(|(_, l)| l == "run").count();
    assert!(runs >= 3, "{logs:?}");
    assert!(
        logs.contains(&(
            LogStream::Stderr,
            "berth-init: the app exited with code 3; restart 1 in 100 ms".into()
        )),
        "{logs:?}"
    );
    assert!(
        logs.contains(&(
            LogStream::Stderr,
            "berth-init: the app exited with code 3; restart 2 in 200 ms".into()
        )),
        "{logs:?}"
    );

    // A stop is final: the app's own exit (SIGTERM, or the last crash when
    // it came between two runs), well within the grace, not a kill of QEMU
    // after it.
    let before = rt
        .inspect(&instance.id)
        .await
        .expect("inspect")
        .restart_count;
    let began = Instant::now();
    rt.stop(&instance.id, Duration::from_secs(30))
        .await
        .expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    let state = rt.inspect(&instance.id).await.expect("inspect");
    assert!(
        matches!(state.status, InstanceStatus::Exited { code: 143 | 3 }),
        "{state:?}"
    );
    assert!(state.restart_count <= before + 1, "{state:?}");
    assert_eq!(rt.vmm_pid(&instance.id), None);

    // on-failure:2 runs three times, then stays exited with the last code.
    let state = wait_state(&rt, &failing.id, BOOT_DEADLINE, |s| s.exit_code().is_some()).await;
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 4 },
        "{state:?}"
    );
    assert_eq!(state.restart_count, 2, "{state:?}");
    let logs = lines(&rt, &failing.id).await;
    assert_eq!(
        logs.iter().filter(|(_, l)| l == "try").count(),
        3,
        "{logs:?}"
    );
}

/// The processes on this host whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// A new volume on the engine named `prefix-<unique>`, labelled as this
/// crate's test volume and removed by `cleanup`, with its directory on
/// this host (what virtiofsd serves).
async fn test_volume(
    engine: &berth_runtime::DockerVolumes,
    docker: &bollard::Docker,
    cleanup: &mut testing::Cleanup,
    prefix: &str,
) -> (String, std::path::PathBuf) {
    use berth_runtime::Volumes;
    let volume = format!("{prefix}-{}", testing::unique_suffix());
    cleanup.volume(volume.clone());
    let labels =
        std::collections::BTreeMap::from([(TEST_LABEL.to_owned(), "berth-runtime".to_owned())]);
    engine.ensure(&volume, &labels).await.expect("ensure");
    let mountpoint = docker
        .inspect_volume(&volume)
        .await
        .expect("inspect volume")
        .mountpoint;
    (volume, std::fs::canonicalize(mountpoint).unwrap())
}

/// Volumes in VMs (virtio-fs): a VM writes into a named volume of the
/// engine and the host sees it in the engine's directory; an empty volume
/// mounted over a directory of the image gets the image's files (as
/// Docker copies them); a second VM
/// started beside it (as in a cutover) reads it and adds to it; the VMs
/// count as the volume's users (removing it is refused), are adopted with
/// their virtiofsd by a new runtime on the same state dir, and removing
/// them leaves no virtiofsd behind.
#[tokio::test]
async fn vms_share_a_volume_through_virtio_fs_and_leave_no_daemon_behind() {
    use berth_runtime::microvm::volumes::WithVms;
    use berth_runtime::{DockerVolumes, VolumeMount, Volumes};
    use std::sync::Arc;
    let test = "vms_share_a_volume_through_virtio_fs_and_leave_no_daemon_behind";
    if vm_testing::require_volumes(test).is_none() {
        return;
    }
    let Some((rt, dir, image)) = setup(test).await else {
        return;
    };
    let docker = testing::connect().await.expect("connect to docker");
    let engine = DockerVolumes::from_docker(docker.clone());
    let mut cleanup = testing::Cleanup::new();
    let (volume, host_dir) = test_volume(&engine, &docker, &mut cleanup, "berth-mvm-test").await;
    let (www, www_dir) = test_volume(&engine, &docker, &mut cleanup, "berth-mvm-test-www").await;
    let volumes = WithVms::new(Arc::new(engine), rt.clone());
    let with_volume = |command: &str| {
        let mut s = spec(&image, command);
        s.mounts.push(VolumeMount {
            volume: volume.clone(),
            target: "/data".into(),
            read_only: false,
        });
        s
    };

    let mut first = with_volume("echo one >> /data/lines && echo written && exec sleep 1000");
    first.mounts.push(VolumeMount {
        volume: www.clone(),
        target: "/www".into(),
        read_only: false,
    });
    let vm1 = rt.start(&first).await.expect("start vm1");
    let _g1 = VmGuard(rt.clone(), vm1.id.clone());
    let deadline = Instant::now() + BOOT_DEADLINE;
    while !lines(&rt, &vm1.id)
        .await
        .contains(&(LogStream::Stdout, "written".into()))
    {
        let state = rt.inspect(&vm1.id).await.unwrap();
        assert_eq!(state.status, InstanceStatus::Running, "{state:?}");
        assert!(Instant::now() < deadline, "vm1 wrote nothing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The engine's own directory of the volume holds what the VM wrote.
    assert_eq!(
        std::fs::read_to_string(host_dir.join("lines")).unwrap(),
        "one\n"
    );
    // The image's /www, copied into the empty volume mounted there.
    assert_eq!(
        std::fs::read_to_string(www_dir.join("index.html")).unwrap(),
        testing::INDEX_BODY
    );
    let daemons = rt.virtiofsd_pids(&vm1.id);
    assert_eq!(daemons.len(), 2, "one virtiofsd per volume");

    // A second VM beside it sees the data and adds to it.
    let second = with_volume("cat /data/lines; echo two >> /data/lines");
    let vm2 = rt.start(&second).await.expect("start vm2");
    let _g2 = VmGuard(rt.clone(), vm2.id.clone());
    let state = wait_exited(&rt, &vm2.id).await;
    assert_eq!(
        state.status,
        InstanceStatus::Exited { code: 0 },
        "{state:?}"
    );
    assert!(lines(&rt, &vm2.id)
        .await
        .contains(&(LogStream::Stdout, "one".into())));
    assert_eq!(
        std::fs::read_to_string(host_dir.join("lines")).unwrap(),
        "one\ntwo\n"
    );
    // Its QEMU gone, its daemon went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt.virtiofsd_pids(&vm2.id).is_empty() {
        assert!(Instant::now() < deadline, "vm2's virtiofsd outlived it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both VMs use the volume: removing it is refused.
    let users = volumes.users(&volume).await.unwrap();
    let mut names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    names.sort();
    let mut want = vec![vm1.id.as_str(), vm2.id.as_str()];
    want.sort();
    assert_eq!(names, want);
    assert!(users.iter().any(|u| u.id == vm1.id && u.running));
    let err = volumes.remove(&volume).await.unwrap_err().to_string();
    assert!(err.contains("in use by microvm"), "{err}");

    // After a restart of berth (a new runtime on the same state dir) the
    // VM and its daemon are adopted, not restarted.
    let adopted = MicroVmRuntime::open(
        testing::connect().await.unwrap(),
        berth_runtime::MicroVmConfig {
            state_dir: dir.path().to_owned(),
            kernel: None,
            init: vm_testing::init_binary().unwrap(),
            accel: Accel::Tcg,
            qemu: "qemu-system-x86_64".into(),
        },
    )
    .unwrap();
    assert_eq!(adopted.virtiofsd_pids(&vm1.id), daemons);
    assert!(adopted.inspect(&vm1.id).await.unwrap().status == InstanceStatus::Running);

    // Removed: no virtiofsd of this state dir is left on the host.
    adopted.remove(&vm1.id).await.unwrap();
    adopted.remove(&vm2.id).await.unwrap();
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(volumes.users(&volume).await.unwrap().is_empty());
    volumes.remove(&volume).await.expect("remove the volume");
}

/// virtiofsd's `chroot` sandbox (the fallback for hosts that refuse the
/// namespaces), forced on this host that allows them: the VM reads what the
/// host put in the volume and the host sees what the VM wrote, the daemon
/// really is chrooted into the volume's directory (its `/proc/<pid>/root`),
/// and removing the VM leaves no virtiofsd or QEMU behind.
#[tokio::test]
async fn a_volume_works_with_virtiofsd_in_its_chroot_sandbox() {
    use berth_runtime::microvm::virtiofs::Sandbox;
    use berth_runtime::{DockerVolumes, VolumeMount, Volumes};
    let test = "a_volume_works_with_virtiofsd_in_its_chroot_sandbox";
    if vm_testing::require_volumes(test).is_none() {
        return;
    }
    let Some((rt, dir, image)) = setup(test).await else {
        return;
    };
    assert!(rt.force_virtiofs_sandbox(Sandbox::Chroot));
    let docker = testing::connect().await.expect("connect to docker");
    let engine = DockerVolumes::from_docker(docker.clone());
    let mut cleanup = testing::Cleanup::new();
    let (volume, host_dir) =
        test_volume(&engine, &docker, &mut cleanup, "berth-mvm-test-chroot").await;
    std::fs::write(host_dir.join("from-host"), "put by the host\n").unwrap();

    let mut s = spec(
        &image,
        "cat /data/from-host && echo from the vm > /data/from-vm && echo written && exec sleep 1000",
    );
    s.mounts.push(VolumeMount {
        volume: volume.clone(),
        target: "/data".into(),
        read_only: false,
    });
    let vm = rt.start(&s).await.expect("start");
    let _guard = VmGuard(rt.clone(), vm.id.clone());
    let deadline = Instant::now() + BOOT_DEADLINE;
    while !lines(&rt, &vm.id)
        .await
        .contains(&(LogStream::Stdout, "written".into()))
    {
        let state = rt.inspect(&vm.id).await.unwrap();
        assert_eq!(state.status, InstanceStatus::Running, "{state:?}");
        assert!(Instant::now() < deadline, "the vm wrote nothing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(lines(&rt, &vm.id)
        .await
        .contains(&(LogStream::Stdout, "put by the host".into())));
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-vm")).unwrap(),
        "from the vm\n"
    );

    // The daemon was told chroot and is chrooted into the volume.
    let daemons = rt.virtiofsd_pids(&vm.id);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let pid = daemons[0];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("sandbox=chroot"), "{cmdline}");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        host_dir,
        "virtiofsd's root"
    );

    rt.remove(&vm.id).await.expect("remove");
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
    engine.remove(&volume).await.expect("remove the volume");
}

/// A read-only volume on a VM: the app reads the host's file but cannot
/// write, not even after remounting the volume read-write as root in the
/// guest (its virtiofsd sees the directory through a read-only bind in a
/// mount namespace of its own); the host's directory stays writable and no
/// mount of it leaks into the host's namespace. On a host that refuses
/// virtiofsd its namespaces (a container without `CAP_SYS_ADMIN`) the start
/// is refused instead, naming the read-only volume, and leaves nothing.
#[tokio::test]
async fn a_read_only_volume_stays_read_only_even_if_the_guest_remounts_it() {
    use berth_runtime::microvm::virtiofs::{self, Sandbox};
    use berth_runtime::{DockerVolumes, VolumeMount, Volumes};
    let test = "a_read_only_volume_stays_read_only_even_if_the_guest_remounts_it";
    if vm_testing::require_volumes(test).is_none() {
        return;
    }
    let Some((rt, dir, image)) = setup(test).await else {
        return;
    };
    let docker = testing::connect().await.expect("connect to docker");
    let engine = DockerVolumes::from_docker(docker.clone());
    let mut cleanup = testing::Cleanup::new();
    let (volume, host_dir) = test_volume(&engine, &docker, &mut cleanup, "berth-mvm-test-ro").await;
    std::fs::write(host_dir.join("from-host"), "put by the host\n").unwrap();

    let mut s = spec(
        &image,
        "cat /data/from-host; echo x > /data/new; echo \"write $?\"; \
         echo x >> /data/from-host; echo \"append $?\"; \
         /bin/busybox mount -o remount,rw /data; echo \"remount $?\"; \
         echo x > /data/new; echo \"write after remount $?\"; \
         echo x >> /data/from-host; echo \"append after remount $?\"; \
         echo done; exec sleep 1000",
    );
    s.mounts.push(VolumeMount {
        volume: volume.clone(),
        target: "/data".into(),
        read_only: true,
    });
    if virtiofs::sandbox(&virtiofs::find().unwrap()) == Sandbox::Chroot {
        let err = rt.start(&s).await.unwrap_err().to_string();
        assert!(err.contains("read-only"), "{err}");
        let left = processes_mentioning(&dir.path().to_string_lossy());
        assert!(left.is_empty(), "left running: {left:?}");
        eprintln!("{test}: this host refuses namespaces; checked the refusal only");
        return;
    }
    let vm = rt.start(&s).await.expect("start");
    let _guard = VmGuard(rt.clone(), vm.id.clone());
    let deadline = Instant::now() + BOOT_DEADLINE;
    while !lines(&rt, &vm.id)
        .await
        .contains(&(LogStream::Stdout, "done".into()))
    {
        let state = rt.inspect(&vm.id).await.unwrap();
        assert_eq!(state.status, InstanceStatus::Running, "{state:?}");
        assert!(Instant::now() < deadline, "the vm did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out: Vec<String> = lines(&rt, &vm.id)
        .await
        .into_iter()
        .filter(|(stream, _)| *stream == LogStream::Stdout)
        .map(|(_, line)| line)
        .collect();
    for want in [
        "put by the host",
        "write 1",
        "append 1",
        "remount 0",
        "write after remount 1",
        "append after remount 1",
    ] {
        assert!(out.iter().any(|l| l == want), "no {want:?} in {out:?}");
    }
    assert!(!host_dir.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(host_dir.join("from-host")).unwrap(),
        "put by the host\n"
    );
    // The host's own view: still writable, and no bind of it here.
    std::fs::write(host_dir.join("by-host-meanwhile"), "ok").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*host_dir.to_string_lossy()),
        "the read-only bind leaked into the host's namespace"
    );

    rt.remove(&vm.id).await.expect("remove");
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "left running: {left:?}");
    engine.remove(&volume).await.expect("remove the volume");
}

//! `berth server --runtime microvm` (issue 12): the busybox app deployed in
//! QEMU microVMs (TCG), served through the edge, its stdout and stderr
//! apart in `berth logs`, its own kernel and berth-init as PID 1, an app
//! crash restarted inside the same VM, then a rollback under load without
//! a failed request, and VMs that survive a kill -9 of berth and are
//! adopted; a canary of VMs that regresses is rolled back and a healthy
//! one is promoted; volumes shared with VMs through virtio-fs keep their
//! data across deploys, a kill -9, a backup/restore and a rollback;
//! requests a server cannot honour fail at deploy, and `--runtime microvm`
//! refuses to start without QEMU or a kernel.

use super::volumes::{DELETE_CGI, READ_CGI, WRITE_CGI};
use super::{deploy_wait, host, step, unique, wait_body, Cleanup};
use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const INSIDE_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
echo \"init=$(cat /proc/1/cmdline)\"
echo \"kernel=$(uname -r)\"
echo \"docker-sock=$(test -e /var/run/docker.sock && echo yes || echo no)\"
echo \"processes=$(ls /proc | grep -c '^[0-9]')\"
";

/// Kills the app (every httpd, the main one with it) from inside.
const CRASH_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
echo crashing
killall -9 httpd
";

const BERTH_TOML: &str = "[services.web]
start_command = \"echo vm-out; echo vm-err >&2; exec httpd -f -p 3000 -h /www\"
isolation = \"microvm\"
[services.web.resources]
memory = \"192m\"
";

/// Kills the QEMU and virtiofsd processes of a data dir's VMs (the test
/// started them).
struct KillVms(PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0.join("microvm/vms"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut owned = vec![(
                entry.path().join("qemu.pid"),
                entry.path().join("qemu.pid").to_string_lossy().into_owned(),
            )];
            for i in 0..8 {
                owned.push((
                    entry.path().join(format!("virtiofsd-{i}.pid")),
                    format!(
                        "--socket-path={}",
                        entry.path().join(format!("fs{i}.sock")).display()
                    ),
                ));
            }
            for (pidfile, arg) in owned {
                let Ok(pid) = std::fs::read_to_string(&pidfile) else {
                    continue;
                };
                let pid = pid.trim();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let ours = cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes());
                if ours {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
        }
    }
}

/// The vhost-user sockets of the virtiofsd processes running for a data
/// dir's VMs (a sandboxed daemon is two processes with one command line).
fn virtiofsd_sockets(data: &Path) -> std::collections::BTreeSet<String> {
    let vms = data.join("microvm/vms").to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let socket = args
                .iter()
                .find_map(|a| a.strip_prefix("--socket-path="))?
                .to_owned();
            (!zombie && socket.starts_with(&vms)).then_some(socket)
        })
        .collect()
}

fn guest_kernel_version() -> Option<String> {
    let mut kernels: Vec<String> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .filter(|v| v.ends_with("-cloud-amd64"))
        .collect();
    kernels.sort();
    kernels.pop()
}

fn running_vms(data: &Path) -> Vec<Value> {
    std::fs::read_dir(data.join("microvm/vms"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("meta.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .collect()
}

/// A TCG server of the data dir's VMs, with berth-init built, or `None`
/// (skip notice; a failure under `CI=true`) when QEMU or a kernel is missing.
fn microvm_server() -> Option<Server> {
    if let Err(why) = berth_runtime::microvm::testing::host_ready() {
        missing_tool(
            &why,
            "apt-get install qemu-system-x86 linux-image-cloud-amd64",
        );
        return None;
    }
    let init = berth_runtime::microvm::testing::init_binary().expect("build berth-init");
    Some(Server::start_with(&[
        "--runtime",
        "microvm",
        "--microvm-accel",
        "tcg",
        "--microvm-init",
        init.to_str().unwrap(),
    ]))
}

/// `/cgi-bin/app` answers `status` with the body `app-<status>`.
fn app_cgi(repo: &AppRepo, status: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = repo.dir.path().join("www/cgi-bin/app");
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho 'Status: {status}'\necho 'Content-Type: text/plain'\necho\necho app-{status}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The canary stages (004) with VM instances: the candidate VM takes its
/// share of the edge's traffic beside the active one; a regressing one ends
/// rolled back (its VM gone, v1's still serving), a healthy one is promoted;
/// then one whose entrypoint does not exist fails naming it.
/// Short windows: every request is a CGI fork inside a TCG guest.
#[test]
fn microvm_canary_rolls_back_a_regression_and_promotes_a_healthy_one() {
    let Some(s) = microvm_server() else {
        return;
    };
    let _vms = KillVms(s.data_dir());
    let project = unique("e2evmc");
    let _c = Cleanup(project.clone());
    let repo = AppRepo::new("c1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nisolation = \"microvm\"\n[services.web.resources]\nmemory = \"160m\"\n\
         [services.web.canary]\nstages = [50, 100]\nobservation_window = \"3s\"\n\
         error_rate_threshold = 0.05\nmin_requests = 6\n",
    )
    .unwrap();
    app_cgi(&repo, "200 OK");
    repo.commit_app("c1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}\n{}", s.log());
    let h = host(&project);
    wait_body(&s, &h, "c1");
    let vm1 = d1["runtime"]["instanceId"].as_str().unwrap().to_string();
    assert_eq!(d1["runtime"]["kind"], "microvm", "{d1}");

    // v2 answers 500: the 50% stage sees it and rolls back.
    app_cgi(&repo, "500 Internal Server Error");
    repo.commit_app("c2", DOCKERFILE, "v2 broken");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(400),
    );
    let (ok, d2) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(!ok, "{d2}");
    assert_eq!(d2["status"], "failed", "{d2}");
    assert_eq!(d2["promotionStage"], "rolled_back", "{d2}");
    assert_eq!(d2["canaryWeight"], Value::Null);
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(msg.contains("canary at 50% regressed: error rate"), "{msg}");
    assert!(report.non2xx > 0, "the canary VM really took traffic");
    assert!(report.ok > 0, "v1's VM kept serving beside it");
    // The canary's VM is gone, v1's runs on.
    let vms = running_vms(&s.data_dir());
    let names: Vec<_> = vms.iter().map(|m| m["name"].clone()).collect();
    assert_eq!(names, [vm1.as_str()], "{vms:?}");
    assert_eq!(s.get_host(&h, "/cgi-bin/app").unwrap().0, 200);

    // v3 is healthy: it passes the stages and goes live in its own VM.
    app_cgi(&repo, "200 OK");
    repo.commit_app("c3", DOCKERFILE, "v3");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(400),
    );
    let (ok, d3) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(ok, "{d3}\n{}", s.log());
    assert_eq!(d3["promotionStage"], "active", "{d3}");
    assert_eq!(d3["canaryWeight"], Value::Null);
    assert_eq!(d3["runtime"]["kind"], "microvm", "{d3}");
    assert_eq!(report.non2xx + report.errors, 0, "{:?}", report.samples);
    let logs = s.ok(&["logs", d3["id"].as_str().unwrap()]);
    assert!(logs.contains("canary: 50% of traffic"), "{logs}");
    wait_body(&s, &h, "c3");
    let vm3 = d3["runtime"]["instanceId"].as_str().unwrap().to_string();

    // An entrypoint the image does not have: failed within the readiness
    // deadline naming it (the init's error, also on the app's stderr so
    // the failure's "last output" has it), its VM gone, v3 serving.
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nisolation = \"microvm\"\nport = 3000\n\
         [services.web.resources]\nmemory = \"160m\"\n",
    )
    .unwrap();
    let cmd = DOCKERFILE.lines().last().unwrap();
    assert!(cmd.starts_with("CMD "), "{DOCKERFILE}");
    let dockerfile = DOCKERFILE.replace(cmd, "CMD [\"/nonexistent-entrypoint\", \"--serve\"]");
    repo.commit_app("c4", &dockerfile, "v4 without its entrypoint");
    let (ok, d4) = deploy_wait(&s, &project);
    assert!(!ok, "{d4}");
    assert_eq!(d4["status"], "failed", "{d4}");
    let msg = d4["failureMessage"].as_str().unwrap_or_default();
    assert!(msg.contains("exited with code 127"), "{msg}");
    assert!(
        msg.contains("entrypoint \"/nonexistent-entrypoint\" not found in the image"),
        "{msg}"
    );
    // Left: v3's VM, and v1's while it is warm in v3's bake window.
    let vms = running_vms(&s.data_dir());
    assert!(
        vms.iter().any(|m| m["name"] == vm3.as_str())
            && vms
                .iter()
                .all(|m| m["name"] == vm3.as_str() || m["name"] == vm1.as_str()),
        "{vms:?}"
    );
    wait_body(&s, &h, "c3");
}

#[test]
fn microvm_runtime_deploys_serves_logs_apart_rolls_back_and_survives_kill_9() {
    let Some(mut s) = microvm_server() else {
        return;
    };
    let kernel = guest_kernel_version().expect("a cloud kernel under /boot");
    let project = unique("e2evm");
    let _c = Cleanup(project.clone());
    let _vms = KillVms(s.data_dir());
    let repo = AppRepo::new("vm v1");
    std::fs::write(repo.dir.path().join("www/cgi-bin/inside"), INSIDE_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = repo.dir.path().join("www/cgi-bin/inside");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(repo.dir.path().join("www/cgi-bin/crash"), CRASH_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = repo.dir.path().join("www/cgi-bin/crash");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(repo.dir.path().join("berth.toml"), BERTH_TOML).unwrap();
    repo.commit_app("vm v1", DOCKERFILE, "v1 in a microVM");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d1}\n{}", s.log());
    assert_eq!(d1["status"], "succeeded");
    let h = host(&project);
    wait_body(&s, &h, "vm v1");

    // The instance is a VM of this server, with the service's memory.
    let d1 = s.json(&["inspect", d1["id"].as_str().unwrap(), "--json"]);
    let vm1 = d1["runtime"]["instanceId"].as_str().unwrap().to_string();
    let vms = running_vms(&s.data_dir());
    let meta = vms
        .iter()
        .find(|m| m["name"] == vm1.as_str())
        .unwrap_or_else(|| panic!("{vm1} is not a microVM: {vms:?}"));
    assert_eq!(meta["memory_mib"], 192);
    assert_eq!(meta["accel"], "tcg");
    // `inspect` says so: the kind and the memory the VM got.
    assert_eq!(d1["runtime"]["kind"], "microvm", "{d1}");
    assert_eq!(d1["runtime"]["memoryBytes"], 192u64 << 20, "{d1}");
    assert_eq!(d1["runtime"]["cpus"], 1.0, "{d1}");
    let text = s.ok(&["inspect", d1["id"].as_str().unwrap()]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Runtime") && l.contains("microvm 192 MiB, 1 CPU")),
        "{text}"
    );

    // Inside: berth-init is PID 1, the guest kernel runs, no host processes
    // and no Docker socket.
    let (st, inside) = s.get_host(&h, "/cgi-bin/inside").unwrap();
    assert_eq!(st, 200, "{inside}");
    assert!(inside.contains("init=/berth-init"), "{inside}");
    assert!(inside.contains(&format!("kernel={kernel}")), "{inside}");
    assert!(inside.contains("docker-sock=no"), "{inside}");
    let processes: usize = inside
        .lines()
        .find_map(|l| l.strip_prefix("processes="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(processes < 200, "host processes visible: {inside}");

    // stdout and stderr apart in `berth logs`.
    let id1 = d1["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.ok(&["logs", &id1, "--json"]);
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let has = |stream: &str, text: &str| {
            lines
                .iter()
                .any(|l| l["stream"] == stream && l["text"].as_str() == Some(text))
        };
        if has("stdout", "vm-out") && has("stderr", "vm-err") {
            assert!(!has("stdout", "vm-err") && !has("stderr", "vm-out"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no app output in berth logs: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The app crashes after it became ready: berth-init starts it again in
    // the same VM (as the Docker Engine restarts a container), the edge
    // serves it again, the exit code is in `berth logs`, and the health
    // monitor keeps the instance (no new VM).
    let pid_before = std::fs::read_to_string(
        s.data_dir()
            .join("microvm/vms")
            .join(vm_dir_of(&s.data_dir(), &vm1))
            .join("qemu.pid"),
    )
    .unwrap();
    let _ = s.get_host(&h, "/cgi-bin/crash");
    let restarted = "berth-init: the app exited with code 137; restart 1 in 100 ms";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.ok(&["logs", &id1, "--json"]);
        let seen = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["stream"] == "stderr" && l["text"].as_str() == Some(restarted));
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "no restart in berth logs: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_body(&s, &h, "vm v1");
    let d = s.json(&["inspect", &id1, "--json"]);
    assert_eq!(d["isActive"], true, "{d}");
    assert_eq!(d["runtime"]["instanceId"], vm1.as_str(), "replaced: {d}");
    assert_eq!(running_vms(&s.data_dir()).len(), 1);

    // kill -9 of berth: the VM keeps serving; after the restart it is
    // adopted, not rebooted.
    s.kill9();
    let (st, body) = {
        // The edge is down with berth; the VM's own port still answers.
        let port = meta["host_port"].as_u64().unwrap();
        let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/")).unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!((st, body.as_str()), (200, "vm v1"));
    s.spawn();
    wait_body(&s, &h, "vm v1");
    let after = s.json(&["inspect", &id1, "--json"]);
    assert_eq!(after["isActive"], true);
    assert_eq!(after["runtime"]["instanceId"], vm1.as_str());
    assert_eq!(after["runtime"]["kind"], "microvm", "{after}");
    assert_eq!(after["runtime"]["memoryBytes"], 192u64 << 20, "{after}");
    let pid_after = std::fs::read_to_string(
        s.data_dir()
            .join("microvm/vms")
            .join(vm_dir_of(&s.data_dir(), &vm1))
            .join("qemu.pid"),
    )
    .unwrap();
    assert_eq!(
        pid_before, pid_after,
        "the VM was rebooted (app crash or kill -9)"
    );

    // v2, then a rollback to v1 under load: no failed request.
    repo.commit_app("vm v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}\n{}", s.log());
    wait_body(&s, &h, "vm v2");
    let load = Load::start(s.http_port, &h, 2, 100_000, Duration::from_secs(300));
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
    wait_body(&s, &h, "vm v1");
    // A rollback inside the bake window is a route flip: keep the load on
    // v1 a moment so the count below means something.
    std::thread::sleep(Duration::from_secs(2));
    let report = load.finish();
    assert_eq!(rb["status"], "succeeded", "{rb}");
    assert_eq!(step(&rb, "build")["status"], "skipped");
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "{} ok, {} non-2xx, {} errors; samples {:?}",
        report.ok,
        report.non2xx,
        report.errors,
        report.samples
    );
    assert!(report.ok > 20, "the load generator ran: {}", report.ok);
}

/// The directory of VM `name` (its meta.json names it).
fn vm_dir_of(data: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(data.join("microvm/vms"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|m| m["name"] == name)
        })
        .map(|e| e.file_name().into())
        .unwrap_or_else(|| panic!("no VM named {name}"))
}

/// Bad input (issue 12), on a `--runtime docker` server whose guest kernel
/// does not exist: a service asking for `isolation = "microvm"` fails at
/// deploy naming what is missing, with or without volumes (volumes are no
/// reason to refuse a VM); each time the previous container keeps serving,
/// and no VM is left behind. No VM boots here, so this runs without QEMU
/// too.
#[test]
fn microvm_requests_a_server_cannot_honour_fail_at_deploy_and_the_previous_keeps_serving() {
    let project = unique("e2evmb");
    let _c = Cleanup(project.clone());
    let _v = super::volumes::VolumeCleanup(project.clone());
    // Any existing file passes for the init: the kernel is what is missing.
    let init = std::env::current_exe().unwrap();
    let s = Server::start_with(&[
        "--microvm-kernel",
        "/nonexistent/vmlinuz-berth-test",
        "--microvm-init",
        init.to_str().unwrap(),
        "--microvm-accel",
        "tcg",
    ]);
    let _vms = KillVms(s.data_dir());
    let repo = AppRepo::new("b1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nport = 3000\n",
    )
    .unwrap();
    repo.commit_app("b1", DOCKERFILE, "v1 in a container");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}\n{}", s.log());
    let h = host(&project);
    wait_body(&s, &h, "b1");

    let cases = [
        (
            "[services.web]\nport = 3000\nisolation = \"microvm\"\n",
            "/nonexistent/vmlinuz-berth-test",
        ),
        (
            "[services.web]\nport = 3000\nisolation = \"microvm\"\n\
             [services.web.volumes]\n\"/data\" = \"uploads\"\n",
            "/nonexistent/vmlinuz-berth-test",
        ),
    ];
    for (i, (toml, want)) in cases.into_iter().enumerate() {
        std::fs::write(repo.dir.path().join("berth.toml"), toml).unwrap();
        repo.commit_app(&format!("b{}", i + 2), DOCKERFILE, "asks for a microVM");
        let (ok, d) = deploy_wait(&s, &project);
        assert!(!ok, "{d}");
        assert_eq!(d["status"], "failed", "{d}");
        let msg = d["failureMessage"].as_str().unwrap_or_default();
        // Without QEMU (outside CI) that is named first.
        assert!(
            msg.contains(want) || msg.contains("qemu not found"),
            "case {i}: {msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(s.get_host(&h, "/").unwrap(), (200, "b1".to_string()));
        let active: Vec<_> = s
            .deployments(&project)
            .into_iter()
            .filter(|d| d["isActive"] == true)
            .collect();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0]["id"], d1["id"]);
        assert!(
            running_vms(&s.data_dir()).is_empty(),
            "a VM was left behind"
        );
    }
}

const BOOTS_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
cat /data/boots
";

/// Each VM appends its hostname (its instance name) to the volume as it
/// starts; the CGIs read and write it.
const VOLUME_TOML: &str = "[services.web]
start_command = \"hostname >> /data/boots; exec httpd -f -p 3000 -h /www\"
isolation = \"microvm\"
[services.web.resources]
memory = \"160m\"
[services.web.volumes]
\"/data\" = \"uploads\"
";

fn get_ok(s: &Server, host: &str, path: &str) -> String {
    match s.get_host(host, path) {
        Ok((200, body)) => body.trim().to_string(),
        other => panic!("GET {path}: {other:?}\n{}", s.log()),
    }
}

/// Polls `path` until it answers `want` (routes move during a restore).
fn wait_get(s: &Server, host: &str, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok((200, body)) = s.get_host(host, path) {
            if body.trim() == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {want:?}: {:?}\n{}",
            s.get_host(host, path),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The hostnames the volume says booted, in order.
fn boots(s: &Server, host: &str) -> Vec<String> {
    get_ok(s, host, "/cgi-bin/boots")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Volumes on VMs (issue 12, virtio-fs): the app in its VM writes to its
/// volume; a new deployment's VM sees what the old one wrote (both run
/// side by side during the cutover); after a kill -9 of berth the VM is
/// adopted with its volume and keeps it; a backup while it runs, the file
/// deleted, a restore (the VMs stopped and started again) puts it back; a
/// rollback to a new VM of v1 still sees it. Each running VM has exactly
/// one virtiofsd, and none is left for a VM that is gone.
#[test]
fn microvm_volumes_keep_their_data_across_deploys_restarts_restores_and_rollbacks() {
    if let Err(why) = berth_runtime::microvm::testing::volumes_ready() {
        missing_tool(&why, "apt-get install qemu-system-common");
        return;
    }
    let Some(mut s) = microvm_server() else {
        return;
    };
    let project = unique("e2evmv");
    let _c = Cleanup(project.clone());
    let _v = super::volumes::VolumeCleanup(project.clone());
    let _vms = KillVms(s.data_dir());
    let repo = AppRepo::new("vol v1");
    for (name, script) in [
        ("boots", BOOTS_CGI),
        ("write", WRITE_CGI),
        ("delete", DELETE_CGI),
        ("read", READ_CGI),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let p = repo.dir.path().join("www/cgi-bin").join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(repo.dir.path().join("berth.toml"), VOLUME_TOML).unwrap();
    repo.commit_app("vol v1", DOCKERFILE, "v1 with a volume in a microVM");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}\n{}", s.log());
    assert_eq!(d1["runtime"]["kind"], "microvm", "{d1}");
    let vm1 = d1["runtime"]["instanceId"].as_str().unwrap().to_string();
    let h = host(&project);
    wait_body(&s, &h, "vol v1");
    assert_eq!(boots(&s, &h), [vm1.as_str()]);
    assert_eq!(get_ok(&s, &h, "/cgi-bin/write?first"), "written");
    // The engine's directory of the volume is what the VM wrote to.
    let volumes = s.json(&["volumes", "list", "--project", &project, "--json"]);
    let engine = volumes[0]["engineName"].as_str().unwrap().to_string();
    let dir = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &engine]);
    let on_host = std::fs::read_to_string(Path::new(dir.trim()).join("note.txt")).unwrap();
    assert_eq!(on_host, "first\n");

    // v2: a new VM, the old one's data there.
    repo.commit_app("vol v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}\n{}", s.log());
    let vm2 = d2["runtime"]["instanceId"].as_str().unwrap().to_string();
    wait_body(&s, &h, "vol v2");
    assert_eq!(boots(&s, &h), [vm1.as_str(), vm2.as_str()]);
    assert_eq!(get_ok(&s, &h, "/cgi-bin/read"), "first");
    let running: Vec<_> = running_vms(&s.data_dir())
        .into_iter()
        .filter(|m| m["volumes"] == serde_json::json!([engine.as_str()]))
        .collect();
    assert!(
        !running.is_empty() && running.len() <= 2,
        "VMs with the volume: {running:?}"
    );

    // kill -9 of berth: adopted with its volume, not rebooted.
    let sockets = virtiofsd_sockets(&s.data_dir());
    let port = running_vms(&s.data_dir())
        .into_iter()
        .find(|m| m["name"] == vm2.as_str())
        .and_then(|m| m["host_port"].as_u64())
        .expect("v2's VM and its port");
    s.kill9();
    // While berth is down the VM's own port serves the volume's data.
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/cgi-bin/read")).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap().trim(), "first");
    s.spawn();
    wait_body(&s, &h, "vol v2");
    assert_eq!(boots(&s, &h), [vm1.as_str(), vm2.as_str()]);
    assert_eq!(get_ok(&s, &h, "/cgi-bin/read"), "first");
    assert_eq!(
        virtiofsd_sockets(&s.data_dir()),
        sockets,
        "daemons restarted"
    );

    // Backup while the VM runs; the file deleted; restore: back.
    let b = s.json(&[
        "volumes",
        "backup",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    assert_eq!(b["status"], "succeeded", "{b}");
    let backup_id = b["id"].as_str().unwrap().to_string();
    assert_eq!(get_ok(&s, &h, "/cgi-bin/delete"), "deleted");
    assert_eq!(get_ok(&s, &h, "/cgi-bin/read"), "missing");
    let r = s.json(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &backup_id,
        "--json",
    ]);
    assert_eq!(r["previous"]["status"], "succeeded", "{r}");
    assert_eq!(r["restarted"].as_array().unwrap().len(), 1, "{r}");
    wait_get(&s, &h, "/cgi-bin/read", "first");
    // v2's instance was stopped and started again: a new VM, the same name.
    let after_restore = boots(&s, &h);
    assert_eq!(
        after_restore,
        [vm1.as_str(), vm2.as_str(), vm2.as_str()],
        "the restored content plus the restarted VM's boot"
    );

    // Rollback to v1 (its VM went with the restore): a new VM of v1 sees
    // the data.
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
    wait_body(&s, &h, "vol v1");
    assert_eq!(get_ok(&s, &h, "/cgi-bin/read"), "first");
    let b = boots(&s, &h);
    assert_eq!(&b[..3], &after_restore[..], "{b:?}");

    // One virtiofsd per running VM with the volume, none for a VM gone.
    let want: std::collections::BTreeSet<String> =
        std::fs::read_dir(s.data_dir().join("microvm/vms"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let pid = std::fs::read_to_string(e.path().join("qemu.pid")).unwrap_or_default();
                Path::new(&format!("/proc/{}", pid.trim())).exists() && !pid.trim().is_empty()
            })
            .map(|e| e.path().join("fs0.sock").display().to_string())
            .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while virtiofsd_sockets(&s.data_dir()) != want {
        assert!(
            Instant::now() < deadline,
            "virtiofsd {:?}, running VMs {want:?}",
            virtiofsd_sockets(&s.data_dir())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `berth server --runtime microvm` refuses to start, with one line naming
/// what is missing and a non-zero exit, without QEMU (a PATH without it)
/// and without the guest kernel it was given.
#[test]
fn runtime_microvm_refuses_to_start_without_qemu_or_a_kernel() {
    let init = std::env::current_exe().unwrap();
    let start = |kernel: &str, path: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args([
            "server",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--runtime",
            "microvm",
            "--microvm-accel",
            "tcg",
            "--microvm-init",
            init.to_str().unwrap(),
            "--microvm-kernel",
            kernel,
        ]);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        (out.status, last, err)
    };
    // No QEMU on PATH (an empty directory), a kernel that exists.
    let empty = tempfile::tempdir().unwrap();
    let kernel = std::env::current_exe().unwrap();
    let (status, last, err) = start(
        kernel.to_str().unwrap(),
        Some(empty.path().to_str().unwrap()),
    );
    assert!(!status.success(), "started without qemu: {err}");
    assert!(
        last.starts_with("error: --runtime microvm: ")
            && last.contains("qemu not found (qemu-system-x86_64)"),
        "{err}"
    );
    // A kernel that does not exist (QEMU found when installed).
    let (status, last, err) = start("/nonexistent/vmlinuz-berth-test", None);
    assert!(!status.success(), "started without a kernel: {err}");
    assert!(last.starts_with("error: --runtime microvm: "), "{err}");
    let qemu_installed = berth_runtime::microvm::testing::host_ready().is_ok();
    if qemu_installed {
        assert!(
            last.contains("guest kernel /nonexistent/vmlinuz-berth-test not found"),
            "{err}"
        );
    } else {
        assert!(last.contains("qemu not found"), "{err}");
    }
}

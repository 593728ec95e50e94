//! Volumes in a VM: one `virtiofsd` per volume per VM, serving the
//! volume's host directory (the Docker Engine's own for that named volume,
//! so containers and VMs share it) over a vhost-user socket in the VM's
//! directory; QEMU connects to it with a `vhost-user-fs-pci` device whose
//! tag the init mounts (`mount -t virtiofs`).
//!
//! Lifetime: each virtiofsd runs in its own session (a kill -9 of berth
//! leaves it serving its VM), its pid in `virtiofsd-<i>.pid` beside QEMU's
//! (found again after a restart of berth, told from a reused pid by its
//! socket argument). It exits by itself when its VM's QEMU goes (the
//! vhost-user connection closes); [`stop_all`] ends the ones left (a VM
//! removed, a launch that failed before QEMU connected).
//!
//! Sandbox: `namespace` (its own mount, pid and network namespaces, the
//! volume as its root) where this host lets a process make them, else
//! `chroot` (a container without `CAP_SYS_ADMIN`), found once by trying
//! ([`sandbox`]); virtiofsd sets it up only after QEMU connects, so a
//! refusal would otherwise surface as a VM that cannot mount its volume.
//! Tests force one or the other on a runtime
//! (`MicroVmRuntime::force_virtiofs_sandbox`, `testing` feature only) so
//! the `chroot` path is exercised on a host that allows namespaces; it
//! needs `CAP_SYS_CHROOT` (berth runs virtiofsd as itself, root).
//!
//! The cache mode is `none`: two VMs (or a VM and a container) sharing a
//! volume during a cutover see each other's writes at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::qemu;

/// How long virtiofsd gets to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Where virtiofsd is looked for: `$PATH`, then the Rust daemon's and QEMU's
/// own (Debian 12's `qemu-system-common` ships it in `/usr/lib/qemu`).
const CANDIDATES: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// The tag of volume `i` (virtio-fs tags are at most 36 bytes; volume names
/// may be longer, so the init is told which is which).
pub fn tag(i: usize) -> String {
    format!("berth-vol{i}")
}

/// virtiofsd `i`'s vhost-user socket in VM directory `dir`.
pub fn socket(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("fs{i}.sock"))
}

fn pidfile(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("virtiofsd-{i}.pid"))
}

fn log(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("virtiofsd-{i}.log"))
}

/// The argument that names virtiofsd `i` of `dir` on its command line.
fn socket_arg(dir: &Path, i: usize) -> String {
    format!("--socket-path={}", socket(dir, i).to_string_lossy())
}

/// The virtiofsd binary, or `None`.
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// The daemon's arguments for `source` at socket `i` of `dir`: QEMU's C
/// virtiofsd takes `-o` options, the Rust one (`--shared-dir`) its own.
pub fn args(
    rust_flavour: bool,
    sandbox: Sandbox,
    dir: &Path,
    i: usize,
    source: &Path,
) -> Vec<String> {
    let source = source.to_string_lossy().into_owned();
    let sandbox = sandbox.as_str();
    let mut args = vec![socket_arg(dir, i)];
    if rust_flavour {
        args.extend([
            format!("--shared-dir={source}"),
            "--cache=never".into(),
            format!("--sandbox={sandbox}"),
        ]);
    } else {
        args.extend([
            "-o".into(),
            format!("source={source}"),
            "-o".into(),
            "cache=none".into(),
            "-o".into(),
            format!("sandbox={sandbox}"),
        ]);
    }
    args
}

/// How virtiofsd confines itself to the volume's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Its own mount, pid and network namespaces, the volume as its root.
    Namespace,
    /// `chroot(2)` into the volume (no namespaces needed).
    Chroot,
}

impl Sandbox {
    /// The daemons' word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
        }
    }
}

/// [`Sandbox::Namespace`] when a child of this process may unshare the
/// namespaces virtiofsd's sandbox makes (tried once, on `binary --help`),
/// else [`Sandbox::Chroot`].
pub fn sandbox(binary: &Path) -> Sandbox {
    static CHOSEN: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        use std::os::unix::process::CommandExt;
        let mut probe = std::process::Command::new(binary);
        probe
            .arg("--help")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        unsafe {
            probe.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match probe.status() {
            Ok(_) => Sandbox::Namespace,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "microvm: this host does not let virtiofsd make its namespaces; volumes use its chroot sandbox"
                );
                Sandbox::Chroot
            }
        }
    })
}

/// Whether `binary` is the Rust virtiofsd (its help names `--shared-dir`).
fn is_rust_flavour(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--shared-dir")
                || String::from_utf8_lossy(&o.stderr).contains("--shared-dir")
        })
        .unwrap_or(false)
}

/// Starts virtiofsd `i` of VM directory `dir` serving `source`, in its own
/// session, with sandbox `forced` or else the one [`sandbox`] finds;
/// returns once its socket exists. With `read_only` the daemon sees
/// `source` read-only ([`read_only_view`]), so a guest that remounts its
/// volume read-write still cannot change the host's files. Err names the
/// volume's problem with the daemon's last words.
pub async fn start(
    binary: &Path,
    dir: &Path,
    i: usize,
    source: &Path,
    forced: Option<Sandbox>,
    read_only: bool,
) -> Result<(), String> {
    let log_path = log(dir, i);
    let log_file = std::fs::File::create(&log_path)
        .map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let (rust, sandbox) = {
        let b = binary.to_owned();
        tokio::task::spawn_blocking(move || {
            (is_rust_flavour(&b), forced.unwrap_or_else(|| sandbox(&b)))
        })
        .await
        .unwrap_or((false, forced.unwrap_or(Sandbox::Chroot)))
    };
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args(rust, sandbox, dir, i, source))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(false);
    let view = if read_only {
        use std::os::unix::ffi::OsStrExt;
        Some(
            std::ffi::CString::new(source.as_os_str().as_bytes())
                .map_err(|_| format!("{}: a NUL byte in the path", source.display()))?,
        )
    } else {
        None
    };
    // Its own session: signals to berth's process group do not reach it,
    // and it outlives a kill -9 of berth.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            match &view {
                Some(source) => read_only_view(source),
                None => Ok(()),
            }
        });
    }
    let mut child = command.spawn().map_err(|e| {
        if read_only {
            format!(
                "run {} with the volume read-only (its own mount namespace, a read-only bind of the volume): {e}",
                binary.display()
            )
        } else {
            format!("run {}: {e}", binary.display())
        }
    })?;
    let pid = child.id().unwrap_or_default();
    std::fs::write(pidfile(dir, i), pid.to_string())
        .map_err(|e| format!("write virtiofsd pidfile: {e}"))?;
    let sock = socket(dir, i);
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    let outcome = loop {
        if sock.exists() {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("virtiofsd exited ({status})"));
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(format!(
                "virtiofsd made no socket within {}s",
                SOCKET_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Reaped by this process while it lives (by init after a kill -9).
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    outcome.map_err(|why| {
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        match last {
            Some(line) => format!("{why}: {}", line.trim()),
            None => why,
        }
    })
}

/// In the child about to become virtiofsd: a mount namespace of its own
/// (private, so nothing propagates back to the host) where `source` is a
/// read-only bind of itself. The daemon's own sandbox binds and chroots
/// into it (a bind keeps the read-only flag), so every write it is asked
/// for fails with `EROFS` whatever the guest mounted; the host's view of
/// the volume is unchanged and the namespace goes with the daemon. Only
/// async-signal-safe calls (it runs between fork and exec).
fn read_only_view(source: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let none = std::ptr::null::<libc::c_char>();
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            source.as_ptr(),
            source.as_ptr(),
            none,
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            none,
            source.as_ptr(),
            none,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            std::ptr::null(),
        ))
    }
}

/// The pids of `dir`'s virtiofsd daemons that still run.
pub fn running(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(i) = name
            .to_str()
            .and_then(|n| n.strip_prefix("virtiofsd-"))
            .and_then(|n| n.strip_suffix(".pid"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if let Some(pid) = qemu::pid_running(&entry.path(), &socket_arg(dir, i)) {
            pids.push(pid);
        }
    }
    pids
}

/// Ends `dir`'s virtiofsd daemons: SIGTERM, then SIGKILL after a second.
pub async fn stop_all(dir: &Path) {
    let pids = running(dir);
    if pids.is_empty() {
        return;
    }
    for &pid in &pids {
        qemu::kill(pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !running(dir).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in running(dir) {
        qemu::kill(pid, libc::SIGKILL);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !running(dir).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_daemons_get_the_source_cache_none_and_a_sandbox() {
        let dir = Path::new("/data/vms/abc");
        let c = args(
            false,
            Sandbox::Namespace,
            dir,
            1,
            Path::new("/var/lib/docker/volumes/v/_data"),
        );
        assert_eq!(
            c,
            [
                "--socket-path=/data/vms/abc/fs1.sock",
                "-o",
                "source=/var/lib/docker/volumes/v/_data",
                "-o",
                "cache=none",
                "-o",
                "sandbox=namespace"
            ]
        );
        let r = args(true, Sandbox::Chroot, dir, 0, Path::new("/v"));
        assert_eq!(r[0], "--socket-path=/data/vms/abc/fs0.sock");
        assert!(r.contains(&"--shared-dir=/v".to_owned()));
        assert!(r.contains(&"--cache=never".to_owned()));
        assert!(r.contains(&"--sandbox=chroot".to_owned()));
        assert!(tag(35).len() <= berth_init::config::MAX_TAG_LEN);
    }

    #[test]
    fn nothing_runs_without_pidfiles_and_a_foreign_pid_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        assert!(running(dir.path()).is_empty());
        // Our own pid does not name the socket: not a virtiofsd of this VM.
        std::fs::write(pidfile(dir.path(), 0), std::process::id().to_string()).unwrap();
        assert!(running(dir.path()).is_empty());
    }
}

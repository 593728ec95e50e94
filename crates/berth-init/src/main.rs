//! berth-init, PID 1 of a berth microVM. See the library's docs for the
//! stages and channels; this file holds the system calls.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_init::config::{resolve_command, Backoff, Config, Network, CONFIG_PATH, MODULES_DIR};
use berth_init::lines::Framer;
use berth_init::protocol::{self, Control, Status};
use berth_init::user;

/// How long stage 1 waits for the root disk and `eth0` to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// After the app exits: how long the rest of the VM's processes get
/// between SIGTERM and SIGKILL, and how long output gets to drain.
const TEARDOWN_GRACE: Duration = Duration::from_millis(500);

/// The app's main pid, for the control thread (0 until started, -1 after).
static APP_PID: AtomicI32 = AtomicI32::new(0);
/// The host asked the app to stop (SIGTERM, SIGINT or SIGKILL through the
/// control port): no restart after that, as after `docker stop`.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn main() {
    if std::process::id() != 1 {
        eprintln!("berth-init: must run as PID 1 inside a berth microVM");
        std::process::exit(2);
    }
    let status = Arc::new(Mutex::new(StatusPort::Console));
    let exit = match run(&status) {
        Ok(exit) => exit,
        Err(message) => {
            // On the app's stderr too, so the host's "last output" of a
            // failed start names it (once stage 1 found the ports).
            if let Some(port) = find_port(protocol::STDERR_PORT, Duration::ZERO) {
                notice(&port, &format!("berth-init: {message}"));
            }
            report(&status, &Status::Error { message });
            Some((127, oom_kills() > 0))
        }
    };
    if let Some((code, oom)) = exit {
        report(
            &status,
            &Status::Exited {
                code,
                oom,
                at_ms: now_ns() / 1_000_000,
            },
        );
    }
    power_off();
}

/// Where status records go: the status port once found, the kernel console
/// before that (so a stage-1 failure is at least on the serial log).
enum StatusPort {
    Console,
    Port(File),
}

fn report(status: &Arc<Mutex<StatusPort>>, record: &Status) {
    let line = protocol::encode(record);
    let mut guard = status.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *guard {
        StatusPort::Port(file) => {
            let _ = file.write_all(line.as_bytes());
            let _ = file.flush();
        }
        StatusPort::Console => {
            if let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console") {
                let _ = console.write_all(format!("berth-init: {line}").as_bytes());
            }
        }
    }
}

/// Returns the app's last exit code and whether the OOM killer ran during
/// its last run, or `None` when no `Exited` record is due (probe boots).
fn run(status: &Arc<Mutex<StatusPort>>) -> Result<Option<(i32, bool)>, String> {
    let init_uptime_ms = uptime_ms();
    // Stage 1: the initramfs.
    mount("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755")?;
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    let text = fs::read_to_string(CONFIG_PATH).map_err(|e| format!("read {CONFIG_PATH}: {e}"))?;
    let config = Config::parse(&text).map_err(|e| e.to_string())?;
    for module in &config.modules {
        load_module(&format!("{MODULES_DIR}/{module}"))?;
    }
    if let Some(port) = find_port(protocol::STATUS_PORT, Duration::from_secs(5)) {
        let file = OpenOptions::new()
            .write(true)
            .open(&port)
            .map_err(|e| format!("open status port {port}: {e}"))?;
        *status.lock().unwrap_or_else(|e| e.into_inner()) = StatusPort::Port(file);
    }
    if config.probe {
        report(status, &Status::ProbeOk);
        return Ok(None);
    }
    wait_for(&config.root_device, DEVICE_WAIT)?;
    mkdir("/newroot");
    mount(&config.root_device, "/newroot", "ext4", 0, "")?;
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("/newroot{dir}");
        mkdir(&target);
        mount(dir, &target, "", libc::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    chroot(".")?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;

    // Stage 2: the app's root.
    prepare_root(&config)?;
    mount_volumes(&config)?;
    let stdout_port = find_port(protocol::STDOUT_PORT, Duration::from_secs(2))
        .ok_or("no stdout port (virtio-console) found")?;
    let stderr_port = find_port(protocol::STDERR_PORT, Duration::from_secs(2))
        .ok_or("no stderr port (virtio-console) found")?;
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    let identity = user::resolve(&config.user, &passwd, &group).map_err(|e| e.to_string())?;
    let env = config.effective_env(&identity.home);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let program = resolve_command(&config.argv[0], path, is_executable).ok_or_else(|| {
        format!(
            "entrypoint {:?} not found in the image (PATH={path})",
            config.argv[0]
        )
    })?;
    let workdir = if config.workdir.is_empty() {
        "/".to_owned()
    } else {
        config.workdir.clone()
    };
    if !Path::new(&workdir).is_dir() {
        let _ = fs::create_dir_all(&workdir);
    }

    let mut restarts = 0;
    let mut backoff = Backoff::default();
    let mut control = None;
    loop {
        let oom_before = oom_kills();
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let began = Instant::now();
        let pid = spawn(
            &program,
            &config.argv,
            &env,
            &workdir,
            &identity,
            out_write,
            err_write,
        )?;
        APP_PID.store(pid, Ordering::SeqCst);
        report(
            status,
            &Status::Started {
                pid,
                at_ms: now_ns() / 1_000_000,
                init_uptime_ms,
                app_uptime_ms: uptime_ms(),
            },
        );
        let pumps = [
            pump(out_read, stdout_port.clone()),
            pump(err_read, stderr_port.clone()),
        ];
        if control.is_none() {
            control = find_port(protocol::CONTROL_PORT, Duration::from_secs(2))
                .map(|port| thread::spawn(move || control_loop(&port)));
        }

        let code = reap_until(pid);
        APP_PID.store(-1, Ordering::SeqCst);
        // The app is gone: the rest of its processes go with it (as a
        // container's do when its main process exits).
        unsafe { libc::kill(-1, libc::SIGTERM) };
        let deadline = Instant::now() + TEARDOWN_GRACE;
        while Instant::now() < deadline && reap_any() {}
        unsafe { libc::kill(-1, libc::SIGKILL) };
        while reap_any() {}
        for pump in pumps {
            let _ = pump.join();
        }
        let oom = oom_kills() > oom_before;
        if STOPPING.load(Ordering::SeqCst) || !config.restart.again(code, restarts) {
            unsafe { libc::sync() };
            return Ok(Some((code, oom)));
        }
        restarts += 1;
        let delay = backoff.next(began.elapsed());
        notice(
            &stderr_port,
            &format!(
                "berth-init: the app exited with code {code}{}; restart {restarts} in {} ms",
                if oom { " (killed: out of memory)" } else { "" },
                delay.as_millis()
            ),
        );
        report(
            status,
            &Status::Restarting {
                code,
                oom,
                at_ms: now_ns() / 1_000_000,
                restarts,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
        );
        let until = Instant::now() + delay;
        while Instant::now() < until && !STOPPING.load(Ordering::SeqCst) {
            thread::sleep(
                Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
            );
        }
        if STOPPING.load(Ordering::SeqCst) {
            unsafe { libc::sync() };
            return Ok(Some((code, oom)));
        }
    }
}

/// Writes one line of the init's own on the app's stderr port (so `berth
/// logs` shows why the app was restarted), as a stamped record.
fn notice(port: &str, text: &str) {
    let mut out = Vec::new();
    let mut framer = Framer::default();
    framer.push(text.as_bytes(), now_ns(), &mut out);
    framer.finish(now_ns(), &mut out);
    if let Ok(mut file) = OpenOptions::new().write(true).open(port) {
        let _ = file.write_all(&out);
        let _ = file.flush();
    }
}

fn prepare_root(config: &Config) -> Result<(), String> {
    for (dir, fstype, data) in [
        ("/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620"),
        ("/dev/shm", "tmpfs", "mode=1777"),
        ("/tmp", "tmpfs", "mode=1777"),
    ] {
        mkdir(dir);
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        if let Err(e) = mount(fstype, dir, fstype, flags, data) {
            report_console(&e);
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    let name = config.hostname.as_bytes();
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(format!("sethostname: {}", errno_text()));
    }
    interface_up("lo", None)?;
    if let Some(network) = &config.network {
        wait_for("/sys/class/net/eth0", DEVICE_WAIT)?;
        interface_up("eth0", Some(network))?;
        add_default_route(network.gateway)?;
        let [a, b, c, d] = network.dns;
        let _ = fs::write("/etc/resolv.conf", format!("nameserver {a}.{b}.{c}.{d}\n"));
    }
    let _ = fs::write(
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n",
            config.hostname
        ),
    );
    let _ = fs::write("/etc/hostname", format!("{}\n", config.hostname));
    Ok(())
}

/// Mounts each volume (virtio-fs, shared by the host) over its target,
/// made when missing. As the Docker Engine does for a volume that is
/// empty, the image's files at the target are copied into it (owners and
/// modes kept) and its root takes the owner and mode of the image's
/// directory: the volume is mounted aside first, filled, then moved over
/// the target.
fn mount_volumes(config: &Config) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for (i, m) in config.mounts.iter().enumerate() {
        let name = if m.volume.is_empty() {
            &m.tag
        } else {
            &m.volume
        };
        fs::create_dir_all(&m.target)
            .map_err(|e| format!("volume {name}: cannot make {}: {e}", m.target))?;
        let under =
            fs::metadata(&m.target).map_err(|e| format!("volume {name}: {}: {e}", m.target))?;
        let aside = format!("/.berth-volume-{i}");
        mkdir(&aside);
        let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
        mount(&m.tag, &aside, "virtiofs", flags, "").map_err(|e| format!("volume {name}: {e}"))?;
        let empty = fs::read_dir(&aside).is_ok_and(|mut d| d.next().is_none());
        if empty && !m.read_only {
            copy_tree(Path::new(&m.target), Path::new(&aside)).map_err(|e| {
                format!(
                    "volume {name}: cannot copy the image's {} into it: {e}",
                    m.target
                )
            })?;
            let _ = std::os::unix::fs::chown(&aside, Some(under.uid()), Some(under.gid()));
            let _ = fs::set_permissions(&aside, fs::Permissions::from_mode(under.mode() & 0o7777));
        }
        mount(&aside, &m.target, "", libc::MS_MOVE, "")
            .map_err(|e| format!("volume {name}: {e}"))?;
        let _ = fs::remove_dir(&aside);
    }
    Ok(())
}

/// Copies the directory tree `from` into `to` (which exists): directories,
/// regular files and symlinks with their owners and modes; other kinds
/// (devices, sockets, fifos) are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        if !kind.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

fn report_console(message: &str) {
    if let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(console, "berth-init: {message}");
    }
}

/// Forks and execs the app with its own session; stdout/stderr go to the
/// pipes, stdin is `/dev/null`.
fn spawn(
    program: &str,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    identity: &user::Identity,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<i32, String> {
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let program_c = cstr(program)?;
    let argv_c = argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_c = env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let workdir_c = cstr(workdir)?;
    let devnull = cstr("/dev/null")?;
    let groups: Vec<libc::gid_t> = identity.groups.clone();
    let (uid, gid) = (identity.uid, identity.gid);
    let (out_fd, err_fd) = (stdout.as_raw_fd(), stderr.as_raw_fd());

    // Everything the child needs is allocated above: between fork and exec
    // only async-signal-safe calls are made.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", errno_text()));
    }
    if pid == 0 {
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setsid();
            let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
            libc::dup2(null, 0);
            libc::dup2(out_fd, 1);
            libc::dup2(err_fd, 2);
            let fail = |what: &[u8]| -> ! {
                libc::write(2, what.as_ptr().cast(), what.len());
                libc::_exit(126)
            };
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                fail(b"berth-init: setgroups failed\n");
            }
            if libc::setgid(gid) != 0 {
                fail(b"berth-init: setgid failed\n");
            }
            if libc::setuid(uid) != 0 {
                fail(b"berth-init: setuid failed\n");
            }
            if libc::chdir(workdir_c.as_ptr()) != 0 {
                fail(b"berth-init: chdir to the working directory failed\n");
            }
            libc::execve(program_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            fail(b"berth-init: exec failed\n");
        }
    }
    drop(stdout);
    drop(stderr);
    Ok(pid)
}

/// Reaps every child until `main` exits; returns its exit code (128 +
/// signal when killed).
fn reap_until(main: i32) -> i32 {
    loop {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return 255;
        }
        if pid == main {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
    }
}

/// Reaps one child without blocking long; false when none is left.
fn reap_any() -> bool {
    let mut status = 0;
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid == 0 {
        thread::sleep(Duration::from_millis(10));
        return true;
    }
    pid > 0
}

/// Copies one of the app's pipes to its port as stamped line records.
fn pump(read: OwnedFd, port: String) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut input = File::from(read);
        let mut output = match OpenOptions::new().write(true).open(&port) {
            Ok(f) => Some(f),
            Err(e) => {
                report_console(&format!("open {port}: {e}"));
                None
            }
        };
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n], now_ns(), &mut out);
            if let Some(port) = output.as_mut() {
                let _ = port.write_all(&out);
            }
            out.clear();
        }
        framer.finish(now_ns(), &mut out);
        if let Some(port) = output.as_mut() {
            let _ = port.write_all(&out);
            let _ = port.flush();
        }
    })
}

/// Applies the host's control records until the port closes.
fn control_loop(port: &str) {
    loop {
        let Ok(file) = File::open(port) else { return };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            for record in protocol::decode_all::<Control>(&line) {
                match record {
                    Control::Signal { signal } => {
                        if [libc::SIGTERM, libc::SIGINT, libc::SIGKILL].contains(&signal) {
                            STOPPING.store(true, Ordering::SeqCst);
                        }
                        let pid = APP_PID.load(Ordering::SeqCst);
                        if signal == libc::SIGKILL {
                            unsafe { libc::kill(-1, libc::SIGKILL) };
                        } else if pid > 0 {
                            unsafe { libc::kill(pid, signal) };
                        }
                    }
                }
            }
        }
        // The host closed its end; wait for the next connection.
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `/dev/vportNpM` device of the virtio-console port named `name`.
fn find_port(name: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Some(dev.to_string_lossy().into_owned());
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(path: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    while !Path::new(path).exists() {
        if Instant::now() >= deadline {
            return Err(format!("{path} did not appear within {}s", wait.as_secs()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn is_executable(path: &str) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The kernel's OOM-kill counter (`oom_kill` in `/proc/vmstat`).
fn oom_kills() -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Time since the kernel booted (CLOCK_BOOTTIME), in ms.
fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

fn mkdir(path: &str) {
    let _ = fs::create_dir_all(path);
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).expect("mount arguments have no NUL");
    let (src, tgt, fs_c, data_c) = (c(source), c(target), c(fstype), c(data));
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fs_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(format!("mount {source} on {target}: {}", errno_text()));
    }
    Ok(())
}

fn chroot(path: &str) -> Result<(), String> {
    let p = CString::new(path).expect("no NUL");
    if unsafe { libc::chroot(p.as_ptr()) } != 0 {
        return Err(format!("chroot {path}: {}", errno_text()));
    }
    Ok(())
}

fn load_module(path: &str) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open module {path}: {e}"))?;
    let params = CString::default();
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(format!("load module {path}: {}", errno_text()));
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", errno_text()));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `struct ifreq` with room for a `sockaddr` or the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn set_addr(&mut self, addr: [u8; 4]) {
        let sin = sockaddr_in(addr);
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&sin as *const libc::sockaddr_in).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            )
        };
        self.data[..bytes.len()].copy_from_slice(bytes);
    }
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr(addr: [u8; 4]) -> libc::sockaddr {
    let sin = sockaddr_in(addr);
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Socket(OwnedFd);

impl Socket {
    fn inet() -> Result<Self, String> {
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", errno_text()));
        }
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg as *mut T) } != 0 {
            return Err(format!("{what}: {}", errno_text()));
        }
        Ok(())
    }
}

const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCADDRT: libc::c_ulong = 0x890b;

fn interface_up(name: &str, network: Option<&Network>) -> Result<(), String> {
    let socket = Socket::inet()?;
    if let Some(network) = network {
        let mut req = IfReq::new(name);
        req.set_addr(network.address);
        socket.ioctl(SIOCSIFADDR, &mut req, &format!("set {name} address"))?;
        let mut req = IfReq::new(name);
        req.set_addr(network.netmask());
        socket.ioctl(SIOCSIFNETMASK, &mut req, &format!("set {name} netmask"))?;
    }
    let mut req = IfReq::new(name);
    socket.ioctl(SIOCGIFFLAGS, &mut req, &format!("get {name} flags"))?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    socket.ioctl(SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
}

/// `struct rtentry` (x86_64 layout).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn add_default_route(gateway: [u8; 4]) -> Result<(), String> {
    const RTF_UP: libc::c_ushort = 0x1;
    const RTF_GATEWAY: libc::c_ushort = 0x2;
    let socket = Socket::inet()?;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr([0; 4]),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr([0; 4]),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    socket.ioctl(SIOCADDRT, &mut route, "add default route")
}

fn power_off() -> ! {
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
        // Power-off failed (no ACPI): reset; QEMU runs with -no-reboot.
        libc::reboot(libc::LINUX_REBOOT_CMD_RESTART);
    }
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

//! QEMU's vocabulary: the command line of a VM, launching it daemonized
//! (its own session, so it outlives berth), finding it again by pidfile,
//! and choosing the accelerator.
//!
//! Machine: `q35` with virtio-pci devices. Measured on this kind of host
//! (PVM, TCG): `-M microvm` stalls at TSC calibration with Debian's cloud
//! kernel, q35 reaches user space; see ARCHITECTURE.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_init::protocol;

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a probe boot under it succeeds, TCG otherwise.
    Auto,
    Kvm,
    /// Pure emulation: slow, works everywhere.
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (use auto, kvm or tcg)"
            )),
        }
    }
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Files of one VM inside its directory.
pub const INITRD: &str = "initrd.cpio";
pub const PIDFILE: &str = "qemu.pid";
pub const SERIAL_LOG: &str = "serial.log";
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";
pub const STATUS_LOG: &str = "status.log";
pub const CONTROL_SOCK: &str = "control.sock";

/// Longest unix socket path the kernel accepts (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// What one VM is made of.
#[derive(Debug, Clone)]
pub struct VmLaunch {
    pub name: String,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub root_disk: PathBuf,
    /// `kvm` or `tcg` (never `auto`).
    pub accel: Accel,
    pub memory_mib: u64,
    pub cpus: u32,
    /// `(host port on 127.0.0.1, guest port)`.
    pub forward: Option<(u16, u16)>,
    /// Volumes shared through virtio-fs: `(tag, virtiofsd's socket)`.
    /// With any, guest memory is a shared memfd (vhost-user needs it).
    pub shares: Vec<(String, PathBuf)>,
}

impl VmLaunch {
    /// QEMU's arguments (without the program).
    pub fn args(&self) -> Vec<String> {
        let dir = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("berth-{}", self.name),
            "-machine".into(),
            if self.shares.is_empty() {
                "q35".into()
            } else {
                "q35,memory-backend=mem".into()
            },
            "-accel".into(),
            match self.accel {
                Accel::Kvm => "kvm".into(),
                _ if self.cpus > 1 => "tcg,thread=multi".into(),
                _ => "tcg".into(),
            },
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.cpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", dir(SERIAL_LOG)),
            "-kernel".into(),
            self.kernel.to_string_lossy().into_owned(),
            "-initrd".into(),
            dir(INITRD),
            "-append".into(),
            format!(
                "console=ttyS0 quiet panic=-1 rdinit={}",
                super::initramfs::INIT_PATH
            ),
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=root,snapshot=on",
                self.root_disk.to_string_lossy()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=root".into(),
        ];
        if !self.shares.is_empty() {
            args.extend([
                "-object".into(),
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            ]);
        }
        for (i, (tag, socket)) in self.shares.iter().enumerate() {
            args.extend([
                "-chardev".into(),
                format!("socket,id=fs{i},path={}", socket.to_string_lossy()),
                "-device".into(),
                format!("vhost-user-fs-pci,chardev=fs{i},tag={tag}"),
            ]);
        }
        let mut netdev = "user,id=net0".to_owned();
        if let Some((host, guest)) = self.forward {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=net0,romfile=".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
        ]);
        for (id, file, port) in [
            ("out", STDOUT_LOG, protocol::STDOUT_PORT),
            ("err", STDERR_LOG, protocol::STDERR_PORT),
            ("status", STATUS_LOG, protocol::STATUS_PORT),
        ] {
            args.extend([
                "-chardev".into(),
                format!("file,id={id},path={}", dir(file)),
                "-device".into(),
                format!("virtserialport,chardev={id},name={port}"),
            ]);
        }
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=ctl,path={},server=on,wait=off",
                dir(CONTROL_SOCK)
            ),
            "-device".into(),
            format!("virtserialport,chardev=ctl,name={}", protocol::CONTROL_PORT),
            "-pidfile".into(),
            dir(PIDFILE),
            "-daemonize".into(),
        ]);
        args
    }
}

/// The pid of the VM whose directory is `dir`, if its QEMU still runs (the
/// pidfile's process must name `dir` on its command line, so a reused pid
/// is not mistaken for it).
pub fn running_pid(dir: &Path) -> Option<i32> {
    let needle = dir.join(PIDFILE);
    pid_running(&dir.join(PIDFILE), &needle.to_string_lossy())
}

/// The pid in `pidfile` if that process runs (not a zombie) and one of its
/// arguments is `arg` (so a reused pid is not mistaken for it).
pub fn pid_running(pidfile: &Path, arg: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let alive = cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes());
    // A zombie (exited, not yet reaped) is not running.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (alive && !zombie).then_some(pid)
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: i32) {
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Polls until the VM in `dir` is gone or `within` passed; true when gone.
pub async fn wait_gone(dir: &Path, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if running_pid(dir).is_none() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> VmLaunch {
        VmLaunch {
            name: "web-1".into(),
            dir: PathBuf::from("/data/vms/abc"),
            kernel: PathBuf::from("/boot/vmlinuz-x"),
            root_disk: PathBuf::from("/data/images/sha.ext4"),
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            forward: Some((41000, 3000)),
            shares: Vec::new(),
        }
    }

    #[test]
    fn volumes_are_vhost_user_fs_devices_on_shared_memory() {
        let mut l = launch();
        assert_eq!(after(&l.args(), "-machine"), ["q35"]);
        assert!(after(&l.args(), "-object").is_empty());
        l.shares = vec![
            ("berth-vol0".into(), PathBuf::from("/data/vms/abc/fs0.sock")),
            ("berth-vol1".into(), PathBuf::from("/data/vms/abc/fs1.sock")),
        ];
        let args = l.args();
        assert_eq!(after(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(
            after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        let fs: Vec<&str> = after(&args, "-device")
            .into_iter()
            .filter(|d| d.starts_with("vhost-user-fs-pci"))
            .collect();
        assert_eq!(
            fs,
            [
                "vhost-user-fs-pci,chardev=fs0,tag=berth-vol0",
                "vhost-user-fs-pci,chardev=fs1,tag=berth-vol1"
            ]
        );
        assert!(after(&args, "-chardev").contains(&"socket,id=fs1,path=/data/vms/abc/fs1.sock"));
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn publishes_on_loopback_only_and_daemonizes() {
        let args = launch().args();
        assert_eq!(
            after(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:41000-:3000"]
        );
        assert!(args.contains(&"-daemonize".to_owned()));
        assert_eq!(after(&args, "-pidfile"), ["/data/vms/abc/qemu.pid"]);
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-m"), ["256M"]);
        assert!(after(&args, "-drive")[0].ends_with("snapshot=on"));
    }

    #[test]
    fn ports_are_named_for_the_init() {
        let args = launch().args();
        let ports: Vec<&str> = after(&args, "-device")
            .into_iter()
            .filter_map(|d| d.strip_prefix("virtserialport,"))
            .collect();
        assert_eq!(
            ports,
            [
                "chardev=out,name=berth.stdout",
                "chardev=err,name=berth.stderr",
                "chardev=status,name=berth.status",
                "chardev=ctl,name=berth.control"
            ]
        );
    }

    #[test]
    fn workers_publish_nothing_and_kvm_multi_cpu() {
        let mut l = launch();
        l.forward = None;
        l.accel = Accel::Kvm;
        l.cpus = 2;
        let args = l.args();
        assert_eq!(after(&args, "-netdev"), ["user,id=net0"]);
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        l.accel = Accel::Tcg;
        assert_eq!(after(&l.args(), "-accel"), ["tcg,thread=multi"]);
    }

    #[test]
    fn accel_parses() {
        assert_eq!("auto".parse::<Accel>(), Ok(Accel::Auto));
        assert_eq!("tcg".parse::<Accel>(), Ok(Accel::Tcg));
        assert!("xen".parse::<Accel>().unwrap_err().contains("xen"));
    }

    #[test]
    fn no_pidfile_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_pid(dir.path()), None);
        std::fs::write(dir.path().join(PIDFILE), std::process::id().to_string()).unwrap();
        // Our own pid does not name the directory: not this VM.
        assert_eq!(running_pid(dir.path()), None);
    }
}

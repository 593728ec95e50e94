//! [`MicroVmRuntime`]: the [`Runtime`] where each instance is its own QEMU
//! virtual machine with berth's guest init (`berth-init`) as PID 1.
//!
//! - **Images** stay in the Docker Engine (built and inspected there); a
//!   VM's root disk is the image's filesystem as ext4 ([`rootfs`]), cached
//!   per image id and shared read-only (`snapshot=on`: writes go to a
//!   throw-away overlay, as a container's writable layer).
//! - **Boot**: the guest kernel ([`kernel`]) with a per-instance initramfs
//!   ([`initramfs`]) holding berth-init, the virtio modules and the merged
//!   config (argv = entrypoint + cmd, env = image env + berth's, working
//!   directory, user, hostname).
//! - **Channels** (no vsock here): virtio-console ports. stdout, stderr and
//!   status go to files in the VM's directory (so nothing is lost while
//!   berth is down), control comes from a unix socket (signals).
//! - **Lifetime**: QEMU runs daemonized in its own session with a pidfile;
//!   a kill -9 of berth leaves VMs running, and `list_owned` finds them again
//!   from `<state>/vms/*/meta.json` (adopted, not rebooted).
//! - **Network**: QEMU user-mode networking; `spec.port` is forwarded from
//!   an ephemeral port on 127.0.0.1 (`hostfwd`), so the edge, health checks
//!   and drain work as with containers.
//!
//! - **Restarts**: the spec's restart policy goes to the init, which starts
//!   the app again inside the same VM with Docker's backoff (see
//!   `berth_init::config::Restart`); `inspect` counts the restarts and says
//!   `Restarting` between two runs. A host stop is never restarted.
//!
//! - **Volumes**: the engine's named volume's directory shared through
//!   virtio-fs, one virtiofsd per volume ([`virtiofs`]), mounted by the
//!   init before the app; VMs count as the volume's users
//!   ([`volumes::WithVms`]).
//!
//! Not supported (ignored, documented): PID limits.

pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod rootfs;
pub mod select;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod virtiofs;
pub mod volumes;

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_init::config::{Config as InitConfig, Mount as InitMount, Network, Restart};
use berth_init::lines;
use berth_init::protocol::{self, Control, Status};
use bollard::errors::Error as DockerError;
use bollard::Docker;
use chrono::{DateTime, TimeZone, Utc};
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub use kernel::GuestKernel;
pub use qemu::Accel;
pub use select::{Isolating, ISOLATION_LABEL, MICROVM};

use crate::logs::MAX_LINE_BYTES;
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::{
    Endpoint, Instance, InstanceSpec, InstanceState, InstanceStatus, LogChunk, LogOptions,
    LogStream, OneOffOutcome, RestartPolicy, ONEOFF_MAX_LINES, OWNER_LABEL, PORT_LABEL,
};

/// Guest memory when the spec sets no limit.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Smallest guest memory: the kernel and init need about 60 MiB.
pub const MIN_MEMORY_MIB: u64 = 128;
/// How long a probe boot under KVM may take before `auto` falls back to TCG.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The guest memory (MiB) and vCPUs a VM gets for `limits`: the memory
/// limit rounded down to MiB and at least [`MIN_MEMORY_MIB`] (else
/// [`DEFAULT_MEMORY_MIB`]), the CPU limit rounded up to 1..=16 (else 1).
pub fn guest_resources(limits: &crate::spec::Limits) -> (u64, u32) {
    let memory_mib = limits
        .memory_bytes
        .map(|b| (b / (1024 * 1024)).max(MIN_MEMORY_MIB))
        .unwrap_or(DEFAULT_MEMORY_MIB);
    let cpus = limits
        .nano_cpus
        .map(|n| {
            u32::try_from((n + 999_999_999) / 1_000_000_000)
                .unwrap_or(1)
                .clamp(1, 16)
        })
        .unwrap_or(1);
    (memory_mib, cpus)
}

/// How the microVM runtime is set up (from the server's flags).
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// Where VMs and root disks live (`<data dir>/microvm`).
    pub state_dir: PathBuf,
    /// The guest kernel; `None` finds `/boot/vmlinuz-*-cloud-amd64`.
    pub kernel: Option<PathBuf>,
    /// The static berth-init binary.
    pub init: PathBuf,
    pub accel: Accel,
    /// The QEMU binary (`qemu-system-x86_64`).
    pub qemu: PathBuf,
}

/// Why the microVM runtime cannot run on this host.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Kernel(#[from] kernel::KernelError),
    #[error("qemu not found ({0}): install qemu-system-x86")]
    NoQemu(String),
    #[error(
        "berth-init not found at {0} (build it with scripts/build-init.sh or pass --microvm-init)"
    )]
    NoInit(PathBuf),
    #[error("kvm requested but {0}")]
    NoKvm(String),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state dir {0} is too long for the VMs' unix sockets")]
    StateDirTooLong(PathBuf),
}

/// A [`Runtime`] running each instance in a QEMU microVM.
///
/// [`MicroVmRuntime::open`] only prepares the state dir: inspecting,
/// stopping, removing, listing and reading the logs of existing VMs need
/// nothing else. What booting needs (QEMU, kernel, modules, berth-init, the
/// accelerator) is checked on the first start, once ([`MicroVmRuntime::new`]
/// checks it up front).
#[derive(Clone)]
pub struct MicroVmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: MicroVmConfig,
    boot: tokio::sync::OnceCell<Result<Boot, String>>,
    /// Serializes root-disk builds.
    build_lock: tokio::sync::Mutex<()>,
    /// virtiofsd's sandbox when a test forced one (else probed).
    virtiofs_sandbox: std::sync::OnceLock<virtiofs::Sandbox>,
}

/// What booting a VM needs, settled once.
struct Boot {
    kernel: GuestKernel,
    /// `kvm` or `tcg`.
    accel: Accel,
}

/// What berth keeps about a VM (`<vm dir>/meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    image: String,
    labels: BTreeMap<String, String>,
    port: Option<u16>,
    host_port: Option<u16>,
    memory_mib: u64,
    cpus: u32,
    accel: String,
    started_at: DateTime<Utc>,
    /// The engine names of the volumes it mounts (virtio-fs).
    #[serde(default)]
    volumes: Vec<String>,
}

impl MicroVmRuntime {
    /// Prepares the state dir; boot requirements are checked at the first
    /// start.
    pub fn open(docker: Docker, config: MicroVmConfig) -> Result<Self, SetupError> {
        for dir in [
            config.state_dir.join("vms"),
            config.state_dir.join("images"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| SetupError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let state_dir =
            std::fs::canonicalize(&config.state_dir).map_err(|source| SetupError::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        // vms/<16 hex>/control.sock must fit in sun_path.
        if state_dir
            .join("vms/0123456789abcdef")
            .join(qemu::CONTROL_SOCK)
            .as_os_str()
            .len()
            > qemu::MAX_SOCKET_PATH
        {
            return Err(SetupError::StateDirTooLong(state_dir));
        }
        Ok(MicroVmRuntime {
            inner: Arc::new(Inner {
                docker,
                config: MicroVmConfig {
                    state_dir,
                    ..config
                },
                boot: tokio::sync::OnceCell::new(),
                build_lock: tokio::sync::Mutex::new(()),
                virtiofs_sandbox: std::sync::OnceLock::new(),
            }),
        })
    }

    /// [`open`](Self::open), then checks the host (QEMU, kernel and modules,
    /// berth-init) and settles the accelerator: `auto` boots a probe VM
    /// under KVM with a timeout and falls back to TCG with a warning.
    pub async fn new(docker: Docker, config: MicroVmConfig) -> Result<Self, SetupError> {
        let runtime = Self::open(docker, config)?;
        let boot = runtime.setup_boot().await?;
        let _ = runtime.inner.boot.set(Ok(boot));
        Ok(runtime)
    }

    async fn setup_boot(&self) -> Result<Boot, SetupError> {
        let config = &self.inner.config;
        which(&config.qemu).ok_or_else(|| SetupError::NoQemu(config.qemu.display().to_string()))?;
        if !config.init.is_file() {
            return Err(SetupError::NoInit(config.init.clone()));
        }
        let kernel = GuestKernel::find(config.kernel.as_deref())?;
        let accel = match config.accel {
            Accel::Tcg => Accel::Tcg,
            Accel::Kvm => {
                kvm_usable().map_err(SetupError::NoKvm)?;
                Accel::Kvm
            }
            Accel::Auto => match kvm_usable() {
                Err(why) => {
                    tracing::info!("microvm: {why}; using TCG");
                    Accel::Tcg
                }
                Ok(()) => match self.probe(&kernel, Accel::Kvm).await {
                    Ok(()) => Accel::Kvm,
                    Err(why) => {
                        tracing::warn!(
                            "microvm: a probe VM did not boot under KVM ({why}); falling back to TCG (slow)"
                        );
                        Accel::Tcg
                    }
                },
            },
        };
        tracing::info!(
            kernel = %kernel.image.display(),
            accel = accel.as_str(),
            "microvm runtime ready"
        );
        Ok(Boot { kernel, accel })
    }

    /// What booting needs; checked once, at the first call.
    async fn boot(&self) -> Result<&Boot, RuntimeError> {
        self.inner
            .boot
            .get_or_init(|| async { self.setup_boot().await.map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|why| RuntimeError::Backend {
                op: "microvm runtime",
                message: format!("this server cannot run microVMs: {why}"),
            })
    }

    /// The accelerator VMs run with (`kvm` or `tcg`) once settled, else the
    /// configured one.
    pub fn accel(&self) -> Accel {
        match self.inner.boot.get() {
            Some(Ok(boot)) => boot.accel,
            _ => self.inner.config.accel,
        }
    }

    /// The guest kernel VMs boot, once settled.
    pub fn kernel(&self) -> Option<&Path> {
        match self.inner.boot.get() {
            Some(Ok(boot)) => Some(&boot.kernel.image),
            _ => None,
        }
    }

    /// Where VM `id`'s boot time went, from the init's `Started` record:
    /// `(kernel, init)` in ms (kernel boot to the init, init to the app).
    /// `None` before the app started.
    pub fn boot_times(&self, id: &str) -> Option<(u64, u64)> {
        let (dir, _) = self.find(id).ok()?;
        statuses(&dir).into_iter().find_map(|s| match s {
            Status::Started {
                init_uptime_ms,
                app_uptime_ms,
                ..
            } => Some((init_uptime_ms, app_uptime_ms.saturating_sub(init_uptime_ms))),
            _ => None,
        })
    }

    /// The pid of VM `id`'s QEMU process while it runs.
    pub fn vmm_pid(&self, id: &str) -> Option<i32> {
        let (dir, _) = self.find(id).ok()?;
        qemu::running_pid(&dir)
    }

    /// Whether `id` names a VM of this runtime (running or not).
    pub fn knows(&self, id: &str) -> bool {
        self.find(id).is_ok()
    }

    /// Boots a VM that only loads its modules and reports `probe_ok`.
    async fn probe(&self, kernel: &GuestKernel, accel: Accel) -> Result<(), String> {
        let dir = tempfile::Builder::new()
            .prefix("probe-")
            .tempdir_in(self.inner.config.state_dir.join("vms"))
            .map_err(|e| e.to_string())?;
        let config = InitConfig {
            argv: vec!["/probe".into()],
            env: Vec::new(),
            workdir: String::new(),
            user: String::new(),
            hostname: "probe".into(),
            modules: Vec::new(),
            root_device: "/dev/vda".into(),
            network: None,
            probe: true,
            restart: Restart::Never,
            mounts: Vec::new(),
        };
        self.write_initrd(dir.path(), kernel.modules.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        // Any readable file does as the (unused) root disk.
        let launch = qemu::VmLaunch {
            name: "probe".into(),
            dir: dir.path().to_owned(),
            kernel: kernel.image.clone(),
            root_disk: dir.path().join(qemu::INITRD),
            accel,
            memory_mib: MIN_MEMORY_MIB,
            cpus: 1,
            forward: None,
            shares: Vec::new(),
        };
        self.launch(&launch).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let result = loop {
            let status =
                std::fs::read_to_string(dir.path().join(qemu::STATUS_LOG)).unwrap_or_default();
            if protocol::decode_all::<Status>(&status).contains(&Status::ProbeOk) {
                break Ok(());
            }
            if qemu::running_pid(dir.path()).is_none() {
                break Err("the probe VM exited without reporting".to_owned());
            }
            if Instant::now() >= deadline {
                break Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(pid) = qemu::running_pid(dir.path()) {
            qemu::kill(pid, libc::SIGKILL);
            qemu::wait_gone(dir.path(), Duration::from_secs(5)).await;
        }
        result
    }

    fn vms_dir(&self) -> PathBuf {
        self.inner.config.state_dir.join("vms")
    }

    fn images_dir(&self) -> PathBuf {
        self.inner.config.state_dir.join("images")
    }

    /// A VM's directory: a hash of its name (names may be long; unix socket
    /// paths may not).
    fn vm_dir(&self, name: &str) -> PathBuf {
        self.vms_dir().join(name_hash(name))
    }

    fn read_meta(dir: &Path) -> Option<Meta> {
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()
    }

    /// The directory and meta of instance `id` (= its name).
    fn find(&self, id: &str) -> Result<(PathBuf, Meta), RuntimeError> {
        let dir = self.vm_dir(id);
        match Self::read_meta(&dir) {
            Some(meta) if meta.name == id => Ok((dir, meta)),
            _ => Err(RuntimeError::NotFound(id.to_owned())),
        }
    }

    /// Writes the VM's initramfs: berth-init, `modules` (load order) and
    /// `config`.
    async fn write_initrd(
        &self,
        dir: &Path,
        modules: Vec<PathBuf>,
        config: InitConfig,
    ) -> Result<(), RuntimeError> {
        let init = self.inner.config.init.clone();
        let path = dir.join(qemu::INITRD);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let init = std::fs::read(&init)?;
            let mut loaded = Vec::new();
            for module in &modules {
                let name = module
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                loaded.push((name, std::fs::read(module)?));
            }
            let config = InitConfig {
                modules: loaded.iter().map(|(n, _)| n.clone()).collect(),
                ..config
            };
            let config = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
            let mut out = Vec::new();
            initramfs::write_archive(&mut out, &initramfs::entries(&init, &config, &loaded))?;
            // It holds the app's environment (secrets): owner only.
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            std::io::Write::write_all(&mut file, &out)
        })
        .await
        .map_err(|e| backend("write initramfs", e))?
        .map_err(|e| backend("write initramfs", e))
    }

    async fn launch(&self, launch: &qemu::VmLaunch) -> Result<(), RuntimeError> {
        let output = tokio::process::Command::new(&self.inner.config.qemu)
            .args(launch.args())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| backend("run qemu", e))?;
        if !output.status.success() {
            return Err(RuntimeError::Backend {
                op: "start microvm",
                message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Image id and merged init config for `spec`.
    async fn image_config(
        &self,
        spec: &InstanceSpec,
        oneoff: bool,
    ) -> Result<(String, InitConfig), RuntimeError> {
        let inspect = match self.inner.docker.inspect_image(&spec.image).await {
            Ok(i) => i,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(RuntimeError::ImageNotFound(spec.image.clone())),
            Err(e) => return Err(backend("inspect image", e)),
        };
        let id = inspect.id.unwrap_or_else(|| spec.image.clone());
        let cfg = inspect.config.unwrap_or_default();
        let mut argv = cfg.entrypoint.unwrap_or_default();
        argv.extend(spec.command.clone().or(cfg.cmd).unwrap_or_default());
        let mut env: Vec<(String, String)> = cfg
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        env.extend(spec.env.iter().cloned());
        if argv.is_empty() {
            return Err(RuntimeError::Backend {
                op: "start microvm",
                message: format!("image {} has no entrypoint or cmd", spec.image),
            });
        }
        Ok((
            id,
            InitConfig {
                argv,
                env,
                workdir: cfg.working_dir.unwrap_or_default(),
                user: cfg.user.unwrap_or_default(),
                hostname: hostname(&spec.name),
                modules: Vec::new(),
                root_device: "/dev/vda".into(),
                network: Some(Network::qemu_user()),
                probe: false,
                mounts: Vec::new(),
                // A one-off never restarts (as with containers).
                restart: if oneoff {
                    Restart::Never
                } else {
                    init_restart(spec.restart)
                },
            },
        ))
    }

    async fn create(&self, spec: &InstanceSpec, oneoff: bool) -> Result<Instance, RuntimeError> {
        spec.validate()?;
        let dir = self.vm_dir(&spec.name);
        if dir.exists() {
            return Err(RuntimeError::Conflict(format!(
                "instance {} already exists",
                spec.name
            )));
        }
        let boot = self.boot().await?;
        let (image_id, mut init_config) = self.image_config(spec, oneoff).await?;
        let volumes = self.volume_sources(spec, &boot.kernel).await?;
        let mut modules = boot.kernel.modules.clone();
        if let Some(v) = &volumes {
            modules.extend(v.modules.iter().cloned());
            init_config.mounts = spec
                .mounts
                .iter()
                .enumerate()
                .map(|(i, m)| InitMount {
                    tag: virtiofs::tag(i),
                    target: m.target.clone(),
                    volume: m.volume.clone(),
                    read_only: m.read_only,
                })
                .collect();
        }
        let root_disk = {
            let _guard = self.inner.build_lock.lock().await;
            rootfs::ensure(
                &self.inner.docker,
                &self.images_dir(),
                &spec.image,
                &image_id,
            )
            .await?
        };
        let port = if oneoff { None } else { spec.port };
        let (memory_mib, cpus) = guest_resources(&spec.limits);
        std::fs::create_dir_all(&dir).map_err(|e| backend("create vm dir", e))?;
        let result = async {
            self.write_initrd(&dir, modules, init_config).await?;
            // An ephemeral port, then QEMU binds it; retried when taken meanwhile.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let host_port = match port {
                    Some(_) => Some(free_port().map_err(|e| backend("pick a host port", e))?),
                    None => None,
                };
                let mut labels = spec.labels.clone();
                labels.insert(OWNER_LABEL.to_owned(), "true".to_owned());
                if let Some(p) = port {
                    labels.insert(PORT_LABEL.to_owned(), p.to_string());
                }
                let meta = Meta {
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    labels,
                    port,
                    host_port,
                    memory_mib,
                    cpus,
                    accel: boot.accel.as_str().into(),
                    started_at: Utc::now(),
                    volumes: spec.mounts.iter().map(|m| m.volume.clone()).collect(),
                };
                std::fs::write(
                    dir.join("meta.json"),
                    serde_json::to_vec_pretty(&meta).map_err(|e| backend("write meta", e))?,
                )
                .map_err(|e| backend("write meta", e))?;
                let launch = qemu::VmLaunch {
                    name: spec.name.clone(),
                    dir: dir.clone(),
                    kernel: boot.kernel.image.clone(),
                    root_disk: root_disk.clone(),
                    accel: boot.accel,
                    memory_mib,
                    cpus,
                    forward: port.zip(host_port).map(|(g, h)| (h, g)),
                    shares: (0..spec.mounts.len())
                        .map(|i| (virtiofs::tag(i), virtiofs::socket(&dir, i)))
                        .collect(),
                };
                // Fresh daemons for each attempt: a QEMU that failed may
                // have connected to (and so ended) the previous ones.
                if let Some(v) = &volumes {
                    self.start_virtiofsd(&dir, v).await?;
                }
                match self.launch(&launch).await {
                    Ok(()) => return Ok(self.instance(&dir, meta)),
                    Err(e) if attempt < 3 && e.to_string().contains("hostfwd") => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        .await;
        if result.is_err() {
            virtiofs::stop_all(&dir).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// What `spec`'s volumes need, checked before anything is made: the
    /// guest's virtio-fs modules, virtiofsd, and each volume's directory
    /// on this host (the engine's own for that volume). `None` without
    /// volumes.
    async fn volume_sources(
        &self,
        spec: &InstanceSpec,
        kernel: &GuestKernel,
    ) -> Result<Option<VolumeSources>, RuntimeError> {
        if spec.mounts.is_empty() {
            return Ok(None);
        }
        let refuse = |message: String| RuntimeError::Backend {
            op: "start microvm",
            message,
        };
        let modules = kernel.volume_modules.clone().map_err(|why| {
            refuse(format!(
                "volumes in a microVM need virtio-fs in the guest kernel: {why}"
            ))
        })?;
        let daemon = virtiofs::find().ok_or_else(|| {
            refuse(
                "volumes in a microVM need virtiofsd (not found in PATH, /usr/libexec or /usr/lib/qemu; install qemu-system-common or virtiofsd)"
                    .into(),
            )
        })?;
        let mut dirs = Vec::new();
        for m in &spec.mounts {
            let volume = match self.inner.docker.inspect_volume(&m.volume).await {
                Ok(v) => v,
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Err(RuntimeError::NotFound(format!("volume {}", m.volume))),
                Err(e) => return Err(backend("inspect volume", e)),
            };
            let dir = PathBuf::from(&volume.mountpoint);
            if volume.mountpoint.is_empty() || !dir.is_dir() {
                return Err(refuse(format!(
                    "volume {}: its directory {:?} is not on this host (a microVM shares a volume from the local engine's directory)",
                    m.volume, volume.mountpoint
                )));
            }
            dirs.push(dir);
        }
        Ok(Some(VolumeSources {
            modules,
            daemon,
            dirs,
            read_only: spec.mounts.iter().map(|m| m.read_only).collect(),
        }))
    }

    /// (Re)starts one virtiofsd per volume for the VM in `dir`.
    async fn start_virtiofsd(&self, dir: &Path, v: &VolumeSources) -> Result<(), RuntimeError> {
        virtiofs::stop_all(dir).await;
        for (i, source) in v.dirs.iter().enumerate() {
            let _ = std::fs::remove_file(virtiofs::socket(dir, i));
            let forced = self.inner.virtiofs_sandbox.get().copied();
            virtiofs::start(&v.daemon, dir, i, source, forced, v.read_only[i])
                .await
                .map_err(|why| RuntimeError::Backend {
                    op: "start microvm",
                    message: format!("volume {}: {why}", source.display()),
                })?;
        }
        Ok(())
    }

    /// The VMs (running or not) that mount volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<crate::volumes::VolumeUser> {
        let Ok(entries) = std::fs::read_dir(self.vms_dir()) else {
            return Vec::new();
        };
        let mut users: Vec<crate::volumes::VolumeUser> = entries
            .flatten()
            .filter_map(|e| {
                let dir = e.path();
                let meta = Self::read_meta(&dir)?;
                meta.volumes.iter().any(|v| v == name).then(|| {
                    let running = qemu::running_pid(&dir).is_some() && exited(&dir).is_none();
                    crate::volumes::VolumeUser {
                        id: meta.name.clone(),
                        name: meta.name,
                        labels: meta.labels,
                        running,
                    }
                })
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Tests only: every virtiofsd this runtime starts from now on uses
    /// `sandbox` instead of the one probed for this host (so the `chroot`
    /// fallback is exercised where namespaces are allowed). Set once;
    /// false when a sandbox was already forced.
    #[cfg(any(test, feature = "testing"))]
    pub fn force_virtiofs_sandbox(&self, sandbox: virtiofs::Sandbox) -> bool {
        self.inner.virtiofs_sandbox.set(sandbox).is_ok()
    }

    /// The pids of VM `id`'s virtiofsd daemons that run.
    pub fn virtiofsd_pids(&self, id: &str) -> Vec<i32> {
        match self.find(id) {
            Ok((dir, _)) => virtiofs::running(&dir),
            Err(_) => Vec::new(),
        }
    }

    fn instance(&self, dir: &Path, meta: Meta) -> Instance {
        let running = qemu::running_pid(dir).is_some() && exited(dir).is_none();
        Instance {
            id: meta.name.clone(),
            endpoint: meta
                .host_port
                .filter(|_| running)
                .map(|p| Endpoint::from(SocketAddr::from((Ipv4Addr::LOCALHOST, p)))),
            name: meta.name,
            image: meta.image,
            labels: meta.labels,
            running,
        }
    }

    /// Sends a control record to the init; false when the VM cannot be
    /// reached.
    async fn control(dir: &Path, record: &Control) -> bool {
        let path = dir.join(qemu::CONTROL_SOCK);
        let Ok(Ok(mut sock)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(&path),
        )
        .await
        else {
            return false;
        };
        let ok = sock
            .write_all(protocol::encode(record).as_bytes())
            .await
            .is_ok();
        let _ = sock.flush().await;
        // Let QEMU read it before the connection closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok
    }

    /// Stops the VM in `dir`: SIGTERM to the app through the init, SIGKILL
    /// after `grace`, then QEMU itself.
    async fn stop_vm(&self, dir: &Path, grace: Duration) {
        if qemu::running_pid(dir).is_none() {
            return;
        }
        let _ = std::fs::write(dir.join("stopped"), b"");
        // SIGTERM again every second of the grace: a control record written
        // while the guest's end of the port is between two opens is lost.
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            Self::control(
                dir,
                &Control::Signal {
                    signal: libc::SIGTERM,
                },
            )
            .await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.wait_exit(dir, left.min(Duration::from_secs(1))).await {
                return;
            }
            if left <= Duration::from_secs(1) {
                break;
            }
        }
        Self::control(
            dir,
            &Control::Signal {
                signal: libc::SIGKILL,
            },
        )
        .await;
        if self.wait_exit(dir, Duration::from_secs(2)).await {
            return;
        }
        if let Some(pid) = qemu::running_pid(dir) {
            qemu::kill(pid, libc::SIGKILL);
        }
        self.wait_exit(dir, Duration::from_secs(5)).await;
    }

    async fn wait_exit(&self, dir: &Path, timeout: Duration) -> bool {
        qemu::wait_gone(dir, timeout).await
    }
}

/// What a VM's volumes need (see `MicroVmRuntime::volume_sources`).
struct VolumeSources {
    /// virtio-fs modules, loaded after the base ones.
    modules: Vec<PathBuf>,
    /// The virtiofsd binary.
    daemon: PathBuf,
    /// Each mount's host directory, in the spec's order.
    dirs: Vec<PathBuf>,
    /// Whether each mount is read-only (the guest mounts it so, and its
    /// virtiofsd sees the directory read-only).
    read_only: Vec<bool>,
}

/// berth's restart words → the init's (the same meaning as Docker's `no`,
/// `on-failure:N`, `unless-stopped`).
fn init_restart(policy: RestartPolicy) -> Restart {
    match policy {
        RestartPolicy::Never => Restart::Never,
        RestartPolicy::OnFailure { max_retries } => Restart::OnFailure { max_retries },
        RestartPolicy::Always => Restart::Always,
    }
}

/// What the status records say about the app's runs so far: how many
/// times the restart policy started it again, and whether the last record
/// is a `Restarting` one (the app is between two runs).
#[derive(Debug, Default, PartialEq, Eq)]
struct Runs {
    restarts: u32,
    between: bool,
    /// The last run's exit (code, OOM, guest ms) before a restart.
    last_exit: Option<(i32, bool, i64)>,
}

fn runs(records: &[Status]) -> Runs {
    let mut runs = Runs::default();
    for record in records {
        match record {
            Status::Restarting {
                code, oom, at_ms, ..
            } => {
                runs.restarts += 1;
                runs.between = true;
                runs.last_exit = Some((*code, *oom, *at_ms));
            }
            Status::Started { .. } | Status::Exited { .. } => runs.between = false,
            _ => {}
        }
    }
    runs
}

/// The init's final `Exited` record, if the app exited for good.
fn exited(dir: &Path) -> Option<(i32, bool, i64)> {
    statuses(dir).into_iter().find_map(|s| match s {
        Status::Exited { code, oom, at_ms } => Some((code, oom, at_ms)),
        _ => None,
    })
}

fn statuses(dir: &Path) -> Vec<Status> {
    protocol::decode_all(&std::fs::read_to_string(dir.join(qemu::STATUS_LOG)).unwrap_or_default())
}

fn backend(op: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend {
        op,
        message: e.to_string(),
    }
}

/// 16 hex digits of FNV-1a over `name`.
fn name_hash(name: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{hash:016x}")
}

/// A DNS label from an instance name (at most 63 characters).
fn hostname(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_owned();
    if label.is_empty() {
        "berth".into()
    } else {
        label
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened ({e})"))
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Reads one log file's records as chunks.
fn read_records(path: &Path, stream: LogStream, from: u64) -> (Vec<LogChunk>, u64) {
    let Ok(bytes) = std::fs::read(path) else {
        return (Vec::new(), from);
    };
    let start = (from as usize).min(bytes.len());
    // Only complete records; a torn last one is read next time.
    let end = bytes[start..]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| start + p + 1)
        .unwrap_or(start);
    let chunks = bytes[start..end]
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .filter_map(lines::parse_record)
        .map(|(ns, line)| {
            let line = &line[..line.len().min(MAX_LINE_BYTES)];
            LogChunk {
                stream,
                ts: Utc.timestamp_nanos(ns),
                line: String::from_utf8_lossy(line).into_owned(),
            }
        })
        .collect();
    (chunks, end as u64)
}

#[async_trait::async_trait]
impl Runtime for MicroVmRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        self.create(spec, false).await
    }

    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        let (dir, meta) = self.find(id)?;
        let records = statuses(&dir);
        let alive = qemu::running_pid(&dir).is_some();
        let error = records.iter().find_map(|s| match s {
            Status::Error { message } => Some(message.clone()),
            _ => None,
        });
        let exit = exited(&dir);
        let stopped_by_host = dir.join("stopped").exists();
        let runs = runs(&records);
        let (status, oom, finished) = match (exit, alive) {
            (Some((code, oom, at)), _) => (
                InstanceStatus::Exited { code: code.into() },
                oom,
                ms_to_time(at),
            ),
            // Between two runs: the last exit's OOM and time, as Docker
            // reports a restarting container's.
            (None, true) if runs.between => {
                let (_, oom, at) = runs.last_exit.unwrap_or_default();
                (InstanceStatus::Restarting, oom, ms_to_time(at))
            }
            (None, true) => (
                InstanceStatus::Running,
                false,
                runs.last_exit.and_then(|(_, _, at)| ms_to_time(at)),
            ),
            // Killed from outside (stop after grace, or QEMU died).
            (None, false) => (
                InstanceStatus::Exited {
                    code: if stopped_by_host { 137 } else { 255 },
                },
                false,
                std::fs::metadata(dir.join(qemu::STATUS_LOG))
                    .and_then(|m| m.modified())
                    .ok()
                    .map(DateTime::<Utc>::from),
            ),
        };
        let running = status == InstanceStatus::Running;
        Ok(InstanceState {
            id: meta.name.clone(),
            name: meta.name.clone(),
            status,
            oom_killed: oom,
            restart_count: runs.restarts,
            started_at: Some(meta.started_at),
            finished_at: finished,
            error,
            endpoint: meta
                .host_port
                .filter(|_| running)
                .map(|p| Endpoint::from(SocketAddr::from((Ipv4Addr::LOCALHOST, p)))),
            labels: meta.labels,
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (dir, _) = self.find(id)?;
        self.stop_vm(&dir, grace).await;
        // Their QEMU gone, the volumes' daemons end by themselves; any left
        // (QEMU killed before it connected) go now.
        virtiofs::stop_all(&dir).await;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let Ok((dir, _)) = self.find(id) else {
            return Ok(());
        };
        if let Some(pid) = qemu::running_pid(&dir) {
            qemu::kill(pid, libc::SIGKILL);
            qemu::wait_gone(&dir, Duration::from_secs(5)).await;
        }
        virtiofs::stop_all(&dir).await;
        std::fs::remove_dir_all(&dir).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(backend("remove microvm", e))
            }
        })
    }

    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(self.vms_dir()).map_err(|e| backend("list microvms", e))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(meta) = Self::read_meta(&dir) {
                out.push(self.instance(&dir, meta));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let found = self.find(id);
        let (dir, _) = match found {
            Ok(found) => found,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<LogChunk>(256);
        tokio::spawn(async move {
            let out_path = dir.join(qemu::STDOUT_LOG);
            let err_path = dir.join(qemu::STDERR_LOG);
            let (mut out, out_pos) = read_records(&out_path, LogStream::Stdout, 0);
            let (err, err_pos) = read_records(&err_path, LogStream::Stderr, 0);
            out.extend(err);
            out.sort_by_key(|c| c.ts);
            if let Some(since) = opts.since {
                out.retain(|c| c.ts >= since);
            }
            if let Some(tail) = opts.tail {
                let skip = out.len().saturating_sub(tail as usize);
                out.drain(..skip);
            }
            for chunk in out {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if !opts.follow {
                return;
            }
            let (mut out_pos, mut err_pos) = (out_pos, err_pos);
            loop {
                let alive = qemu::running_pid(&dir).is_some() && exited(&dir).is_none();
                let (mut new, p1) = read_records(&out_path, LogStream::Stdout, out_pos);
                let (new_err, p2) = read_records(&err_path, LogStream::Stderr, err_pos);
                (out_pos, err_pos) = (p1, p2);
                new.extend(new_err);
                new.sort_by_key(|c| c.ts);
                for chunk in new {
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
                if !alive {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
        )
        .boxed()
    }

    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let started = Instant::now();
        let instance = self.create(spec, true).await?;
        let dir = self.vm_dir(&instance.id);
        let finished = self.wait_exit(&dir, timeout).await;
        let result = if !finished {
            Err(RuntimeError::OneOffTimeout {
                name: spec.name.clone(),
                after: timeout,
            })
        } else {
            let state = self.inspect(&instance.id).await?;
            let mut output: VecDeque<LogChunk> = VecDeque::new();
            let mut dropped = 0;
            let mut logs = self.logs(&instance.id, LogOptions::default());
            while let Some(chunk) = logs.next().await {
                output.push_back(chunk?);
                if output.len() > ONEOFF_MAX_LINES {
                    output.pop_front();
                    dropped += 1;
                }
            }
            let exit_code = match state.status {
                InstanceStatus::Exited { code } => code,
                _ => 255,
            };
            Ok(OneOffOutcome {
                exit_code,
                oom_killed: state.oom_killed,
                output: output.into(),
                dropped_lines: dropped,
                duration: started.elapsed(),
            })
        };
        self.remove(&instance.id).await?;
        result
    }
}

/// A VM boots from a root disk made from an image of the engine's store, so
/// that store is where its images are; removing one also drops the cached
/// root disk.
#[async_trait::async_trait]
impl crate::images::Images for MicroVmRuntime {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.inner.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(backend("inspect image", e)),
        }
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        let id = match self.inner.docker.inspect_image(image).await {
            Ok(i) => i.id,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => return Err(backend("inspect image", e)),
        };
        // In use by a VM of ours (the engine cannot know).
        for vm in self.list_owned().await? {
            if vm.image == image && vm.running {
                return Err(RuntimeError::ImageInUse {
                    image: image.to_owned(),
                    detail: format!("microvm {} runs it", vm.name),
                });
            }
        }
        crate::images::Images::remove(
            &crate::EngineImages::from_docker(self.inner.docker.clone()),
            image,
        )
        .await?;
        if let Some(id) = id {
            // Only when no other tag still points at the same image.
            if !crate::images::Images::exists(self, &id)
                .await
                .unwrap_or(true)
            {
                rootfs::remove_cached(&self.images_dir(), &id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_dirs_are_short_and_stable() {
        let a = name_hash("berth-shop-web-production-1a2b3c4d");
        assert_eq!(a.len(), 16);
        assert_eq!(a, name_hash("berth-shop-web-production-1a2b3c4d"));
        assert_ne!(a, name_hash("berth-shop-web-production-1a2b3c4e"));
    }

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(hostname("berth-Shop_web.1"), "berth-shop-web-1");
        assert_eq!(hostname(&"x".repeat(100)).len(), 63);
        assert_eq!(hostname("__"), "berth");
    }

    #[test]
    fn runs_count_restarts_and_see_the_gap_between_two_runs() {
        let started = Status::Started {
            pid: 5,
            at_ms: 1,
            init_uptime_ms: 0,
            app_uptime_ms: 0,
        };
        let restarting = |code, oom, at_ms, restarts| Status::Restarting {
            code,
            oom,
            at_ms,
            restarts,
            delay_ms: 100,
        };
        assert_eq!(runs(std::slice::from_ref(&started)), Runs::default());
        let records = vec![started.clone(), restarting(3, false, 10, 1)];
        assert_eq!(
            runs(&records),
            Runs {
                restarts: 1,
                between: true,
                last_exit: Some((3, false, 10))
            }
        );
        let records = vec![
            started.clone(),
            restarting(3, false, 10, 1),
            started.clone(),
            restarting(137, true, 20, 2),
            started,
        ];
        assert_eq!(
            runs(&records),
            Runs {
                restarts: 2,
                between: false,
                last_exit: Some((137, true, 20))
            }
        );
        assert_eq!(init_restart(RestartPolicy::Always), Restart::Always);
        assert_eq!(
            init_restart(RestartPolicy::OnFailure { max_retries: 4 }),
            Restart::OnFailure { max_retries: 4 }
        );
    }

    #[test]
    fn log_records_read_incrementally_and_skip_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        std::fs::write(&path, b"1000 one\n2000 two\n30").unwrap();
        let (chunks, pos) = read_records(&path, LogStream::Stdout, 0);
        assert_eq!(
            chunks.iter().map(|c| c.line.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(chunks[1].ts, Utc.timestamp_nanos(2000));
        std::fs::write(&path, b"1000 one\n2000 two\n3000 three\n").unwrap();
        let (chunks, _) = read_records(&path, LogStream::Stdout, pos);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].line, "three");
    }
}

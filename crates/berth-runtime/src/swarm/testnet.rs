//! A real two-node swarm for tests (`testing` feature): two `dockerd`s,
//! each in a network namespace of its own, joined on one subnet with the
//! root namespace (where the test and berth's edge run), a registry with
//! basic auth inside the manager's namespace. Made by
//! `scripts/swarm-testnet.sh`; [`TestSwarm`] tears it all down when
//! dropped, also when the test panics. The machine's own engine is never
//! touched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use bollard::Docker;
use futures::StreamExt;

use super::RegistryAuth;
use crate::testing;

/// A running two-node test swarm.
#[derive(Debug)]
pub struct TestSwarm {
    dir: PathBuf,
    pub manager_sock: PathBuf,
    pub worker_sock: PathBuf,
    /// The manager node's address (also the registry's host).
    pub manager_addr: IpAddr,
    pub worker_addr: IpAddr,
    /// The root namespace's address on the swarm subnet.
    pub host_addr: IpAddr,
    /// `host:port` of the registry.
    pub registry: String,
    pub registry_auth: RegistryAuth,
    /// How long `up` took.
    pub up_time: Duration,
}

/// The harness script, from the workspace root.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/swarm-testnet.sh")
}

/// Why a test swarm cannot be made here (`None`: it can).
pub fn missing() -> Option<String> {
    // The effective uid, from /proc (no libc call needed).
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("the test swarm needs root (network namespaces)".to_owned());
    }
    for tool in [
        "dockerd",
        "docker",
        "docker-registry",
        "nsenter",
        "unshare",
        "ip",
        "python3",
        "curl",
    ] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// `Some(reason)` when swarm tests must be skipped here; panics instead
/// when `CI=true` (CI must run them).
pub fn skip_reason() -> Option<String> {
    let why = missing()?;
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the swarm tests cannot run: {why}");
    }
    eprintln!("SKIPPED: swarm test ({why})");
    Some(why)
}

impl TestSwarm {
    /// Creates the swarm (a few seconds), its registry asking for basic
    /// auth. Blocking.
    pub fn up() -> Result<Self, String> {
        Self::up_with(true)
    }

    /// Like [`TestSwarm::up`]; `registry_auth: false` makes an open
    /// registry (for a berth server pushing without credentials).
    pub fn up_with(registry_auth: bool) -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let started = Instant::now();
        // A subnet 10.231.<octet>.0/24 nobody on this machine uses yet.
        let base = std::process::id() % 200;
        let octet = (0..200)
            .map(|i| (base + NEXT.fetch_add(1, Ordering::Relaxed) + i) % 200 + 20)
            .find(|o| !subnet_in_use(*o))
            .ok_or("no free 10.231.x.0/24 subnet")?;
        let dir = std::env::temp_dir().join(format!(
            "berth-swarm-{}-{}",
            std::process::id(),
            testing::unique_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&dir)
            .arg(octet.to_string())
            .env(
                "SWARM_REGISTRY_AUTH",
                if registry_auth { "htpasswd" } else { "none" },
            )
            .output()
            .map_err(|e| format!("run {}: {e}", script().display()))?;
        // From here on, Drop tears down whatever `up` made.
        let mut swarm = TestSwarm {
            dir: dir.clone(),
            manager_sock: PathBuf::new(),
            worker_sock: PathBuf::new(),
            manager_addr: IpAddr::from([0, 0, 0, 0]),
            worker_addr: IpAddr::from([0, 0, 0, 0]),
            host_addr: IpAddr::from([0, 0, 0, 0]),
            registry: String::new(),
            registry_auth: RegistryAuth {
                server: String::new(),
                username: String::new(),
                password: String::new(),
            },
            up_time: Duration::ZERO,
        };
        if !out.status.success() {
            return Err(format!(
                "swarm-testnet.sh up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let env = std::fs::read_to_string(dir.join("env")).map_err(|e| format!("env: {e}"))?;
        let get = |key: &str| -> Result<String, String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("{key} missing from the swarm's env file"))
        };
        let ip = |key: &str| -> Result<IpAddr, String> {
            get(key)?.parse().map_err(|e| format!("{key}: {e}"))
        };
        swarm.manager_sock = get("SWARM_MANAGER_SOCK")?.into();
        swarm.worker_sock = get("SWARM_WORKER_SOCK")?.into();
        swarm.manager_addr = ip("SWARM_MANAGER_ADDR")?;
        swarm.worker_addr = ip("SWARM_WORKER_ADDR")?;
        swarm.host_addr = ip("SWARM_HOST_ADDR")?;
        swarm.registry = get("SWARM_REGISTRY")?;
        swarm.registry_auth = RegistryAuth {
            server: swarm.registry.clone(),
            username: get("SWARM_REGISTRY_USER")?,
            password: get("SWARM_REGISTRY_PASSWORD")?,
        };
        swarm.up_time = started.elapsed();
        Ok(swarm)
    }

    /// A client of the manager's engine.
    pub async fn manager(&self) -> Result<Docker, bollard::errors::Error> {
        connect_unix(&self.manager_sock).await
    }

    /// A client of the worker's engine.
    pub async fn worker(&self) -> Result<Docker, bollard::errors::Error> {
        connect_unix(&self.worker_sock).await
    }

    /// Builds the busybox test image on the manager, pushes it to the
    /// registry with the credentials, and returns its registry reference.
    pub async fn push_test_image(&self) -> Result<String, String> {
        let docker = self.manager().await.map_err(|e| e.to_string())?;
        let local = testing::ensure_test_image(&docker)
            .await
            .map_err(|e| e.to_string())?;
        self.push(&docker, &local).await
    }

    /// Like [`TestSwarm::push_test_image`], with an image of its own (a
    /// distinct label, so no node has its layers config yet), tagged
    /// `berth-test/<name>:latest`.
    pub async fn push_fresh_image(&self, name: &str) -> Result<String, String> {
        let docker = self.manager().await.map_err(|e| e.to_string())?;
        let local = format!("berth-test/{name}:latest");
        let labels = std::collections::BTreeMap::from([(
            "dev.berth.test.fresh".to_owned(),
            testing::unique_suffix(),
        )]);
        testing::build_busybox_image(&docker, &local, &labels)
            .await
            .map_err(|e| e.to_string())?;
        self.push(&docker, &local).await
    }

    async fn push(&self, docker: &Docker, local: &str) -> Result<String, String> {
        let (repo, tag) = local.rsplit_once(':').unwrap_or((local, "latest"));
        let target = format!("{}/{repo}", self.registry);
        docker
            .tag_image(
                local,
                Some(TagImageOptions {
                    repo: Some(target.clone()),
                    tag: Some(tag.to_owned()),
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        let credentials = DockerCredentials {
            username: Some(self.registry_auth.username.clone()),
            password: Some(self.registry_auth.password.clone()),
            serveraddress: Some(self.registry.clone()),
            ..Default::default()
        };
        let mut push = docker.push_image(
            &target,
            Some(PushImageOptions {
                tag: Some(tag.to_owned()),
                platform: None,
            }),
            Some(credentials),
        );
        while let Some(item) = push.next().await {
            let info = item.map_err(|e| format!("push {target}:{tag}: {e}"))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(format!("push {target}:{tag}: {e}"));
            }
        }
        Ok(format!("{target}:{tag}"))
    }
}

impl TestSwarm {
    /// Stops the worker's `dockerd` (SIGTERM: it stops its containers and
    /// leaves the swarm's view only when the manager misses its
    /// heartbeats): a node that dies. Waits until the process is gone.
    pub fn stop_worker(&self) -> Result<(), String> {
        let pidfile = self.dir.join("node2/docker.pid");
        let pid =
            std::fs::read_to_string(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
        let pid = pid.trim().to_owned();
        let kill = |args: &[&str]| Command::new("kill").args(args).status();
        kill(&[&pid]).map_err(|e| format!("kill {pid}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while kill(&["-0", &pid]).is_ok_and(|s| s.success()) {
            if Instant::now() > deadline {
                return Err(format!("dockerd {pid} still runs 30 s after SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for TestSwarm {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Ok(o) => eprintln!(
                "swarm-testnet.sh down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("swarm-testnet.sh down: {e}"),
        }
    }
}

fn subnet_in_use(octet: u32) -> bool {
    let out = Command::new("ip")
        .args([
            "-o",
            "-4",
            "addr",
            "show",
            "to",
            &format!("10.231.{octet}.0/24"),
        ])
        .output();
    match out {
        Ok(o) => !o.stdout.is_empty(),
        Err(_) => false,
    }
}

async fn connect_unix(sock: &Path) -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_unix(&sock.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
}

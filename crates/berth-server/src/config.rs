//! How `berth server` is configured (flags or `BERTH_*` variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the SQLite file, master key, admin token, routes and build
    /// work trees live.
    pub data_dir: PathBuf,
    /// `sqlite://<path>` or `postgres://user:pass@host:port/db`;
    /// `None`: `sqlite://<data_dir>/berth.db`.
    pub database_url: Option<String>,
    /// The control-plane API (and console).
    pub api_listen: SocketAddr,
    /// The edge proxy, plain HTTP.
    pub http_listen: SocketAddr,
    /// The edge proxy, HTTPS (certificates: see `tls`).
    pub https_listen: Option<SocketAddr>,
    /// HTTPS answers carry `Strict-Transport-Security` (needs `https_listen`).
    pub hsts: bool,
    /// The edge also serves the console and API on this hostname (HTTP,
    /// and HTTPS with a certificate like a domain's); see `console::host`.
    pub console_host: Option<String>,
    /// ACME directory URL; `None`: no ACME (the local CA covers `*.localhost`).
    pub acme_directory: Option<String>,
    /// Contact of the ACME account.
    pub acme_email: Option<String>,
    /// Extra root (PEM) trusted for the ACME server's own HTTPS.
    pub acme_ca_file: Option<PathBuf>,
    /// `host:port` of the DNS server taking RFC 2136 updates for the base
    /// domain's zone: the base domain then gets one wildcard certificate
    /// by DNS-01.
    pub acme_dns_server: Option<String>,
    /// `name:algorithm:secret` of the TSIG key for those updates (sealed
    /// into the store; later starts may leave it out). Never logged.
    pub acme_dns_tsig: Option<String>,
    /// Hostnames are `<name>.<base_domain>`; `localhost` when unset.
    pub base_domain: Option<String>,
    /// The API bearer token; generated into `<data_dir>/admin.token` when unset.
    pub token: Option<String>,
    /// Base64 of 32 bytes; else `<data_dir>/master.key`.
    pub master_key: Option<String>,
    /// Push images here (e.g. `127.0.0.1:5000`); the engine's store otherwise.
    pub registry: Option<String>,
    /// How long draining waits for in-flight requests of the previous version.
    pub drain_timeout: Duration,
    /// Most replaced deployments kept warm (running, unrouted) in their
    /// bake windows at once, over every service; the oldest is stopped
    /// first. 0 turns every bake window off.
    pub max_warm: usize,
    /// Builds running at once.
    pub build_concurrency: usize,
    /// Memory limit of one build, bytes.
    pub build_memory: Option<u64>,
    /// CPUs of one build.
    pub build_cpus: Option<f64>,
    /// Time limit of one build.
    pub build_timeout: Duration,
    /// Base image for generated Node Dockerfiles (e.g. `local/node:18` offline).
    pub node_image: Option<String>,
    /// Base image for generated Python Dockerfiles.
    pub python_image: Option<String>,
    /// A deployment still waiting for a pipeline or build slot after this
    /// long ends failed, so nothing waits forever.
    pub queue_timeout: Duration,
    /// Log lines older than this are deleted.
    pub log_retention: Duration,
    /// Each project keeps at most this many log lines (the newest).
    pub log_max_lines_per_project: u64,
    /// Preview environments idle (no deployment) this long are torn down;
    /// `None` keeps them until their pull request closes.
    pub preview_ttl: Option<Duration>,
    /// DNS resolvers for custom domain verification, asked in turn (none:
    /// /etc/resolv.conf's).
    pub dns_servers: Vec<SocketAddr>,
    /// What runs app instances (`--runtime`).
    pub runtime: RuntimeKind,
    /// Guest kernel of microVMs; `None`: the newest /boot/vmlinuz-*-cloud-amd64.
    pub microvm_kernel: Option<PathBuf>,
    /// The static berth-init; `None`: `berth-init` next to the berth binary.
    pub microvm_init: Option<PathBuf>,
    /// How microVMs run: KVM where a probe VM boots, else TCG (`auto`).
    pub microvm_accel: berth_runtime::microvm::Accel,
    /// User of `--registry`, passed to swarm nodes so they can pull.
    pub registry_user: Option<String>,
    /// Password of `--registry` (never logged).
    pub registry_password: Option<String>,
    /// The edge's access log: a file path, or `-` for standard output.
    pub access_log: Option<String>,
    /// OTLP/HTTP collector of the edge's spans (`http://host:port`).
    pub otlp_endpoint: Option<String>,
    /// Share of new traces whose edge span is exported (0 to 1).
    pub trace_sample: f64,
    /// Take the listening sockets and the control plane over from the
    /// server running on the same data dir (see `takeover`).
    pub takeover: bool,
    /// Volume backups go to this S3-compatible bucket (`s3://bucket/prefix`,
    /// see `s3`) instead of `<data_dir>/backups/`.
    pub backup_url: Option<String>,
    /// Endpoint of the S3-compatible service; AWS's when unset.
    pub backup_s3_endpoint: Option<String>,
    /// Region of the bucket; `us-east-1` when unset.
    pub backup_s3_region: Option<String>,
}

/// What runs app instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// Containers on the Docker Engine; services with `isolation =
    /// "microvm"` still get a microVM where the host can run one.
    #[default]
    Docker,
    /// Every instance in its own microVM (QEMU + berth-init); the server
    /// refuses to start when the host cannot run them.
    MicroVm,
    /// Services on a Docker Swarm (the engine must be a manager).
    Swarm,
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(RuntimeKind::Docker),
            "microvm" => Ok(RuntimeKind::MicroVm),
            "swarm" => Ok(RuntimeKind::Swarm),
            other => Err(format!(
                "unknown runtime {other:?} (use docker, swarm or microvm)"
            )),
        }
    }
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            database_url: None,
            api_listen: ([127, 0, 0, 1], 7070).into(),
            http_listen: ([127, 0, 0, 1], 8080).into(),
            https_listen: None,
            hsts: false,
            console_host: None,
            acme_directory: None,
            acme_email: None,
            acme_ca_file: None,
            acme_dns_server: None,
            acme_dns_tsig: None,
            base_domain: None,
            token: None,
            master_key: None,
            registry: None,
            drain_timeout: Duration::from_secs(30),
            max_warm: 10,
            build_concurrency: 2,
            build_memory: Some(2 << 30),
            build_cpus: None,
            build_timeout: Duration::from_secs(1800),
            node_image: None,
            python_image: None,
            queue_timeout: Duration::from_secs(3600),
            log_retention: Duration::from_secs(30 * 24 * 3600),
            log_max_lines_per_project: 2_000_000,
            dns_servers: Vec::new(),
            registry_user: None,
            registry_password: None,
            access_log: None,
            otlp_endpoint: None,
            trace_sample: 0.01,
            preview_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            runtime: RuntimeKind::Docker,
            microvm_kernel: None,
            microvm_init: None,
            microvm_accel: berth_runtime::microvm::Accel::Auto,
            takeover: false,
            backup_url: None,
            backup_s3_endpoint: None,
            backup_s3_region: None,
        }
    }

    /// The store to open: `--database-url`, else SQLite in the data dir.
    pub fn store_url(&self) -> Result<berth_store::StoreUrl, berth_store::StoreError> {
        match self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(u) => berth_store::StoreUrl::parse(u),
            None => Ok(berth_store::StoreUrl::default_for(&self.data_dir)),
        }
    }

    /// Where volume backups go: `Some` bucket with `--backup-url`, `None`
    /// for `<data_dir>/backups/`; a bad URL or endpoint is an error.
    pub fn backup_target(&self) -> Result<Option<crate::s3::BackupTarget>, crate::s3::S3Error> {
        match self
            .backup_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => Ok(None),
            Some(url) => crate::s3::BackupTarget::parse(
                url,
                self.backup_s3_endpoint.as_deref(),
                self.backup_s3_region.as_deref(),
            )
            .map(Some),
        }
    }

    pub fn base_domain(&self) -> &str {
        self.base_domain.as_deref().unwrap_or("localhost")
    }
}

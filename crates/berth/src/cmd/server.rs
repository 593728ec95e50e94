//! `berth server`: build a [`ServerConfig`] from flags and `BERTH_*`
//! variables and run the control plane.

use berth_core::units::{parse_duration, parse_size};
use berth_server::{MicroVmAccel as Accel, RuntimeKind, ServerConfig};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The API and console listen here.
    #[arg(long, env = "BERTH_API_LISTEN", default_value = "127.0.0.1:7070")]
    api_listen: SocketAddr,
    /// The edge proxy, plain HTTP.
    #[arg(long, env = "BERTH_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// The edge proxy, HTTPS.
    #[arg(long, env = "BERTH_HTTPS_LISTEN")]
    https_listen: Option<SocketAddr>,
    /// With --https-listen: HTTPS answers carry Strict-Transport-Security
    /// (max-age one year), so browsers come back over HTTPS only.
    #[arg(long, env = "BERTH_HSTS", requires = "https_listen")]
    hsts: bool,
    /// Serve the console (and the API) on this hostname through the edge:
    /// plain HTTP, and HTTPS with --https-listen, with a certificate like
    /// any domain's, so the API port need not be exposed.
    #[arg(long, env = "BERTH_CONSOLE_HOST")]
    console_host: Option<String>,
    /// ACME directory URL for automatic certificates (e.g. Let's Encrypt's
    /// https://acme-v02.api.letsencrypt.org/directory) [default: none, no ACME].
    #[arg(long, env = "BERTH_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// Contact e-mail of the ACME account.
    #[arg(long, env = "BERTH_ACME_EMAIL")]
    acme_email: Option<String>,
    /// Extra root certificate (PEM) to trust for the ACME server's own HTTPS.
    #[arg(long, env = "BERTH_ACME_CA_FILE")]
    acme_ca_file: Option<PathBuf>,
    /// DNS server (host:port) taking RFC 2136 updates for the base domain's
    /// zone: the base domain then gets one wildcard certificate by DNS-01
    /// (custom domains keep HTTP-01).
    #[arg(long, env = "BERTH_ACME_DNS_SERVER")]
    acme_dns_server: Option<String>,
    /// TSIG key of those updates, name:algorithm:secret (hmac-sha256,
    /// hmac-sha384 or hmac-sha512; the secret in base64, as tsig-keygen
    /// prints it). Given once: it is sealed in the store.
    #[arg(long, env = "BERTH_ACME_DNS_TSIG", hide_env_values = true)]
    acme_dns_tsig: Option<String>,
    /// Hostnames are `<name>.<base-domain>` [default: localhost].
    #[arg(long, env = "BERTH_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// The store: sqlite://<path> or postgres://user:pass@host:port/db
    /// [default: sqlite://<data-dir>/berth.db]. Servers sharing one
    /// PostgreSQL database share --master-key and --token too.
    #[arg(long, env = "BERTH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Base64 of 32 bytes sealing secrets [default: <data-dir>/master.key].
    #[arg(long, env = "BERTH_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// Push images to this registry (e.g. 127.0.0.1:5000).
    #[arg(long, env = "BERTH_REGISTRY")]
    registry: Option<String>,
    /// User of --registry (swarm nodes pull with it).
    #[arg(long, env = "BERTH_REGISTRY_USER")]
    registry_user: Option<String>,
    /// Password of --registry.
    #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
    registry_password: Option<String>,
    /// How long draining waits for in-flight requests ("30s", "2m").
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// Most replaced deployments kept warm in their bake windows at once
    /// (oldest stopped first; 0 turns bake windows off) [default: 10].
    #[arg(long, env = "BERTH_MAX_WARM")]
    max_warm: Option<usize>,
    /// Builds running at once.
    #[arg(long, env = "BERTH_BUILD_CONCURRENCY")]
    build_concurrency: Option<usize>,
    /// Memory limit of one build ("2g", "512m").
    #[arg(long, env = "BERTH_BUILD_MEMORY", value_parser = parse_size)]
    build_memory: Option<u64>,
    /// CPUs of one build.
    #[arg(long, env = "BERTH_BUILD_CPUS")]
    build_cpus: Option<f64>,
    /// Time limit of one build ("30m").
    #[arg(long, env = "BERTH_BUILD_TIMEOUT", value_parser = parse_duration)]
    build_timeout: Option<Duration>,
    /// Base image of generated Node Dockerfiles.
    #[arg(long, env = "BERTH_NODE_IMAGE")]
    node_image: Option<String>,
    /// Base image of generated Python Dockerfiles.
    #[arg(long, env = "BERTH_PYTHON_IMAGE")]
    python_image: Option<String>,
    /// DNS resolvers (ip:port) for custom domain verification, comma-
    /// separated or the flag repeated: when one does not answer, the next
    /// does; default: the nameservers of /etc/resolv.conf.
    #[arg(long, env = "BERTH_DNS_SERVER", value_delimiter = ',')]
    dns_server: Vec<std::net::SocketAddr>,
    /// Tear down preview environments (pr-<n>) without a deployment for
    /// this long, in case their "closed" webhook never comes ("7d", "12h";
    /// "0" keeps them until closed).
    #[arg(long, env = "BERTH_PREVIEW_TTL", value_parser = parse_duration)]
    preview_ttl: Option<Duration>,
    /// What runs app instances: "docker" (containers; services with
    /// isolation = "microvm" still get a microVM where the host can run one),
    /// "swarm" (services on a Docker Swarm; the engine must be a manager) or
    /// "microvm" (every instance in its own QEMU microVM).
    #[arg(long, env = "BERTH_RUNTIME", default_value = "docker")]
    runtime: RuntimeKind,
    /// Guest kernel of microVMs [default: newest /boot/vmlinuz-*-cloud-amd64].
    #[arg(long, env = "BERTH_MICROVM_KERNEL")]
    microvm_kernel: Option<PathBuf>,
    /// The static guest init [default: berth-init next to this binary].
    #[arg(long, env = "BERTH_MICROVM_INIT")]
    microvm_init: Option<PathBuf>,
    /// microVM acceleration: "kvm", "tcg" (emulation), or "auto" (KVM when a
    /// probe VM boots under it, else TCG with a warning).
    #[arg(long, env = "BERTH_MICROVM_ACCEL", default_value = "auto")]
    microvm_accel: Accel,
    /// The edge's access log, one JSON line per request: a file (rotated
    /// at 100 MiB, 5 kept) or "-" for standard output [default: none].
    #[arg(long, env = "BERTH_ACCESS_LOG")]
    access_log: Option<String>,
    /// Export the edge's spans over OTLP/HTTP (protobuf) to this collector,
    /// e.g. http://127.0.0.1:4318 [default: none].
    #[arg(long, env = "BERTH_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces whose edge span is exported, 0 to 1 (a trace
    /// its caller sampled is always exported).
    #[arg(long, env = "BERTH_TRACE_SAMPLE", default_value_t = 0.01)]
    trace_sample: f64,
    /// Take over from the berth server running on the same --data-dir (an
    /// upgrade): receive its listening sockets, then it finishes its
    /// in-flight requests and exits; no request is refused meanwhile.
    #[arg(long)]
    takeover: bool,
    /// Volume backups go to this S3-compatible bucket, s3://bucket/prefix
    /// [default: <data-dir>/backups/]. The credentials are the secrets
    /// BERTH_BACKUP_S3_ACCESS_KEY_ID and BERTH_BACKUP_S3_SECRET_ACCESS_KEY
    /// of the volume's environment.
    #[arg(long, env = "BERTH_BACKUP_URL")]
    backup_url: Option<String>,
    /// Endpoint of the S3-compatible service, e.g. http://127.0.0.1:9000
    /// (addressed path style) [default: AWS's for the region].
    #[arg(long, env = "BERTH_BACKUP_S3_ENDPOINT")]
    backup_s3_endpoint: Option<String>,
    /// Region of the backup bucket [default: us-east-1].
    #[arg(long, env = "BERTH_BACKUP_S3_REGION")]
    backup_s3_region: Option<String>,
    /// The server's own log on stderr: "text", or "json" (one object per
    /// line: timestamp, level, message and fields).
    #[arg(long, env = "BERTH_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServerArgs {
    /// The configuration these flags describe, over `ServerConfig::new`'s
    /// defaults.
    pub fn config(self, data_dir: PathBuf, token: Option<String>) -> ServerConfig {
        let mut cfg = ServerConfig::new(data_dir);
        cfg.api_listen = self.api_listen;
        cfg.http_listen = self.http_listen;
        cfg.https_listen = self.https_listen;
        cfg.hsts = self.hsts;
        cfg.console_host = self.console_host.filter(|s| !s.trim().is_empty());
        cfg.acme_directory = self.acme_directory.filter(|s| !s.is_empty());
        cfg.acme_email = self.acme_email.filter(|s| !s.is_empty());
        cfg.acme_ca_file = self.acme_ca_file;
        cfg.acme_dns_server = self.acme_dns_server.filter(|s| !s.is_empty());
        cfg.acme_dns_tsig = self.acme_dns_tsig.filter(|s| !s.is_empty());
        cfg.base_domain = self.base_domain.filter(|s| !s.is_empty());
        cfg.token = token.filter(|s| !s.is_empty());
        cfg.master_key = self.master_key.filter(|s| !s.is_empty());
        cfg.database_url = self.database_url.filter(|s| !s.is_empty());
        cfg.registry = self.registry.filter(|s| !s.is_empty());
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d;
        }
        if let Some(n) = self.max_warm {
            cfg.max_warm = n;
        }
        if let Some(n) = self.build_concurrency {
            cfg.build_concurrency = n.max(1);
        }
        if let Some(m) = self.build_memory {
            cfg.build_memory = Some(m);
        }
        if let Some(c) = self.build_cpus {
            cfg.build_cpus = Some(c);
        }
        if let Some(t) = self.build_timeout {
            cfg.build_timeout = t;
        }
        cfg.node_image = self.node_image.filter(|s| !s.is_empty());
        cfg.python_image = self.python_image.filter(|s| !s.is_empty());
        cfg.dns_servers = self.dns_server;
        cfg.registry_user = self.registry_user.filter(|s| !s.is_empty());
        cfg.registry_password = self.registry_password.filter(|s| !s.is_empty());
        if let Some(ttl) = self.preview_ttl {
            cfg.preview_ttl = (!ttl.is_zero()).then_some(ttl);
        }
        cfg.runtime = self.runtime;
        cfg.microvm_kernel = self.microvm_kernel;
        cfg.microvm_init = self.microvm_init;
        cfg.microvm_accel = self.microvm_accel;
        cfg.access_log = self.access_log.filter(|s| !s.is_empty());
        cfg.otlp_endpoint = self.otlp_endpoint.filter(|s| !s.is_empty());
        cfg.trace_sample = self.trace_sample;
        cfg.takeover = self.takeover;
        cfg.backup_url = self.backup_url.filter(|s| !s.is_empty());
        cfg.backup_s3_endpoint = self.backup_s3_endpoint.filter(|s| !s.is_empty());
        cfg.backup_s3_region = self.backup_s3_region.filter(|s| !s.is_empty());
        cfg
    }
}

pub async fn run(args: ServerArgs, data_dir: PathBuf, token: Option<String>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => log.try_init(),
        LogFormat::Json => log.json().flatten_event(true).try_init(),
    };
    berth_server::run(args.config(data_dir, token)).await
}

//! Backend-neutral description of an instance (what to run) and what a
//! runtime reports back about it (what is running).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Label every instance started by berth carries, with the value `"true"`.
/// `Runtime::list_owned` selects on it; nothing without it is ever touched.
pub const OWNER_LABEL: &str = "dev.berth.managed";
/// Label naming the project an instance belongs to.
pub const PROJECT_LABEL: &str = "dev.berth.project";
/// Label naming the service an instance belongs to.
pub const SERVICE_LABEL: &str = "dev.berth.service";
/// Label naming the environment an instance belongs to.
pub const ENVIRONMENT_LABEL: &str = "dev.berth.environment";
/// Label naming the deployment an instance belongs to.
pub const DEPLOYMENT_LABEL: &str = "dev.berth.deployment";
/// Label the runtime sets to the instance port (`spec.port`), so the
/// published address can be found again by `list_owned`. Reserved: a spec
/// may not set it.
pub const PORT_LABEL: &str = "dev.berth.port";

/// Label a multi-node backend (Swarm) puts on the instances and states it
/// reports (never on the engine's objects): the hostname of the node the
/// instance's current task runs on.
pub const NODE_LABEL: &str = "dev.berth.node";

/// The ownership label plus the four identity labels, ready to be extended
/// with anything else the caller wants on the instance.
pub fn berth_labels(
    project: &str,
    service: &str,
    environment: &str,
    deployment: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_LABEL.to_owned(), "true".to_owned()),
        (PROJECT_LABEL.to_owned(), project.to_owned()),
        (SERVICE_LABEL.to_owned(), service.to_owned()),
        (ENVIRONMENT_LABEL.to_owned(), environment.to_owned()),
        (DEPLOYMENT_LABEL.to_owned(), deployment.to_owned()),
    ])
}

/// Longest instance name: a DNS label (RFC 1035), so every backend can use
/// it as a host, container, pod or VM name.
pub const MAX_NAME_LEN: usize = 63;

/// The one way instance names are made: `berth-<parts…>-<id>`, a valid DNS
/// label (lowercase letters, digits and '-', at most [`MAX_NAME_LEN`],
/// starting and ending with a letter or digit). `id` (a deployment id) makes
/// it unique and is always kept whole when it fits in 40 characters; the
/// readable `parts` (project, service, environment, or a role such as
/// `release`) are lowercased, anything else becomes '-', and they are cut
/// to fit.
pub fn instance_name(parts: &[&str], id: &str) -> String {
    fn clean(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            let c = c.to_ascii_lowercase();
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            };
            if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
                out.push(c);
            }
        }
        out.trim_end_matches('-').to_owned()
    }
    let mut id = clean(id);
    if id.len() > 40 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        id = format!("{}{:016x}", &id[..23], h.finish());
    }
    let mut head = String::from("berth");
    for part in parts.iter().map(|p| clean(p)).filter(|p| !p.is_empty()) {
        head.push('-');
        head.push_str(&part);
    }
    let room = MAX_NAME_LEN - id.len() - usize::from(!id.is_empty());
    head.truncate(room);
    let head = head.trim_end_matches('-');
    if id.is_empty() {
        head.to_owned()
    } else {
        format!("{head}-{id}")
    }
}

/// The name of replica `k` (from 1) of an instance named `name`: `name`
/// itself for the first, `name` with `-r<k>` for the others, still a DNS
/// label of at most [`MAX_NAME_LEN`] (the end of `name` — the deployment
/// id — is kept, the readable head is cut).
pub fn replica_name(name: &str, k: u32) -> String {
    if k <= 1 {
        return name.to_owned();
    }
    let suffix = format!("-r{k}");
    if name.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{name}{suffix}");
    }
    // Cut from the readable head, after `berth-`, so the id stays whole.
    let over = name.len() + suffix.len() - MAX_NAME_LEN;
    let (head, tail) = name.split_at(name.len().min(6));
    let tail = tail.get(over..).unwrap_or("").trim_start_matches('-');
    format!("{head}{tail}{suffix}")
}

/// Where the edge reaches an instance's port. Invariant: **reachable from
/// the edge** — the backend that returns it guarantees berth's proxy can
/// connect to it (the Docker backend: `127.0.0.1` and the published port;
/// a remote backend: a routable address of the node or VM). `host` is a
/// name or an IP address (IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for Endpoint {
    /// `host:port`, `[v6]:port` for an IPv6 address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Self::new(a.ip().to_string(), a.port())
    }
}

/// Why a `host:port` string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad endpoint {0:?}: expected host:port")]
pub struct BadEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = BadEndpoint;

    /// Parses what `Display` writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEndpoint(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        Ok(Self::new(host, port))
    }
}

/// Most output lines `Runtime::run_oneoff` keeps (the last ones win).
pub const ONEOFF_MAX_LINES: usize = 1000;

/// What to run. Validated by [`InstanceSpec::validate`] before any backend
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique instance name, e.g. `berth-shop-web-production-1a2b3c4d`, made
    /// by [`instance_name`]: a DNS label (lowercase letters, digits, '-', at
    /// most [`MAX_NAME_LEN`]).
    pub name: String,
    /// Image reference, e.g. `berth/shop-web:1a2b3c4d` or `node:20`.
    pub image: String,
    /// Environment variables, in order; later duplicates win.
    pub env: Vec<(String, String)>,
    /// Labels. The runtime adds `OWNER_LABEL=true` and `PORT_LABEL`.
    pub labels: BTreeMap<String, String>,
    /// Port the app listens on inside the instance; the runtime makes it
    /// reachable from the edge at an [`Endpoint`]. `None` for workers.
    pub port: Option<u16>,
    /// Replaces the image's command (its entrypoint is kept). Use
    /// [`shell_command`] to run a shell-form string such as `npm start`.
    pub command: Option<Vec<String>>,
    /// Resource limits.
    pub limits: Limits,
    /// What to do when the process exits.
    pub restart: RestartPolicy,
    /// Named volumes to mount. Host paths are never mounted, and the
    /// container engine's socket never is.
    pub mounts: Vec<VolumeMount>,
}

impl InstanceSpec {
    /// A spec with no env, labels, port, command override, limits or mounts,
    /// and `RestartPolicy::Never`.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            port: None,
            command: None,
            limits: Limits::default(),
            restart: RestartPolicy::Never,
            mounts: Vec::new(),
        }
    }

    /// Checks everything a backend relies on; see [`SpecError`].
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) {
            return Err(SpecError::BadName(self.name.clone()));
        }
        if self.image.is_empty() || self.image.chars().any(|c| c.is_whitespace() || c == '\0') {
            return Err(SpecError::BadImage(self.image.clone()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::BadEnvKey(key.clone()));
            }
            if value.contains('\0') {
                return Err(SpecError::BadEnvValue(key.clone()));
            }
        }
        for (key, value) in &self.labels {
            if key.is_empty() {
                return Err(SpecError::BadLabel(key.clone()));
            }
            if key == OWNER_LABEL && value != "true" {
                return Err(SpecError::BadLabel(key.clone()));
            }
            if key == PORT_LABEL {
                return Err(SpecError::ReservedLabel(key.clone()));
            }
        }
        if self.port == Some(0) {
            return Err(SpecError::BadPort);
        }
        if let Some(command) = &self.command {
            if command.is_empty() || command[0].is_empty() {
                return Err(SpecError::EmptyCommand);
            }
        }
        self.limits.validate()?;
        if let RestartPolicy::OnFailure { max_retries } = self.restart {
            if max_retries == 0 {
                return Err(SpecError::BadRestart);
            }
        }
        for mount in &self.mounts {
            mount.validate()?;
        }
        Ok(())
    }
}

/// `["/bin/sh", "-c", cmd]`: runs a shell-form start command.
pub fn shell_command(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.to_owned()]
}

/// A DNS label: 1 to 63 lowercase letters, digits or '-', starting and
/// ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| ok(c) || c == '-')
        && name.starts_with(ok)
        && name.ends_with(ok)
}

/// Volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters.
fn validate_name(name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(SpecError::BadName(name.to_owned()))
    }
}

/// Resource limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes (no swap beyond it). At least 6 MiB.
    pub memory_bytes: Option<u64>,
    /// CPU quota in units of 1e-9 CPUs (`1_000_000_000` = one CPU).
    pub nano_cpus: Option<i64>,
    /// Maximum number of processes/threads.
    pub pids: Option<i64>,
}

/// Smallest memory limit a container engine accepts.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

impl Limits {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(memory) = self.memory_bytes {
            if memory < MIN_MEMORY_BYTES || memory > i64::MAX as u64 {
                return Err(SpecError::BadLimit("memory"));
            }
        }
        if self.nano_cpus.is_some_and(|n| n <= 0) {
            return Err(SpecError::BadLimit("cpus"));
        }
        if self.pids.is_some_and(|n| n <= 0) {
            return Err(SpecError::BadLimit("pids"));
        }
        Ok(())
    }
}

/// What the runtime does when the main process exits. Each backend maps
/// these to its own words (Docker: `no`, `on-failure`, `unless-stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart (one-off commands).
    Never,
    /// Restart after a non-zero exit, at most `max_retries` times (>= 1).
    OnFailure { max_retries: u32 },
    /// Restart after every exit, and after the backend or host restarts,
    /// until berth stops the instance.
    Always,
}

/// A named volume mounted into the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`); never a host path.
    pub volume: String,
    /// Absolute path inside the instance.
    pub target: String,
    pub read_only: bool,
}

impl VolumeMount {
    fn validate(&self) -> Result<(), SpecError> {
        if mentions_engine_socket(&self.volume) || mentions_engine_socket(&self.target) {
            return Err(SpecError::EngineSocketMount(format!(
                "{}:{}",
                self.volume, self.target
            )));
        }
        if self.volume.starts_with('/') || self.volume.starts_with('.') {
            return Err(SpecError::HostPathMount(self.volume.clone()));
        }
        validate_name(&self.volume).map_err(|_| SpecError::BadMount(self.volume.clone()))?;
        if !self.target.starts_with('/') || self.target.contains(':') || self.target == "/" {
            return Err(SpecError::BadMount(self.target.clone()));
        }
        Ok(())
    }
}

fn mentions_engine_socket(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("docker.sock") || s.contains("containerd.sock") || s.contains("podman.sock")
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("bad instance name {0:?}: use lowercase letters, digits and '-' (at most 63, starting and ending with a letter or digit)")]
    BadName(String),
    #[error("bad image reference {0:?}")]
    BadImage(String),
    #[error("bad environment variable name {0:?}")]
    BadEnvKey(String),
    #[error("environment variable {0} contains a NUL byte")]
    BadEnvValue(String),
    #[error("bad label {0:?}")]
    BadLabel(String),
    #[error("label {0} is reserved for the runtime")]
    ReservedLabel(String),
    #[error("port must be between 1 and 65535")]
    BadPort,
    #[error("command override is empty")]
    EmptyCommand,
    #[error("bad {0} limit")]
    BadLimit(&'static str),
    #[error("on-failure restart policy needs at least one retry")]
    BadRestart,
    #[error("refusing to mount the container engine socket ({0})")]
    EngineSocketMount(String),
    #[error("refusing to mount host path {0:?}: only named volumes are allowed")]
    HostPathMount(String),
    #[error("bad mount {0:?}")]
    BadMount(String),
}

/// An instance as returned by `start` and `list_owned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Backend id (the Docker container id).
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Where the edge reaches `spec.port`; `None` without `spec.port` or
    /// when the instance is not running (it may change between runs).
    pub endpoint: Option<Endpoint>,
    pub running: bool,
}

/// Lifecycle status of an instance, in berth's words; each backend maps its
/// own states to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Created or scheduled, not running yet.
    Pending,
    Running,
    /// Between two runs of its restart policy.
    Restarting,
    /// Frozen: exists, runs no code (a paused container or VM).
    Suspended,
    /// Being stopped or removed.
    Stopping,
    /// The main process exited with this code.
    Exited {
        code: i64,
    },
    /// The backend cannot run, stop or remove it.
    Failed,
}

/// What `inspect` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    pub id: String,
    pub name: String,
    pub status: InstanceStatus,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// Restarts done by the restart policy.
    pub restart_count: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The engine's error, e.g. the entrypoint was not found.
    pub error: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Where the edge reaches `spec.port`, while running.
    pub endpoint: Option<Endpoint>,
}

impl InstanceState {
    pub fn is_running(&self) -> bool {
        self.status == InstanceStatus::Running
    }

    /// The exit code once exited.
    pub fn exit_code(&self) -> Option<i64> {
        match self.status {
            InstanceStatus::Exited { code } => Some(code),
            _ => None,
        }
    }
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line of instance output, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    /// When the engine received the line.
    pub ts: DateTime<Utc>,
    pub line: String,
}

/// Which log lines `logs` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep the stream open and return new lines until the instance stops.
    pub follow: bool,
    /// Only lines at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only the last `n` lines of what is already there.
    pub tail: Option<u64>,
}

/// Result of `run_oneoff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOffOutcome {
    pub exit_code: i64,
    pub oom_killed: bool,
    /// stdout and stderr lines in order, the last [`ONEOFF_MAX_LINES`].
    pub output: Vec<LogChunk>,
    /// Lines dropped from the front to respect the bound.
    pub dropped_lines: usize,
    pub duration: Duration,
}

impl OneOffOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        let mut spec = InstanceSpec::new("berth-shop-web-production-1a2b3c4d", "berth/shop:abc");
        spec.labels = berth_labels("shop", "web", "production", "d1");
        spec.port = Some(3000);
        spec
    }

    #[test]
    fn replica_names_stay_unique_dns_labels() {
        let n = instance_name(&["shop", "web", "production"], "d-abc123");
        assert_eq!(replica_name(&n, 1), n);
        assert_eq!(replica_name(&n, 2), format!("{n}-r2"));
        let long = instance_name(&["a".repeat(40).as_str(), "web"], "d-0123456789abcdef");
        assert_eq!(long.len(), MAX_NAME_LEN);
        for k in [2, 3, 50] {
            let r = replica_name(&long, k);
            assert!(is_dns_label(&r) && r.len() <= MAX_NAME_LEN, "{r}");
            assert!(
                r.starts_with("berth-") && r.ends_with(&format!("d-0123456789abcdef-r{k}")),
                "{r}"
            );
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn engine_socket_mounts_are_refused() {
        for (volume, target) in [
            ("/var/run/docker.sock", "/var/run/docker.sock"),
            ("docker.sock", "/run/docker.sock"),
            ("data", "/var/run/docker.sock"),
            ("/run/containerd/containerd.sock", "/x"),
        ] {
            let mut s = spec();
            s.mounts.push(VolumeMount {
                volume: volume.into(),
                target: target.into(),
                read_only: true,
            });
            assert!(
                matches!(s.validate(), Err(SpecError::EngineSocketMount(_))),
                "{volume}:{target} accepted"
            );
        }
    }

    #[test]
    fn host_paths_are_refused_and_named_volumes_accepted() {
        let mut s = spec();
        s.mounts.push(VolumeMount {
            volume: "/etc".into(),
            target: "/data".into(),
            read_only: false,
        });
        assert!(matches!(s.validate(), Err(SpecError::HostPathMount(_))));
        s.mounts[0].volume = "shop-data".into();
        assert_eq!(s.validate(), Ok(()));
        s.mounts[0].target = "relative".into();
        assert!(matches!(s.validate(), Err(SpecError::BadMount(_))));
    }

    #[test]
    fn bad_fields_are_refused() {
        type Mutation = fn(&mut InstanceSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.name = String::new(), "empty name"),
            (|s| s.name = "-leading-dash".into(), "leading dash"),
            (|s| s.name = "has space".into(), "space in name"),
            (|s| s.name = "a".repeat(64), "long name"),
            (|s| s.name = "Upper".into(), "uppercase name"),
            (|s| s.name = "under_score".into(), "underscore in name"),
            (|s| s.name = "trailing-".into(), "trailing dash"),
            (|s| s.image = String::new(), "empty image"),
            (|s| s.image = "bad image".into(), "space in image"),
            (|s| s.env.push(("A=B".into(), "c".into())), "= in env key"),
            (|s| s.env.push((String::new(), "c".into())), "empty env key"),
            (
                |s| s.env.push(("A".into(), "c\0".into())),
                "NUL in env value",
            ),
            (
                |s| {
                    s.labels.insert(OWNER_LABEL.into(), "false".into());
                },
                "owner label false",
            ),
            (
                |s| {
                    s.labels.insert(PORT_LABEL.into(), "1".into());
                },
                "reserved port label",
            ),
            (|s| s.port = Some(0), "port 0"),
            (|s| s.command = Some(vec![]), "empty command"),
            (|s| s.limits.memory_bytes = Some(1024), "tiny memory"),
            (|s| s.limits.nano_cpus = Some(0), "zero cpus"),
            (|s| s.limits.pids = Some(-1), "negative pids"),
            (
                |s| s.restart = RestartPolicy::OnFailure { max_retries: 0 },
                "zero retries",
            ),
        ];
        for (mutate, what) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(s.validate().is_err(), "{what} accepted");
        }
    }

    #[test]
    fn berth_labels_carry_owner_and_identity() {
        let labels = berth_labels("shop", "web", "production", "d1");
        assert_eq!(labels[OWNER_LABEL], "true");
        assert_eq!(labels[PROJECT_LABEL], "shop");
        assert_eq!(labels[SERVICE_LABEL], "web");
        assert_eq!(labels[ENVIRONMENT_LABEL], "production");
        assert_eq!(labels[DEPLOYMENT_LABEL], "d1");
    }

    #[test]
    fn instance_names_are_dns_labels_and_keep_the_id() {
        let short = instance_name(&["shop", "web", "production"], "01hx2k3m4n5p6q");
        assert_eq!(short, "berth-shop-web-production-01hx2k3m4n5p6q");
        let long = "a".repeat(63);
        let n = instance_name(&[&long, "Web_API", "pr-1234"], "01hx2k3m4n5p6q");
        assert!(is_dns_label(&n), "{n}");
        assert!(n.ends_with("-01hx2k3m4n5p6q"), "{n}");
        let n = instance_name(&["release", "My.Shop"], "d1");
        assert_eq!(n, "berth-release-my-shop-d1");
        let a = instance_name(&["p"], &"x".repeat(80));
        let b = instance_name(&["p"], &format!("{}y", "x".repeat(79)));
        assert!(is_dns_label(&a) && is_dns_label(&b) && a != b, "{a} {b}");
        let mut s = spec();
        s.name = n;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn endpoints_print_and_parse() {
        for (text, host, port) in [
            ("127.0.0.1:8080", "127.0.0.1", 8080),
            ("web-1.node.internal:3000", "web-1.node.internal", 3000),
            ("[fd00::1]:80", "fd00::1", 80),
        ] {
            let e: Endpoint = text.parse().expect(text);
            assert_eq!(e, Endpoint::new(host, port));
            assert_eq!(e.to_string(), text);
        }
        for bad in [
            "",
            "host",
            "host:0",
            ":80",
            "fd00::1:80",
            "h:99999",
            "a b:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(Endpoint::from(a).to_string(), "127.0.0.1:9");
    }

    #[test]
    fn shell_command_wraps_in_sh() {
        assert_eq!(shell_command("npm start"), ["/bin/sh", "-c", "npm start"]);
    }
}

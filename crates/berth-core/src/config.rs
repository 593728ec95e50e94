//! `berth.toml`: the per-service settings read from the repository root.
//!
//! The file holds one table per service, `[services.<name>]`. [`parse`] turns
//! the text into an [`AppConfig`] or a [`ConfigError`] that names the file, the
//! key path (for example `services.web.readiness.timeout`) and the reason, on
//! one line. A repository without the file gets [`AppConfig::default`]: one
//! routable service named `web` with the defaults of the platform documents
//! (port 3000, `GET /` every 15 s, 5 s timeout, 3 consecutive failures).
//!
//! Invariants of a parsed [`AppConfig`]:
//! - at least one service; every name follows [`names::service_name`] (the
//!   rule the API applies at create: a lowercase DNS label of 1-63);
//! - durations and sizes follow [`units`] (the rules of CLI flags and API
//!   queries);
//! - unknown keys never pass silently;
//! - durations are > 0 (only `bake` may be `"0"`: off), the port is 1-65535, canary stages strictly increase
//!   and end at 100, thresholds are > 0, a canary's `min_requests` is >= 1
//!   and `on_low_traffic` one of [`LowTraffic`]'s three words;
//! - every `[jobs.<name>]` has a five-field cron `schedule` that fires
//!   ([`Schedule`]), a non-empty `command`, and a `service` that is one of
//!   the file's services.
//!
//! This module does no IO: the caller reads the file.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use toml::{Table, Value};

use crate::schedule::Schedule;
use crate::{names, units};

/// The file name used in every error message.
pub const FILE_NAME: &str = "berth.toml";

/// Default port an app listens on (000: port 3000).
pub const DEFAULT_PORT: u16 = 3000;

/// Grace of a stopping instance when `stop_timeout` is not set.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bake window when `bake` is not set.
pub const DEFAULT_BAKE: Duration = Duration::from_secs(600);

/// Name of the service a repository without `berth.toml` has.
pub const DEFAULT_SERVICE: &str = "web";

/// An error in `berth.toml`; its message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid TOML.
    #[error("{FILE_NAME}: invalid TOML at line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    /// A key is unknown or its value is invalid.
    #[error("{FILE_NAME}: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The key path the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Syntax { .. } => None,
        }
    }
}

/// Whether a service receives traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceKind {
    /// Routable: gets a hostname and readiness checks over HTTP.
    #[default]
    Web,
    /// A background worker without a route.
    Worker,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Web => "web",
            ServiceKind::Worker => "worker",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The readiness (health) check of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// HTTP path probed with GET; starts with `/`.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive failures that make the service unhealthy.
    pub failure_threshold: u32,
    /// Time the new version has to become healthy before the deployment fails.
    pub deadline: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            path: "/".to_string(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            failure_threshold: 3,
            deadline: Duration::from_secs(120),
        }
    }
}

/// Where a service's instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// A container sharing the host's kernel (`isolation = "container"`).
    #[default]
    Container,
    /// Its own microVM with its own kernel (`isolation = "microvm"`); a
    /// server that cannot run microVMs fails the deployment.
    MicroVm,
}

/// Resource limits of a service's container. `None` means no limit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (0.5 = half a core).
    pub cpus: Option<f64>,
}

/// A staged canary rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// Percentages of traffic, strictly increasing, ending at 100.
    pub stages: Vec<u8>,
    /// How long each stage is watched before the next one.
    pub observation_window: Duration,
    /// Error rate (0-1) above which the canary is rolled back.
    pub error_rate_threshold: f64,
    /// p95 latency ratio against the previous deployment above which the
    /// canary is rolled back (1.5 = 50 % slower).
    pub latency_p95_threshold: f64,
    /// Fewest candidate requests a window needs to be judged (>= 1).
    pub min_requests: u64,
    /// What a window that ends below `min_requests` does.
    pub on_low_traffic: LowTraffic,
}

/// `on_low_traffic`: the rule for a canary window that saw fewer than
/// `min_requests` candidate requests ("no data" is not a pass by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowTraffic {
    /// `"extend"`: watch the stage for another window, at most
    /// [`crate::canary::MAX_EXTENSIONS`] times, then fail the deployment.
    #[default]
    Extend,
    /// `"promote"`: the stage passes on container health alone.
    Promote,
    /// `"fail"`: fail the deployment at once.
    Fail,
}

impl LowTraffic {
    pub fn as_str(self) -> &'static str {
        match self {
            LowTraffic::Extend => "extend",
            LowTraffic::Promote => "promote",
            LowTraffic::Fail => "fail",
        }
    }
}

impl fmt::Display for LowTraffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            stages: vec![5, 25, 50, 100],
            observation_window: Duration::from_secs(30),
            error_rate_threshold: 0.02,
            latency_p95_threshold: 1.5,
            min_requests: 100,
            on_low_traffic: LowTraffic::Extend,
        }
    }
}

/// What a service says about canary rollouts.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Canary {
    /// Nothing in the file: the project's default applies.
    #[default]
    Unset,
    /// `canary = "skip"`: always cut over directly.
    Skip,
    /// A `[services.<name>.canary]` table.
    Staged(CanaryConfig),
}

/// One `[services.<name>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub kind: ServiceKind,
    /// Port the app listens on inside its container (given to it as `$PORT`).
    pub port: u16,
    /// Dockerfile path relative to the repository root, when set.
    pub dockerfile: Option<String>,
    pub start_command: Option<String>,
    /// Run once before the new version takes traffic (migrations).
    pub release_command: Option<String>,
    /// Overrides the build command of a generated Dockerfile.
    pub build_command: Option<String>,
    pub readiness: Readiness,
    pub resources: Resources,
    pub canary: Canary,
    pub isolation: Isolation,
    /// Grace a stopping instance gets after SIGTERM before it is killed
    /// (`stop_timeout`, > 0).
    pub stop_timeout: Duration,
    /// How long the previous deployment stays running, unrouted, after a
    /// cutover (`bake`); zero turns the bake window off.
    pub bake: Duration,
    /// Instances of each deployment (`replicas`, 1 to [`MAX_REPLICAS`]).
    pub replicas: u32,
    /// `[services.<name>.volumes]`: absolute container path → volume name.
    /// A volume belongs to one environment and outlives deployments.
    pub volumes: BTreeMap<String, String>,
    /// `[services.<name>.backups]`: scheduled backups of the service's
    /// volumes.
    pub backups: Option<BackupSchedule>,
    /// `[services.<name>.edge]`: what the edge lets through to the service.
    pub edge: EdgePolicy,
}

/// `[services.<name>.edge]`, validated. The default lets everything
/// through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgePolicy {
    /// CIDRs the client's socket address must be in (`allow`); empty: any.
    /// Kept as written (each checked: an IP address, `/` and a prefix
    /// length that fits it, or a bare address).
    pub allow: Vec<String>,
    /// Requests per second per client IP (`rate_limit`, 1 to
    /// [`MAX_RATE_LIMIT`]).
    pub rate_limit: Option<u32>,
    /// Largest request body in bytes (`max_body`, e.g. `"10m"`).
    pub max_body: Option<u64>,
    /// `preview_auth = "basic"`: preview hostnames ask for the user and
    /// password in the secret `BERTH_PREVIEW_AUTH` (`user:password`).
    pub preview_auth: bool,
}

/// Highest `rate_limit`.
pub const MAX_RATE_LIMIT: i64 = 1_000_000;

/// Most instances one deployment may ask for.
pub const MAX_REPLICAS: u32 = 50;

impl ServiceConfig {
    /// A service with every default, of the given name and kind.
    pub fn new(name: impl Into<String>, kind: ServiceKind) -> Self {
        ServiceConfig {
            name: name.into(),
            kind,
            port: DEFAULT_PORT,
            dockerfile: None,
            start_command: None,
            release_command: None,
            build_command: None,
            readiness: Readiness::default(),
            resources: Resources::default(),
            canary: Canary::Unset,
            isolation: Isolation::Container,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            bake: DEFAULT_BAKE,
            replicas: 1,
            volumes: BTreeMap::new(),
            backups: None,
            edge: EdgePolicy::default(),
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig::new(DEFAULT_SERVICE, ServiceKind::Web)
    }
}

/// Longest a job's run may take when `timeout` is not set.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// One `[jobs.<name>]` table: a command run on a schedule in a new
/// instance of a service's active image.
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    pub name: String,
    /// Five fields, UTC.
    pub schedule: Schedule,
    /// Run with `sh -c` (like `release_command`).
    pub command: String,
    /// The service whose active deployment's image, variables, limits and
    /// hardening the run gets (default `web`).
    pub service: String,
    /// The run is killed after this long (default 1h).
    pub timeout: Duration,
}

/// The whole `berth.toml`: services and jobs by name.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[jobs.<name>]`; each names a service of `services`.
    pub jobs: BTreeMap<String, JobConfig>,
}

impl Default for AppConfig {
    /// One web service named `web`: what a repository without the file gets.
    fn default() -> Self {
        let web = ServiceConfig::default();
        AppConfig {
            services: BTreeMap::from([(web.name.clone(), web)]),
            jobs: BTreeMap::new(),
        }
    }
}

impl AppConfig {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.get(name)
    }
}

/// Parses the text of `berth.toml`.
pub fn parse(text: &str) -> Result<AppConfig, ConfigError> {
    let root: Table = text.parse::<Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        ConfigError::Syntax {
            line,
            reason: one_line(e.message()),
        }
    })?;
    for key in root.keys() {
        if key != "services" && key != "jobs" {
            return Err(ConfigError::invalid(key, "unknown key"));
        }
    }
    let services = match root.get("services") {
        None => return Err(ConfigError::invalid("services", "no service is defined")),
        Some(v) => as_table(v, "services")?,
    };
    if services.is_empty() {
        return Err(ConfigError::invalid("services", "no service is defined"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in services {
        let path = format!("services.{name}");
        validate_service_name(name).map_err(|r| ConfigError::invalid(&path, r))?;
        let svc = parse_service(name, as_table(value, &path)?, &path)?;
        out.insert(name.clone(), svc);
    }
    check_shared_volumes(&out)?;
    let mut jobs = BTreeMap::new();
    if let Some(v) = root.get("jobs") {
        for (name, value) in as_table(v, "jobs")? {
            let path = format!("jobs.{name}");
            names::job_name(name).map_err(|e| ConfigError::invalid(&path, e.to_string()))?;
            let job = parse_job(name, as_table(value, &path)?, &path, &out)?;
            jobs.insert(name.clone(), job);
        }
    }
    Ok(AppConfig {
        services: out,
        jobs,
    })
}

fn parse_job(
    name: &str,
    t: &Table,
    path: &str,
    services: &BTreeMap<String, ServiceConfig>,
) -> Result<JobConfig, ConfigError> {
    let mut schedule = None;
    let mut command = None;
    let mut service = DEFAULT_SERVICE.to_string();
    let mut timeout = DEFAULT_JOB_TIMEOUT;
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "schedule" => {
                let text = as_str(value, &kp)?;
                schedule = Some(Schedule::parse(text).map_err(|e| {
                    ConfigError::invalid(&kp, format!("invalid cron expression {text:?}: {e}"))
                })?);
            }
            "command" => command = Some(non_empty(value, &kp)?.to_string()),
            "service" => service = as_str(value, &kp)?.to_string(),
            "timeout" => timeout = duration(value, &kp)?,
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    let schedule = schedule.ok_or_else(|| {
        ConfigError::invalid(
            format!("{path}.schedule"),
            "missing: a five-field cron expression in UTC, e.g. \"0 3 * * *\"",
        )
    })?;
    let command =
        command.ok_or_else(|| ConfigError::invalid(format!("{path}.command"), "missing"))?;
    if !services.contains_key(&service) {
        let known: Vec<&str> = services.keys().map(String::as_str).collect();
        return Err(ConfigError::invalid(
            format!("{path}.service"),
            format!(
                "unknown service {service:?} (services: {})",
                known.join(", ")
            ),
        ));
    }
    Ok(JobConfig {
        name: name.to_string(),
        schedule,
        command,
        service,
        timeout,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_service(name: &str, t: &Table, path: &str) -> Result<ServiceConfig, ConfigError> {
    let mut svc = ServiceConfig::new(name, ServiceKind::Web);
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "kind" => {
                svc.kind = match as_str(value, &kp)? {
                    "web" => ServiceKind::Web,
                    "worker" => ServiceKind::Worker,
                    other => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("expected \"web\" or \"worker\", got \"{other}\""),
                        ))
                    }
                }
            }
            "port" => {
                let p = as_int(value, &kp)?;
                if !(1..=65535).contains(&p) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("port must be between 1 and 65535, got {p}"),
                    ));
                }
                svc.port = p as u16;
            }
            "dockerfile" => {
                let s = non_empty(value, &kp)?;
                if s.starts_with('/') || s.split('/').any(|c| c == "..") {
                    return Err(ConfigError::invalid(
                        kp,
                        "must be a path inside the repository (relative, without \"..\")",
                    ));
                }
                svc.dockerfile = Some(s.to_string());
            }
            "start_command" => svc.start_command = Some(non_empty(value, &kp)?.to_string()),
            "release_command" => svc.release_command = Some(non_empty(value, &kp)?.to_string()),
            "build_command" => svc.build_command = Some(non_empty(value, &kp)?.to_string()),
            "replicas" => {
                let n = as_int(value, &kp)?;
                if !(1..=i64::from(MAX_REPLICAS)).contains(&n) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be between 1 and {MAX_REPLICAS}, got {n}"),
                    ));
                }
                svc.replicas = n as u32;
            }
            "readiness" => svc.readiness = parse_readiness(as_table(value, &kp)?, &kp)?,
            "volumes" => svc.volumes = parse_volumes(as_table(value, &kp)?, &kp)?,
            "backups" => svc.backups = Some(parse_backups(as_table(value, &kp)?, &kp)?),
            "edge" => svc.edge = parse_edge(as_table(value, &kp)?, &kp)?,
            "stop_timeout" => svc.stop_timeout = duration(value, &kp)?,
            "bake" => svc.bake = duration_or_zero(value, &kp)?,
            "resources" => svc.resources = parse_resources(as_table(value, &kp)?, &kp)?,
            "isolation" => {
                svc.isolation = match as_str(value, &kp)? {
                    "container" => Isolation::Container,
                    "microvm" => Isolation::MicroVm,
                    other => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("expected \"container\" or \"microvm\", got \"{other}\""),
                        ))
                    }
                }
            }
            "canary" => {
                svc.canary = match value {
                    Value::String(s) if s == "skip" => Canary::Skip,
                    Value::String(s) => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("expected \"skip\" or a table, got \"{s}\""),
                        ))
                    }
                    Value::Table(t) => Canary::Staged(parse_canary(t, &kp)?),
                    other => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("expected \"skip\" or a table, got {}", other.type_str()),
                        ))
                    }
                }
            }
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    if svc.backups.is_some() && svc.volumes.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.backups"),
            "the service mounts no volume to back up ([services.<name>.volumes])",
        ));
    }
    Ok(svc)
}

/// `[services.<name>.volumes]`: `"/data" = "uploads"`. The path is where
/// the volume appears in the container: absolute, not `/`, without `..`,
/// `.`, `:` or `,` (the engines' mount syntax), whitespace or control
/// characters; a trailing `/` is dropped. One volume is mounted once per
/// service.
fn parse_volumes(t: &Table, path: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in t {
        let kp = format!("{path}.\"{key}\"");
        let target = volume_path(key).map_err(|r| ConfigError::invalid(&kp, r))?;
        let volume = as_str(value, &kp)?;
        names::volume_name(volume).map_err(|e| ConfigError::invalid(&kp, e.to_string()))?;
        if let Some((other, _)) = out.iter().find(|(_, v)| *v == volume) {
            return Err(ConfigError::invalid(
                kp,
                format!("volume \"{volume}\" is already mounted at {other}"),
            ));
        }
        if out.insert(target.clone(), volume.to_string()).is_some() {
            return Err(ConfigError::invalid(
                kp,
                format!("{target} is mapped twice"),
            ));
        }
    }
    Ok(out)
}

/// `[services.<name>.backups]`: every volume of the service is backed up
/// at each firing of `schedule` (five-field cron, UTC); the newest `keep`
/// scheduled backups of each volume are kept, older ones removed.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSchedule {
    pub schedule: Schedule,
    pub keep: u32,
}

/// Scheduled backups kept per volume when `keep` is not set.
pub const DEFAULT_BACKUP_KEEP: u32 = 7;

fn parse_backups(t: &Table, path: &str) -> Result<BackupSchedule, ConfigError> {
    let mut schedule = None;
    let mut keep = DEFAULT_BACKUP_KEEP;
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "schedule" => {
                let text = as_str(value, &kp)?;
                schedule = Some(Schedule::parse(text).map_err(|e| {
                    ConfigError::invalid(&kp, format!("invalid cron expression {text:?}: {e}"))
                })?);
            }
            "keep" => {
                let n = as_int(value, &kp)?;
                if !(1..=1000).contains(&n) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be between 1 and 1000, got {n}"),
                    ));
                }
                keep = n as u32;
            }
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    let schedule = schedule.ok_or_else(|| {
        ConfigError::invalid(
            format!("{path}.schedule"),
            "missing: a five-field cron expression in UTC, e.g. \"0 3 * * *\"",
        )
    })?;
    Ok(BackupSchedule { schedule, keep })
}

/// The one rule for a volume's container path; see [`parse_volumes`].
pub fn volume_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err("the container path must be absolute (start with \"/\")".into());
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("the container path must not be \"/\"".into());
    }
    if p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == ',')
    {
        return Err("the container path must not contain whitespace, ':' or ','".into());
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("the container path must be normalised (no \"//\", \".\" or \"..\")".into());
    }
    Ok(trimmed.to_string())
}

/// Two services of one file that mount one volume mount it at one path
/// (the same data seen at two places is a mistake waiting to happen).
fn check_shared_volumes(services: &BTreeMap<String, ServiceConfig>) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for svc in services.values() {
        for (target, volume) in &svc.volumes {
            match seen.get(volume.as_str()) {
                Some((other, other_path)) if other_path != target => {
                    return Err(ConfigError::invalid(
                        format!("services.{}.volumes.\"{target}\"", svc.name),
                        format!(
                            "volume \"{volume}\" is mounted at {other_path} by service {other}; every service must mount it at the same path"
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    seen.insert(volume, (&svc.name, target));
                }
            }
        }
    }
    Ok(())
}

fn parse_edge(t: &Table, path: &str) -> Result<EdgePolicy, ConfigError> {
    let mut e = EdgePolicy::default();
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "allow" => {
                let Value::Array(items) = value else {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("expected a list of CIDRs, got {}", value.type_str()),
                    ));
                };
                for item in items {
                    let c = as_str(item, &kp)?;
                    check_cidr(c).map_err(|r| ConfigError::invalid(&kp, format!("{c:?}: {r}")))?;
                    e.allow.push(c.trim().to_string());
                }
                if e.allow.is_empty() {
                    return Err(ConfigError::invalid(
                        kp,
                        "an empty list would refuse everyone; remove the key to allow all",
                    ));
                }
            }
            "rate_limit" => {
                let n = as_int(value, &kp)?;
                if !(1..=MAX_RATE_LIMIT).contains(&n) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("requests per second per client must be between 1 and {MAX_RATE_LIMIT}, got {n}"),
                    ));
                }
                e.rate_limit = Some(n as u32);
            }
            "max_body" => {
                let n = match value {
                    Value::Integer(n) if *n > 0 => *n as u64,
                    Value::String(s) => units::parse_size(s)
                        .map_err(|err| ConfigError::invalid(&kp, err.to_string()))?,
                    other => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!(
                            "expected a size such as \"10m\" or a number of bytes above 0, got {}",
                            other
                        ),
                        ))
                    }
                };
                if n == 0 {
                    return Err(ConfigError::invalid(kp, "must be above 0"));
                }
                e.max_body = Some(n);
            }
            "preview_auth" => match as_str(value, &kp)? {
                "basic" => e.preview_auth = true,
                other => {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("expected \"basic\", got \"{other}\""),
                    ))
                }
            },
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    Ok(e)
}

/// Checks a CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare address.
fn check_cidr(s: &str) -> Result<(), &'static str> {
    let (ip, len) = match s.trim().split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s.trim(), None),
    };
    let ip: std::net::IpAddr = ip.parse().map_err(|_| "not an IP address")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if let Some(len) = len {
        match len.parse::<u32>() {
            Ok(n) if n <= max => {}
            _ if max == 32 => return Err("the prefix length must be 0 to 32"),
            _ => return Err("the prefix length must be 0 to 128"),
        }
    }
    Ok(())
}

fn parse_readiness(t: &Table, path: &str) -> Result<Readiness, ConfigError> {
    let mut r = Readiness::default();
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "path" => {
                let s = as_str(value, &kp)?;
                if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
                    return Err(ConfigError::invalid(
                        kp,
                        "must start with \"/\" and contain no whitespace",
                    ));
                }
                r.path = s.to_string();
            }
            "interval" => r.interval = duration(value, &kp)?,
            "timeout" => r.timeout = duration(value, &kp)?,
            "deadline" => r.deadline = duration(value, &kp)?,
            "failure_threshold" => {
                let n = as_int(value, &kp)?;
                if !(1..=1000).contains(&n) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be between 1 and 1000, got {n}"),
                    ));
                }
                r.failure_threshold = n as u32;
            }
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    Ok(r)
}

fn parse_resources(t: &Table, path: &str) -> Result<Resources, ConfigError> {
    let mut r = Resources::default();
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "memory" => {
                let s = as_str(value, &kp)?;
                let bytes =
                    units::parse_size(s).map_err(|e| ConfigError::invalid(&kp, e.to_string()))?;
                if bytes < 6 * 1024 * 1024 {
                    return Err(ConfigError::invalid(kp, "must be at least 6m"));
                }
                r.memory_bytes = Some(bytes);
            }
            "cpus" => {
                let c = as_float(value, &kp)?;
                if !(c > 0.0 && c <= 1024.0) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be greater than 0 and at most 1024, got {c}"),
                    ));
                }
                r.cpus = Some(c);
            }
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    Ok(r)
}

fn parse_canary(t: &Table, path: &str) -> Result<CanaryConfig, ConfigError> {
    let mut c = CanaryConfig::default();
    for (key, value) in t {
        let kp = format!("{path}.{key}");
        match key.as_str() {
            "stages" => {
                let Value::Array(items) = value else {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("expected an array, got {}", value.type_str()),
                    ));
                };
                let mut stages = Vec::with_capacity(items.len());
                for item in items {
                    let n = as_int(item, &kp)?;
                    if !(1..=100).contains(&n) {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("each stage must be a percentage between 1 and 100, got {n}"),
                        ));
                    }
                    if stages.last().is_some_and(|&last| last >= n as u8) {
                        return Err(ConfigError::invalid(kp, "stages must strictly increase"));
                    }
                    stages.push(n as u8);
                }
                if stages.last() != Some(&100) {
                    return Err(ConfigError::invalid(kp, "the last stage must be 100"));
                }
                c.stages = stages;
            }
            "observation_window" => c.observation_window = duration(value, &kp)?,
            "error_rate_threshold" => {
                let f = as_float(value, &kp)?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be greater than 0 and at most 1, got {f}"),
                    ));
                }
                c.error_rate_threshold = f;
            }
            "latency_p95_threshold" => {
                let f = as_float(value, &kp)?;
                if !(f > 0.0 && f.is_finite()) {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be greater than 0, got {f}"),
                    ));
                }
                c.latency_p95_threshold = f;
            }
            "min_requests" => {
                let n = as_int(value, &kp)?;
                if n < 1 {
                    return Err(ConfigError::invalid(
                        kp,
                        format!("must be at least 1, got {n}"),
                    ));
                }
                c.min_requests = n as u64;
            }
            "on_low_traffic" => {
                c.on_low_traffic = match as_str(value, &kp)? {
                    "extend" => LowTraffic::Extend,
                    "promote" => LowTraffic::Promote,
                    "fail" => LowTraffic::Fail,
                    other => {
                        return Err(ConfigError::invalid(
                            kp,
                            format!("expected \"extend\", \"promote\" or \"fail\", got {other:?}"),
                        ))
                    }
                };
            }
            _ => return Err(ConfigError::invalid(kp, "unknown key")),
        }
    }
    Ok(c)
}

fn as_table<'a>(v: &'a Value, key: &str) -> Result<&'a Table, ConfigError> {
    v.as_table()
        .ok_or_else(|| ConfigError::invalid(key, format!("expected a table, got {}", v.type_str())))
}

fn as_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, ConfigError> {
    v.as_str().ok_or_else(|| {
        ConfigError::invalid(key, format!("expected a string, got {}", v.type_str()))
    })
}

fn non_empty<'a>(v: &'a Value, key: &str) -> Result<&'a str, ConfigError> {
    let s = as_str(v, key)?;
    if s.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(s)
}

fn as_int(v: &Value, key: &str) -> Result<i64, ConfigError> {
    v.as_integer().ok_or_else(|| {
        ConfigError::invalid(key, format!("expected an integer, got {}", v.type_str()))
    })
}

fn as_float(v: &Value, key: &str) -> Result<f64, ConfigError> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Integer(i) => Ok(*i as f64),
        other => Err(ConfigError::invalid(
            key,
            format!("expected a number, got {}", other.type_str()),
        )),
    }
}

fn duration(v: &Value, key: &str) -> Result<Duration, ConfigError> {
    let d = duration_or_zero(v, key)?;
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than 0"));
    }
    Ok(d)
}

/// A duration where `"0"` is allowed (it turns something off).
fn duration_or_zero(v: &Value, key: &str) -> Result<Duration, ConfigError> {
    let s = as_str(v, key).map_err(|_| {
        ConfigError::invalid(
            key,
            format!(
                "expected a duration string such as \"15s\", got {}",
                v.type_str()
            ),
        )
    })?;
    units::parse_duration(s).map_err(|e| ConfigError::invalid(key, e.to_string()))
}

/// Checks a service name with the one rule of [`names::service_name`].
pub fn validate_service_name(name: &str) -> Result<(), String> {
    names::service_name(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_one_web_service_with_documented_defaults() {
        let c = AppConfig::default();
        assert_eq!(c.services.len(), 1);
        let web = c.service("web").expect("web service");
        assert_eq!(web.kind, ServiceKind::Web);
        assert_eq!(web.port, 3000);
        assert_eq!(web.readiness.path, "/");
        assert_eq!(web.readiness.interval, Duration::from_secs(15));
        assert_eq!(web.readiness.timeout, Duration::from_secs(5));
        assert_eq!(web.readiness.failure_threshold, 3);
        assert_eq!(web.canary, Canary::Unset);
        assert_eq!(web.isolation, Isolation::Container);
    }

    #[test]
    fn replicas_are_1_to_50() {
        let c = parse("[services.web]\nreplicas = 3\n[services.api]\n").unwrap();
        assert_eq!(c.service("web").unwrap().replicas, 3);
        assert_eq!(c.service("api").unwrap().replicas, 1);
        assert_eq!(
            parse("[services.web]\nreplicas = 50\n").unwrap().services["web"].replicas,
            50
        );
        for (text, why) in [
            ("replicas = 0", "must be between 1 and 50, got 0"),
            ("replicas = 51", "must be between 1 and 50, got 51"),
            ("replicas = -2", "must be between 1 and 50, got -2"),
            ("replicas = 2.5", "expected an integer, got float"),
            ("replicas = \"3\"", "expected an integer, got string"),
        ] {
            let err = parse(&format!("[services.web]\n{text}\n")).unwrap_err();
            assert_eq!(err.key(), Some("services.web.replicas"), "{text}");
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn edge_policies_are_checked() {
        let c = parse(
            "[services.web.edge]\nallow = [\"127.0.0.2/32\", \"fd00::/8\", \"10.1.2.3\"]\nrate_limit = 20\nmax_body = \"1k\"\npreview_auth = \"basic\"\n",
        )
        .unwrap();
        let e = &c.service("web").unwrap().edge;
        assert_eq!(e.allow, ["127.0.0.2/32", "fd00::/8", "10.1.2.3"]);
        assert_eq!(
            (e.rate_limit, e.max_body, e.preview_auth),
            (Some(20), Some(1024), true)
        );
        assert_eq!(
            parse("[services.web]\n").unwrap().services["web"].edge,
            EdgePolicy::default()
        );
        for (text, key, why) in [
            (
                "allow = [\"10.0.0.0/33\"]",
                "allow",
                "\"10.0.0.0/33\": the prefix length must be 0 to 32",
            ),
            ("allow = [\"::/129\"]", "allow", "0 to 128"),
            ("allow = [\"lots\"]", "allow", "not an IP address"),
            (
                "allow = \"10.0.0.0/8\"",
                "allow",
                "expected a list of CIDRs",
            ),
            ("allow = []", "allow", "would refuse everyone"),
            (
                "rate_limit = 0",
                "rate_limit",
                "between 1 and 1000000, got 0",
            ),
            ("rate_limit = 1.5", "rate_limit", "expected an integer"),
            ("max_body = \"lots\"", "max_body", "lots"),
            ("max_body = 0", "max_body", "above 0"),
            ("max_body = \"0\"", "max_body", "above 0"),
            (
                "preview_auth = \"digest\"",
                "preview_auth",
                "expected \"basic\"",
            ),
            ("deny = []", "deny", "unknown key"),
        ] {
            let err = parse(&format!("[services.web.edge]\n{text}\n")).unwrap_err();
            assert_eq!(
                err.key(),
                Some(format!("services.web.edge.{key}").as_str()),
                "{text}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with("berth.toml: "), "{msg}");
            assert!(msg.contains(why), "{text}: {msg}");
        }
    }

    #[test]
    fn isolation_is_container_or_microvm() {
        let c = parse("[services.web]\nisolation = \"microvm\"\n[services.jobs]\nkind = \"worker\"\nisolation = \"container\"\n").unwrap();
        assert_eq!(c.service("web").unwrap().isolation, Isolation::MicroVm);
        assert_eq!(c.service("jobs").unwrap().isolation, Isolation::Container);
        let err = parse("[services.web]\nisolation = \"vm\"\n").unwrap_err();
        assert_eq!(err.key(), Some("services.web.isolation"));
        assert!(err.to_string().contains("got \"vm\""), "{err}");
        let err = parse("[services.web]\nisolation = 1\n").unwrap_err();
        assert_eq!(err.key(), Some("services.web.isolation"));
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
[services.web]
kind = "web"
port = 8080
dockerfile = "docker/web.Dockerfile"
start_command = "node server.js"
release_command = "npm run migrate"
build_command = "npm run build"

[services.web.readiness]
path = "/healthz"
interval = "500ms"
timeout = "2s"
failure_threshold = 5
deadline = "2m"

[services.web.resources]
memory = "512m"
cpus = 0.5

[services.web.canary]
stages = [10, 50, 100]
observation_window = "1m"
error_rate_threshold = 0.05
latency_p95_threshold = 2
min_requests = 500
on_low_traffic = "promote"

[services.jobs]
kind = "worker"
canary = "skip"
resources = { memory = "1g", cpus = 2 }
"#;
        let c = parse(text).expect("valid");
        let web = c.service("web").unwrap();
        assert_eq!(web.port, 8080);
        assert_eq!(web.dockerfile.as_deref(), Some("docker/web.Dockerfile"));
        assert_eq!(web.start_command.as_deref(), Some("node server.js"));
        assert_eq!(web.release_command.as_deref(), Some("npm run migrate"));
        assert_eq!(web.build_command.as_deref(), Some("npm run build"));
        assert_eq!(web.readiness.path, "/healthz");
        assert_eq!(web.readiness.interval, Duration::from_millis(500));
        assert_eq!(web.readiness.timeout, Duration::from_secs(2));
        assert_eq!(web.readiness.failure_threshold, 5);
        assert_eq!(web.readiness.deadline, Duration::from_secs(120));
        assert_eq!(web.resources.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(web.resources.cpus, Some(0.5));
        assert_eq!(
            web.canary,
            Canary::Staged(CanaryConfig {
                stages: vec![10, 50, 100],
                observation_window: Duration::from_secs(60),
                error_rate_threshold: 0.05,
                latency_p95_threshold: 2.0,
                min_requests: 500,
                on_low_traffic: LowTraffic::Promote,
            })
        );
        let jobs = c.service("jobs").unwrap();
        assert_eq!(jobs.kind, ServiceKind::Worker);
        assert_eq!(jobs.canary, Canary::Skip);
        assert_eq!(jobs.port, 3000);
        assert_eq!(jobs.resources.memory_bytes, Some(1 << 30));
        assert_eq!(jobs.resources.cpus, Some(2.0));
    }

    #[test]
    fn stop_timeout_and_bake_default_and_parse() {
        let web = ServiceConfig::default();
        assert_eq!(web.stop_timeout, Duration::from_secs(10));
        assert_eq!(web.bake, Duration::from_secs(600));
        let c = parse(
            "[services.web]\nstop_timeout = \"30s\"\nbake = \"2m\"\n[services.api]\nbake = \"0\"\n",
        )
        .unwrap();
        let web = c.service("web").unwrap();
        assert_eq!(web.stop_timeout, Duration::from_secs(30));
        assert_eq!(web.bake, Duration::from_secs(120));
        assert_eq!(c.service("api").unwrap().bake, Duration::ZERO);
    }

    #[test]
    fn empty_canary_table_takes_defaults() {
        let c = parse("[services.web.canary]\n").unwrap();
        assert_eq!(
            c.service("web").unwrap().canary,
            Canary::Staged(CanaryConfig::default())
        );
    }

    #[test]
    fn minimal_service_takes_defaults() {
        let c = parse("[services.web]\n").unwrap();
        assert_eq!(c, AppConfig::default());
    }

    /// Every rule: (file text, key path named, words in the reason).
    #[test]
    fn rejections_name_file_key_and_reason() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "services", "no service"),
            ("[services]\n", "services", "no service"),
            ("project = \"x\"\n", "project", "unknown key"),
            ("services = 3\n", "services", "expected a table"),
            (
                "[services.Web]\n",
                "services.Web",
                "must be lowercase letters",
            ),
            (
                "[services.\"my_app\"]\n",
                "services.my_app",
                "must be lowercase letters",
            ),
            (
                "[services.\"-a\"]\n",
                "services.-a",
                "must be lowercase letters",
            ),
            (
                "[services.\"a-\"]\n",
                "services.a-",
                "must be lowercase letters",
            ),
            (
                "[services.\"1a\"]\n",
                "services.1a",
                "must be lowercase letters",
            ),
            ("services.web = 1\n", "services.web", "expected a table"),
            (
                "[services.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
                "services.a",
                "longer than 63 characters",
            ),
            (
                "[services.web]\nportt = 1\n",
                "services.web.portt",
                "unknown key",
            ),
            (
                "[services.web]\nkind = \"cron\"\n",
                "services.web.kind",
                "\"web\" or \"worker\"",
            ),
            (
                "[services.web]\nkind = 1\n",
                "services.web.kind",
                "expected a string",
            ),
            (
                "[services.web]\nport = 0\n",
                "services.web.port",
                "between 1 and 65535",
            ),
            (
                "[services.web]\nport = 65536\n",
                "services.web.port",
                "between 1 and 65535",
            ),
            (
                "[services.web]\nport = \"80\"\n",
                "services.web.port",
                "expected an integer",
            ),
            (
                "[services.web]\ndockerfile = \"\"\n",
                "services.web.dockerfile",
                "must not be empty",
            ),
            (
                "[services.web]\ndockerfile = \"../x\"\n",
                "services.web.dockerfile",
                "inside the repository",
            ),
            (
                "[services.web]\ndockerfile = \"/etc/x\"\n",
                "services.web.dockerfile",
                "inside the repository",
            ),
            (
                "[services.web]\nstart_command = \" \"\n",
                "services.web.start_command",
                "must not be empty",
            ),
            (
                "[services.web]\nrelease_command = 1\n",
                "services.web.release_command",
                "expected a string",
            ),
            (
                "[services.web]\nbuild_command = \"\"\n",
                "services.web.build_command",
                "must not be empty",
            ),
            (
                "[services.web.readiness]\npath = \"health\"\n",
                "services.web.readiness.path",
                "start with \"/\"",
            ),
            (
                "[services.web.readiness]\ninterval = \"15\"\n",
                "services.web.readiness.interval",
                "no unit",
            ),
            (
                "[services.web.readiness]\ninterval = 15\n",
                "services.web.readiness.interval",
                "duration string",
            ),
            (
                "[services.web.readiness]\ntimeout = \"5 parsecs\"\n",
                "services.web.readiness.timeout",
                "not a duration",
            ),
            (
                "[services.web.readiness]\ntimeout = \"5w\"\n",
                "services.web.readiness.timeout",
                "unknown unit",
            ),
            (
                "[services.web.readiness]\ntimeout = \"0s\"\n",
                "services.web.readiness.timeout",
                "greater than 0",
            ),
            (
                "[services.web.readiness]\ntimeout = \"s\"\n",
                "services.web.readiness.timeout",
                "not a duration",
            ),
            (
                "[services.web.readiness]\ndeadline = \"-1s\"\n",
                "services.web.readiness.deadline",
                "not a duration",
            ),
            (
                "[services.web.readiness]\nfailure_threshold = 0\n",
                "services.web.readiness.failure_threshold",
                "between 1 and 1000",
            ),
            (
                "[services.web.readiness]\nretries = 3\n",
                "services.web.readiness.retries",
                "unknown key",
            ),
            (
                "[services.web.resources]\nmemory = \"lots\"\n",
                "services.web.resources.memory",
                "not a size",
            ),
            (
                "[services.web.resources]\nmemory = \"512x\"\n",
                "services.web.resources.memory",
                "unknown unit",
            ),
            (
                "[services.web.resources]\nmemory = \"1m\"\n",
                "services.web.resources.memory",
                "at least 6m",
            ),
            (
                "[services.web.resources]\nmemory = 512\n",
                "services.web.resources.memory",
                "expected a string",
            ),
            (
                "[services.web.resources]\ncpus = 0\n",
                "services.web.resources.cpus",
                "greater than 0",
            ),
            (
                "[services.web.resources]\ncpus = -1.5\n",
                "services.web.resources.cpus",
                "greater than 0",
            ),
            (
                "[services.web.resources]\ncpus = \"1\"\n",
                "services.web.resources.cpus",
                "expected a number",
            ),
            (
                "[services.web.resources]\ndisk = \"1g\"\n",
                "services.web.resources.disk",
                "unknown key",
            ),
            (
                "[services.web]\ncanary = \"off\"\n",
                "services.web.canary",
                "\"skip\" or a table",
            ),
            (
                "[services.web]\ncanary = false\n",
                "services.web.canary",
                "\"skip\" or a table",
            ),
            (
                "[services.web.canary]\nstages = [5, 25, 50]\n",
                "services.web.canary.stages",
                "last stage must be 100",
            ),
            (
                "[services.web.canary]\nstages = []\n",
                "services.web.canary.stages",
                "last stage must be 100",
            ),
            (
                "[services.web.canary]\nstages = [50, 25, 100]\n",
                "services.web.canary.stages",
                "strictly increase",
            ),
            (
                "[services.web.canary]\nstages = [50, 50, 100]\n",
                "services.web.canary.stages",
                "strictly increase",
            ),
            (
                "[services.web.canary]\nstages = [0, 100]\n",
                "services.web.canary.stages",
                "between 1 and 100",
            ),
            (
                "[services.web.canary]\nstages = [50, 150]\n",
                "services.web.canary.stages",
                "between 1 and 100",
            ),
            (
                "[services.web.canary]\nstages = \"5,100\"\n",
                "services.web.canary.stages",
                "expected an array",
            ),
            (
                "[services.web.canary]\nobservation_window = \"0ms\"\n",
                "services.web.canary.observation_window",
                "greater than 0",
            ),
            (
                "[services.web.canary]\nerror_rate_threshold = 0\n",
                "services.web.canary.error_rate_threshold",
                "greater than 0",
            ),
            (
                "[services.web.canary]\nerror_rate_threshold = 2\n",
                "services.web.canary.error_rate_threshold",
                "at most 1",
            ),
            (
                "[services.web.canary]\nlatency_p95_threshold = -1\n",
                "services.web.canary.latency_p95_threshold",
                "greater than 0",
            ),
            (
                "[services.web.canary]\nlatency_p95_threshold = 0.0\n",
                "services.web.canary.latency_p95_threshold",
                "greater than 0",
            ),
            (
                "[services.web.canary]\nmin_requests = 0\n",
                "services.web.canary.min_requests",
                "must be at least 1, got 0",
            ),
            (
                "[services.web.canary]\nmin_requests = -5\n",
                "services.web.canary.min_requests",
                "must be at least 1",
            ),
            (
                "[services.web.canary]\nmin_requests = \"100\"\n",
                "services.web.canary.min_requests",
                "expected an integer",
            ),
            (
                "[services.web.canary]\non_low_traffic = \"maybe\"\n",
                "services.web.canary.on_low_traffic",
                "expected \"extend\", \"promote\" or \"fail\", got \"maybe\"",
            ),
            (
                "[services.web.canary]\non_low_traffic = true\n",
                "services.web.canary.on_low_traffic",
                "expected a string",
            ),
            (
                "[services.web.canary]\nstep = 1\n",
                "services.web.canary.step",
                "unknown key",
            ),
            (
                "[services.web]\nstop_timeout = \"0\"\n",
                "services.web.stop_timeout",
                "must be greater than 0",
            ),
            (
                "[services.web]\nstop_timeout = \"-5s\"\n",
                "services.web.stop_timeout",
                "is not a duration",
            ),
            (
                "[services.web]\nstop_timeout = \"10\"\n",
                "services.web.stop_timeout",
                "has no unit",
            ),
            (
                "[services.web]\nbake = \"-1s\"\n",
                "services.web.bake",
                "is not a duration",
            ),
            (
                "[services.web]\nbake = \"forever\"\n",
                "services.web.bake",
                "is not a duration",
            ),
            (
                "[services.web]\nbake = 600\n",
                "services.web.bake",
                "expected a duration string",
            ),
        ];
        for (text, key, reason) in cases {
            let err = parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.starts_with("berth.toml: "), "{text:?} -> {msg}");
            assert!(
                err.key().is_some_and(|k| k.starts_with(key)),
                "{text:?}: expected key {key}, got {msg}"
            );
            assert!(
                msg.contains(reason),
                "{text:?}: expected {reason:?} in {msg}"
            );
            assert!(!msg.contains('\n'), "{text:?}: not one line: {msg}");
        }
    }

    #[test]
    fn jobs_parse_with_defaults() {
        let c = parse(
            "[services.web]\n[services.worker]\nkind = \"worker\"\n\
             [jobs.cleanup]\nschedule = \"*/5  * * * *\"\ncommand = \"rake cleanup\"\n\
             [jobs.report]\nschedule = \"0 3 * * MON\"\ncommand = \"bin/report\"\n\
             service = \"worker\"\ntimeout = \"10m\"\n",
        )
        .unwrap();
        let cleanup = &c.jobs["cleanup"];
        assert_eq!(cleanup.schedule.as_str(), "*/5 * * * *");
        assert_eq!(cleanup.command, "rake cleanup");
        assert_eq!(cleanup.service, "web");
        assert_eq!(cleanup.timeout, DEFAULT_JOB_TIMEOUT);
        let report = &c.jobs["report"];
        assert_eq!(report.service, "worker");
        assert_eq!(report.timeout, Duration::from_secs(600));
        assert!(parse("[services.web]\n").unwrap().jobs.is_empty());
        assert!(AppConfig::default().jobs.is_empty());
    }

    #[test]
    fn job_rejections_name_file_key_and_reason() {
        let web = "[services.web]\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "[jobs.x]\nschedule = \"61 * * * *\"\ncommand = \"true\"\n",
                "jobs.x.schedule",
                "invalid cron expression \"61 * * * *\"",
            ),
            (
                "[jobs.x]\nschedule = \"* * * *\"\ncommand = \"true\"\n",
                "jobs.x.schedule",
                "expected five fields",
            ),
            (
                "[jobs.x]\nschedule = \"0 0 31 2 *\"\ncommand = \"true\"\n",
                "jobs.x.schedule",
                "never fires",
            ),
            (
                "[jobs.x]\ncommand = \"true\"\n",
                "jobs.x.schedule",
                "missing",
            ),
            (
                "[jobs.x]\nschedule = \"* * * * *\"\n",
                "jobs.x.command",
                "missing",
            ),
            (
                "[jobs.x]\nschedule = \"* * * * *\"\ncommand = \" \"\n",
                "jobs.x.command",
                "must not be empty",
            ),
            (
                "[jobs.x]\nschedule = \"* * * * *\"\ncommand = \"true\"\nservice = \"api\"\n",
                "jobs.x.service",
                "unknown service \"api\" (services: web)",
            ),
            (
                "[jobs.x]\nschedule = \"* * * * *\"\ncommand = \"true\"\ntimeout = \"0\"\n",
                "jobs.x.timeout",
                "must be greater than 0",
            ),
            (
                "[jobs.x]\nschedule = \"* * * * *\"\ncommand = \"true\"\nretries = 3\n",
                "jobs.x.retries",
                "unknown key",
            ),
            (
                "[jobs.My_Job]\nschedule = \"* * * * *\"\ncommand = \"true\"\n",
                "jobs.My_Job",
                "job name",
            ),
            ("jobs = 1\n", "jobs", "expected a table"),
        ];
        for (text, key, reason) in cases {
            let text = format!("{text}{web}");
            let err = parse(&text).expect_err(&text);
            let msg = err.to_string();
            assert!(msg.starts_with("berth.toml: "), "{text:?} -> {msg}");
            assert_eq!(err.key(), Some(*key), "{text:?}: {msg}");
            assert!(
                msg.contains(reason),
                "{text:?}: expected {reason:?} in {msg}"
            );
            assert!(!msg.contains('\n'), "{text:?}: not one line: {msg}");
        }
    }

    #[test]
    fn syntax_error_is_one_line_with_line_number() {
        let err = parse("[services.web]\nport = = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{msg}");
        assert!(
            msg.starts_with("berth.toml: invalid TOML at line 2"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    /// berth.toml and the API apply the same name rule: a 40-character
    /// name is accepted by both, a 64-character one refused by both with
    /// the same reason.
    #[test]
    fn service_names_follow_the_one_rule() {
        let forty = "s".repeat(40);
        let c = parse(&format!("[services.{forty}]\n")).expect("40 characters");
        assert!(c.service(&forty).is_some());
        assert!(names::service_name(&forty).is_ok());
        let long = "s".repeat(64);
        let e = parse(&format!("[services.{long}]\n"))
            .unwrap_err()
            .to_string();
        let rule = names::service_name(&long).unwrap_err().to_string();
        assert!(e.ends_with(&rule), "{e} vs {rule}");
    }

    #[test]
    fn durations_and_sizes_follow_the_one_rule() {
        let c = parse(
            "[services.web.readiness]\ndeadline = \"1d\"\n[services.web.resources]\nmemory = \"1.5GiB\"\n",
        )
        .unwrap();
        let web = c.service("web").unwrap();
        assert_eq!(web.readiness.deadline, Duration::from_secs(86_400));
        assert_eq!(web.resources.memory_bytes, Some(3 << 29));
    }

    #[test]
    fn volumes_map_absolute_paths_to_names() {
        let c = parse(
            "[services.web.volumes]\n\"/data\" = \"uploads\"\n\"/var/cache/\" = \"cache\"\n\
             [services.worker]\nkind = \"worker\"\n[services.worker.volumes]\n\"/data\" = \"uploads\"\n",
        )
        .unwrap();
        let web = c.service("web").unwrap();
        assert_eq!(
            web.volumes,
            BTreeMap::from([
                ("/data".to_string(), "uploads".to_string()),
                ("/var/cache".to_string(), "cache".to_string()),
            ])
        );
        assert_eq!(c.service("worker").unwrap().volumes.len(), 1);
        assert!(AppConfig::default().services["web"].volumes.is_empty());
    }

    #[test]
    fn bad_volumes_are_refused_with_key_and_reason() {
        for (text, key, why) in [
            (
                "[services.web.volumes]\n\"data\" = \"uploads\"\n",
                "services.web.volumes.\"data\"",
                "must be absolute",
            ),
            (
                "[services.web.volumes]\n\"/\" = \"uploads\"\n",
                "services.web.volumes.\"/\"",
                "must not be \"/\"",
            ),
            (
                "[services.web.volumes]\n\"/a/../etc\" = \"uploads\"\n",
                "services.web.volumes.\"/a/../etc\"",
                "normalised",
            ),
            (
                "[services.web.volumes]\n\"/data:rw\" = \"uploads\"\n",
                "services.web.volumes.\"/data:rw\"",
                "':'",
            ),
            (
                "[services.web.volumes]\n\"/data\" = \"Uploads\"\n",
                "services.web.volumes.\"/data\"",
                "volume name \"Uploads\" must be lowercase",
            ),
            (
                "[services.web.volumes]\n\"/data\" = \"/srv/uploads\"\n",
                "services.web.volumes.\"/data\"",
                "volume name",
            ),
            (
                "[services.web.volumes]\n\"/data\" = 3\n",
                "services.web.volumes.\"/data\"",
                "expected a string",
            ),
            (
                "[services.web.volumes]\n\"/a\" = \"x\"\n\"/b\" = \"x\"\n",
                "services.web.volumes.\"/b\"",
                "already mounted at /a",
            ),
            (
                "[services.web]\nvolumes = \"x\"\n",
                "services.web.volumes",
                "expected a table",
            ),
            (
                "[services.api.volumes]\n\"/data\" = \"uploads\"\n[services.web.volumes]\n\"/srv\" = \"uploads\"\n",
                "services.web.volumes.\"/srv\"",
                "mounted at /data by service api",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            assert!(err.to_string().contains(why), "{text}: {err}");
            assert!(err.to_string().starts_with("berth.toml: "), "{err}");
        }
    }

    #[test]
    fn scheduled_backups_need_a_schedule_and_a_volume() {
        let c = parse(
            "[services.web.volumes]\n\"/data\" = \"uploads\"\n[services.web.backups]\nschedule = \"0 3 * * *\"\nkeep = 3\n",
        )
        .unwrap();
        let b = c.service("web").unwrap().backups.clone().unwrap();
        assert_eq!(b.keep, 3);
        assert_eq!(b.schedule.as_str(), "0 3 * * *");
        for (text, key, why) in [
            (
                "[services.web.backups]\nschedule = \"0 3 * * *\"\n",
                "services.web.backups",
                "mounts no volume",
            ),
            (
                "[services.web.volumes]\n\"/d\" = \"v\"\n[services.web.backups]\nkeep = 2\n",
                "services.web.backups.schedule",
                "missing",
            ),
            (
                "[services.web.volumes]\n\"/d\" = \"v\"\n[services.web.backups]\nschedule = \"61 * * * *\"\n",
                "services.web.backups.schedule",
                "invalid cron expression",
            ),
            (
                "[services.web.volumes]\n\"/d\" = \"v\"\n[services.web.backups]\nschedule = \"0 3 * * *\"\nkeep = 0\n",
                "services.web.backups.keep",
                "between 1 and 1000",
            ),
            (
                "[services.web.volumes]\n\"/d\" = \"v\"\n[services.web.backups]\nschedule = \"0 3 * * *\"\nevery = 1\n",
                "services.web.backups.every",
                "unknown key",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }
}

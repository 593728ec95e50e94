//! Projects, environments, services, deployments and their steps: the
//! records the store keeps and the API returns (JSON in camelCase).

use crate::state::{Health, Stage, State, Status};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Name of the environment every project has.
pub const PRODUCTION: &str = "production";
/// Name of the service of a repository without `berth.toml`.
pub const DEFAULT_SERVICE: &str = "web";
/// Images kept per service and environment unless the project says otherwise.
pub const DEFAULT_RETAIN_IMAGES: u32 = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub name: String,
    /// Git URL or local path; credentials inside it are masked when shown.
    pub repo: String,
    pub default_branch: String,
    pub retain_images: u32,
    /// Whether a webhook secret is set (the secret itself is never returned).
    pub has_webhook_secret: bool,
    /// Whether credentials for the repository are stored (given inside
    /// the repository URL at create or set; kept sealed, never returned).
    #[serde(default)]
    pub has_repo_credentials: bool,
    /// Whether an SSH deploy key is stored (sealed, never returned).
    #[serde(default)]
    pub has_deploy_key: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentKind {
    Production,
    Branch,
    Preview,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub project_name: String,
    pub name: String,
    /// The branch whose pushes deploy this environment.
    pub branch: Option<String>,
    pub kind: EnvironmentKind,
    pub created_at: DateTime<Utc>,
}

/// An environment variable as shown: secrets never carry their value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    pub key: String,
    /// The value, or `None` for a secret (shown masked).
    pub value: Option<String>,
    pub secret: bool,
    /// Available to builds: a plain value as a build argument, a secret as
    /// a BuildKit secret (`RUN --mount=type=secret,id=KEY`), never as a
    /// layer. Variables with a public prefix are build arguments anyway.
    #[serde(default)]
    pub build: bool,
    pub updated_at: DateTime<Utc>,
}

/// What created a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `berth deploy` or the API.
    Manual,
    /// `git push` to berth's own remote.
    GitPush,
    /// A GitHub webhook delivery.
    Webhook,
    Rollback,
    Promote,
    Redeploy,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::GitPush => "git_push",
            Trigger::Webhook => "webhook",
            Trigger::Rollback => "rollback",
            Trigger::Promote => "promote",
            Trigger::Redeploy => "redeploy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Trigger::Manual,
            Trigger::GitPush,
            Trigger::Webhook,
            Trigger::Rollback,
            Trigger::Promote,
            Trigger::Redeploy,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Commit {
    pub sha: String,
    pub branch: Option<String>,
    pub message: String,
    pub author: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// The image reference the runtime starts (tag or registry ref).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Registry digest when pushed, else the engine's image ID.
    pub digest: Option<String>,
}

/// The steps of a deployment (002), in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    Clone,
    Analyze,
    Build,
    Push,
    Release,
    Deploy,
    HealthCheck,
    Finalize,
}

pub const ALL_STEPS: [StepName; 8] = [
    StepName::Clone,
    StepName::Analyze,
    StepName::Build,
    StepName::Push,
    StepName::Release,
    StepName::Deploy,
    StepName::HealthCheck,
    StepName::Finalize,
];

impl StepName {
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Clone => "clone",
            StepName::Analyze => "analyze",
            StepName::Build => "build",
            StepName::Push => "push",
            StepName::Release => "release",
            StepName::Deploy => "deploy",
            StepName::HealthCheck => "health_check",
            StepName::Finalize => "finalize",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL_STEPS.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            StepStatus::Pending,
            StepStatus::Running,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
    pub fn is_finished(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: StepName,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// The step's output (the last lines when long; `berth logs` has all).
    pub log: String,
}

impl Step {
    pub fn pending(name: StepName) -> Self {
        Step {
            name,
            status: StepStatus::Pending,
            started_at: None,
            completed_at: None,
            duration_ms: None,
            log: String::new(),
        }
    }
}

/// What analyze found out about the source (002).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub provider: Option<String>,
    pub framework: Option<String>,
    pub runtime: Option<String>,
    pub port: Option<u16>,
    pub start_command: Option<String>,
    pub cache_hit: bool,
    /// The `berth.toml` of the commit as it was read ("" when absent), so a
    /// rollback or a no-clone redeploy runs with the same settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Hash of what besides the commit decides the image (build args, base
    /// images): equal commit and inputs mean an equal image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
}

/// One file of the build output (004's manifest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A single build-and-run of one service in one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub project_name: String,
    pub service_name: String,
    pub environment_name: String,
    pub status: Status,
    pub promotion_stage: Stage,
    pub health: Health,
    pub is_active: bool,
    pub route_url: Option<String>,
    pub preview_url: Option<String>,
    pub failure_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The ref asked for (branch, tag or SHA).
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: Option<Commit>,
    pub trigger: Trigger,
    /// For rollback, promote and redeploy: the deployment this one copies.
    pub source_deployment_id: Option<String>,
    pub image: Option<ImageInfo>,
    pub build: BuildInfo,
    pub steps: Vec<Step>,
    /// Traffic share in percent while a canary runs.
    pub canary_weight: Option<u32>,
    /// Where the deployment's container runs, while it has one (with
    /// replicas: the first instance; `instances` lists them all).
    #[serde(default)]
    pub runtime: Option<RuntimeInfo>,
    /// Instances wanted (`replicas` in `berth.toml`; 1 in records written
    /// before berth kept it).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Every running instance of the deployment, while it has them.
    #[serde(default)]
    pub instances: Vec<InstanceInfo>,
    /// While set, this replaced deployment keeps running, unrouted (warm),
    /// until then: a rollback or promote of it is a route flip (the bake
    /// window). `None` for every other deployment.
    #[serde(default)]
    pub bake_until: Option<DateTime<Utc>>,
    /// The repository to clone when it is not the project's (`git push` to
    /// berth's own remote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_repo: Option<String>,
    /// The store's version of this record when it was read: a save of a
    /// stale copy is refused (compare-and-set). Kept by the store, never
    /// serialized.
    #[serde(skip)]
    pub version: u64,
}

fn one() -> u32 {
    1
}

/// One instance of a deployment, as `instances` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    /// The runtime's id (a container id; a Swarm `<service id>.<slot>`).
    pub id: String,
    /// Its name (a DNS label).
    #[serde(default)]
    pub name: String,
    /// The node it runs on (Swarm: the node's hostname); `None` on the
    /// single-host runtimes.
    pub node: Option<String>,
    /// `host:port` the edge dials; `None` for workers.
    pub address: Option<String>,
    pub health: Health,
}

/// The running instance of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    pub instance_id: String,
    pub instance_name: String,
    /// `127.0.0.1:<port>` the edge and probes use; `None` for workers.
    pub address: Option<String>,
    /// What runs it: `container`, `microvm` or `swarm`; `None` in records
    /// written before berth kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Memory the instance got (a microVM's guest memory, the runtime's
    /// default when the service sets none); `None` when unlimited or unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPUs the instance got (a microVM's vCPUs); `None` when unlimited or
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl RuntimeInfo {
    /// One line for `berth inspect`: `microvm 256 MiB, 1 CPU`, or `-` when
    /// nothing is known.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.kind {
            parts.push(k.clone());
        }
        let mut res = Vec::new();
        if let Some(b) = self.memory_bytes {
            res.push(if b % (1024 * 1024) == 0 {
                format!("{} MiB", b / (1024 * 1024))
            } else {
                format!("{b} bytes")
            });
        }
        if let Some(c) = self.cpus {
            res.push(format!("{c} CPU{}", if c == 1.0 { "" } else { "s" }));
        }
        if !res.is_empty() {
            parts.push(res.join(", "));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

impl Deployment {
    pub fn state(&self) -> State {
        State {
            status: self.status,
            stage: self.promotion_stage,
            health: self.health,
        }
    }
    /// Moves the deployment by `event` through the state machine
    /// ([`crate::state::transition`]), the only way its state changes; an
    /// illegal move leaves it as it was and says why.
    pub fn apply(
        &mut self,
        event: crate::state::Event,
    ) -> Result<State, crate::state::TransitionError> {
        let s = crate::state::transition(self.state(), event)?;
        self.set_state(s);
        Ok(s)
    }
    fn set_state(&mut self, s: State) {
        self.status = s.status;
        self.promotion_stage = s.stage;
        self.health = s.health;
    }
    pub fn step(&self, name: StepName) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
    pub fn short_sha(&self) -> Option<&str> {
        self.commit.as_ref().map(|c| &c.sha[..c.sha.len().min(7)])
    }
}

/// A hostname served by an upstream berth does not run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRoute {
    pub hostname: String,
    pub upstream: String,
    pub created_at: DateTime<Utc>,
}

/// One server of a cluster sharing a store (`berth cluster status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    /// The server's instance id (kept in its data dir).
    pub id: String,
    pub api_url: String,
    pub is_leader: bool,
    /// The leader's epoch for the leader; the last epoch a follower saw.
    pub epoch: u64,
    pub last_seen_at: DateTime<Utc>,
}

/// Mask the credentials of a URL: `https://user:token@host/x` →
/// `https://***@host/x`. Anything that is not such a URL is returned as is.
/// Splits the credentials (`user:token@`) out of a URL: the URL without
/// them, and the userinfo. Paths, `scp`-style SSH addresses and URLs
/// without userinfo come back unchanged, with `None`.
pub fn split_url_credentials(url: &str) -> (String, Option<String>) {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            let scheme = &url[..scheme_end];
            // ssh://git@host/… names a user, not a credential.
            let userinfo = &rest[..at];
            if scheme == "ssh" && !userinfo.contains(':') {
                return (url.to_string(), None);
            }
            return (
                format!("{scheme}://{}", &rest[at + 1..]),
                Some(userinfo.to_string()),
            );
        }
    }
    (url.to_string(), None)
}

/// Puts credentials split off by [`split_url_credentials`] back.
pub fn with_url_credentials(url: &str, userinfo: Option<&str>) -> String {
    match (userinfo, url.find("://")) {
        (Some(u), Some(i)) => format!("{}://{u}@{}", &url[..i], &url[i + 3..]),
        _ => url.to_string(),
    }
}

pub fn mask_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            return format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_info_reads_old_records_and_summarises() {
        let old: RuntimeInfo =
            serde_json::from_str(r#"{"instanceId":"c1","instanceName":"n","address":null}"#)
                .unwrap();
        assert_eq!(old.kind, None);
        assert_eq!(old.summary(), "-");
        let vm = RuntimeInfo {
            kind: Some("microvm".into()),
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
            ..Default::default()
        };
        assert_eq!(vm.summary(), "microvm 256 MiB, 1 CPU");
        let json = serde_json::to_value(&vm).unwrap();
        assert_eq!(json["kind"], "microvm");
        assert_eq!(json["memoryBytes"], 256u64 << 20);
        assert_eq!(json["cpus"], 1.0);
        let c = RuntimeInfo {
            kind: Some("container".into()),
            cpus: Some(0.5),
            ..Default::default()
        };
        assert_eq!(c.summary(), "container 0.5 CPUs");
        assert!(serde_json::to_value(&c)
            .unwrap()
            .get("memoryBytes")
            .is_none());
    }

    #[test]
    fn mask_url_hides_credentials_only() {
        assert_eq!(
            mask_url("https://x-access-token:ghp_abc@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(
            mask_url("https://github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(mask_url("/srv/repo"), "/srv/repo");
        assert_eq!(mask_url("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(mask_url("https://host/a@b"), "https://host/a@b");
    }

    #[test]
    fn url_credentials_split_and_join() {
        let url = "https://x-access-token:ghp_abc@github.com/a/b.git";
        let (bare, cred) = split_url_credentials(url);
        assert_eq!(bare, "https://github.com/a/b.git");
        assert_eq!(cred.as_deref(), Some("x-access-token:ghp_abc"));
        assert_eq!(with_url_credentials(&bare, cred.as_deref()), url);
        for plain in [
            "https://github.com/a/b.git",
            "/srv/repo",
            "git@github.com:a/b.git",
            "ssh://git@github.com/a/b.git",
            "https://host/a@b",
        ] {
            assert_eq!(split_url_credentials(plain), (plain.to_string(), None));
            assert_eq!(with_url_credentials(plain, None), plain);
        }
        assert_eq!(
            split_url_credentials("ssh://git:pw@host/r.git"),
            ("ssh://host/r.git".to_string(), Some("git:pw".to_string()))
        );
    }

    #[test]
    fn words_round_trip() {
        for s in ALL_STEPS {
            assert_eq!(StepName::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(Trigger::parse("rollback"), Some(Trigger::Rollback));
        assert_eq!(StepStatus::parse("skipped"), Some(StepStatus::Skipped));
    }
}

/// Which log stream a line belongs to (003's three streams, with berth's
/// own split into platform events and build output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// berth's own events: stage transitions, probe results, failures.
    Berth,
    /// Output of clone, analyze, build, push and release steps.
    Build,
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Berth => "berth",
            LogStream::Build => "build",
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            LogStream::Berth,
            LogStream::Build,
            LogStream::Stdout,
            LogStream::Stderr,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One stored log line, tagged as 003 asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Position in the store, strictly increasing: the resume cursor.
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub deployment_id: String,
    pub project_name: String,
    pub service_name: String,
    pub environment_name: String,
    /// Short git SHA of the deployment, when known.
    pub sha: Option<String>,
    pub stream: LogStream,
    pub step: Option<StepName>,
    pub text: String,
}

/// A custom domain (004): verified by a TXT record, then routed to a
/// service's active deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub hostname: String,
    pub project_name: String,
    pub service_name: String,
    pub environment_name: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    /// The TXT record that proves control of the domain.
    pub verification: DomainVerification,
    /// Point the domain here (CNAME, or ALIAS at an apex).
    pub target: String,
    pub created_at: DateTime<Utc>,
    /// Its TLS certificate (ACME), once verified.
    #[serde(default)]
    pub certificate: CertificateStatus,
}

/// Where a hostname's TLS certificate stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// None asked for (not verified, or no ACME directory configured).
    #[default]
    None,
    /// Being obtained (or waiting for its first attempt).
    Pending,
    /// Issued and served.
    Issued,
    /// The last attempt failed; retried with backoff.
    Failed,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::None => "none",
            CertState::Pending => "pending",
            CertState::Issued => "issued",
            CertState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CertState> {
        Some(match s {
            "none" => CertState::None,
            "pending" => CertState::Pending,
            "issued" => CertState::Issued,
            "failed" => CertState::Failed,
            _ => return None,
        })
    }
}

/// A hostname's certificate as the API shows it (never the key).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub state: CertState,
    /// End of validity of the issued certificate.
    pub not_after: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Failed attempts in a row (0 once issued).
    #[serde(default)]
    pub attempts: u32,
    /// When the next attempt (issue, renewal or retry) is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainVerification {
    #[serde(rename = "type")]
    pub record_type: String,
    pub name: String,
    pub value: String,
}

/// The TXT record name that verifies `hostname`.
pub fn verification_name(hostname: &str) -> String {
    format!("_berth-challenge.{hostname}")
}

/// A service, or every service of an environment, in maintenance
/// (`berth maintenance on`): the edge answers its hostnames with 503,
/// `Retry-After` and berth's maintenance page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    pub project_name: String,
    pub environment_name: String,
    /// `None`: every service of the environment.
    pub service_name: Option<String>,
    pub since: DateTime<Utc>,
}

impl Maintenance {
    /// Whether this puts `service` of `project`/`environment` in maintenance.
    pub fn covers(&self, project: &str, environment: &str, service: &str) -> bool {
        self.project_name == project
            && self.environment_name == environment
            && self.service_name.as_deref().is_none_or(|s| s == service)
    }
}

/// Whether any of `list` puts `service` of `project`/`environment` in
/// maintenance.
pub fn in_maintenance(
    list: &[Maintenance],
    project: &str,
    environment: &str,
    service: &str,
) -> bool {
    list.iter().any(|m| m.covers(project, environment, service))
}

#[cfg(test)]
mod maintenance_tests {
    use super::*;

    #[test]
    fn environment_wide_covers_every_service_and_nothing_else() {
        let m = |service: Option<&str>| Maintenance {
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: service.map(Into::into),
            since: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let all = [m(None)];
        assert!(in_maintenance(&all, "shop", "production", "web"));
        assert!(in_maintenance(&all, "shop", "production", "api"));
        assert!(!in_maintenance(&all, "shop", "staging", "web"));
        assert!(!in_maintenance(&all, "blog", "production", "web"));
        let one = [m(Some("api"))];
        assert!(in_maintenance(&one, "shop", "production", "api"));
        assert!(!in_maintenance(&one, "shop", "production", "web"));
        assert!(!in_maintenance(&[], "shop", "production", "web"));
    }
}

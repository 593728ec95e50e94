//! berth-store: berth's durable state behind one interface, [`Store`].
//!
//! The SQLite backend ([`SqliteStore`]) keeps everything in one file in the
//! data dir, in WAL mode with `synchronous=FULL`, so whatever a call
//! acknowledged survives a kill -9 at any moment. Migrations are embedded in
//! the binary and applied at open. A PostgreSQL backend implements the same
//! trait later; nothing outside this crate sees SQL.
//!
//! Invariants:
//! - secret variable values and webhook secrets are sealed ([`crypto`])
//!   before they reach the database: no secret is ever written in clear,
//!   WAL included; reads return them masked except [`Store::resolve_variables`];
//! - secrets are sealed in one place, [`seal`], which every backend uses;
//! - a deployment record carries a version: a save of a copy read before
//!   another writer's save is refused ([`StoreError::Stale`]), so a stale
//!   writer (a health monitor) cannot undo a newer change (a supersede);
//! - a batch of deployment writes ([`Store::save_deployments`]) is one
//!   transaction, and the active deployment of a slot (project,
//!   environment, service) is one row flipped inside it: at any instant each
//!   slot has at most one active deployment;
//! - every write validates its input first and writes nothing when invalid.

pub mod cluster;
pub mod copy;
pub mod crypto;
mod postgres;
pub mod rollup;
pub mod seal;
mod sqlite;
#[doc(hidden)]
pub mod testpg;

pub use crypto::Cipher;
pub use postgres::{describe_target, PgStore};
pub use seal::{Sealer, Secret};
pub use sqlite::{SqliteStore, DB_FILE};

use async_trait::async_trait;
use berth_core::access::{AuditEntry, TokenInfo};
use berth_core::model::{
    CertState, ClusterMember, Deployment, Domain, Environment, ExternalRoute, LogLine, LogStream,
    Maintenance, ManifestEntry, Project, StepName, Variable,
};
use berth_core::notify::{Delivery, Notification};
use berth_core::ops::Run;
use berth_core::volumes::Backup;
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} already exists")]
    Conflict { what: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
    /// A compare-and-set save named a version another writer replaced:
    /// read the record again and redo the change on it.
    #[error("deployment {id} changed since it was read (version {expected}, now {found})")]
    Stale {
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("store error: {0}")]
    Backend(String),
    /// The database cannot be reached (the message names it).
    #[error("{0}")]
    Unavailable(String),
    /// A leader's write after its lease moved on: nothing was written.
    #[error(
        "this server is no longer the leader (lease epoch {epoch} moved on); nothing was written"
    )]
    Fenced { epoch: u64 },
}

impl StoreError {
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        StoreError::NotFound {
            what,
            name: name.into(),
        }
    }

    pub fn stale(d: &Deployment, found: u64) -> Self {
        StoreError::Stale {
            id: d.id.clone(),
            expected: d.version,
            found,
        }
    }

    pub fn is_stale(&self) -> bool {
        matches!(self, StoreError::Stale { .. })
    }
}

/// Which backend a database URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://<path>`: the database file.
    Sqlite(std::path::PathBuf),
    /// `postgres://...` or `postgresql://...`, as given.
    Postgres(String),
}

impl StoreUrl {
    /// The default: `sqlite://<data_dir>/berth.db`.
    pub fn default_for(data_dir: &std::path::Path) -> Self {
        StoreUrl::Sqlite(data_dir.join(DB_FILE))
    }

    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Invalid(
                    "database URL sqlite:// needs a file path (sqlite:///var/lib/berth/berth.db)"
                        .into(),
                ));
            }
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        let scheme = url.split("://").next().unwrap_or(url);
        Err(StoreError::Invalid(format!(
            "database URL must start with sqlite:// or postgres:// (got {:?})",
            if url.contains("://") {
                scheme
            } else {
                "no scheme"
            }
        )))
    }

    /// Open the store this URL names (migrations applied).
    pub async fn open(&self, cipher: Cipher) -> Result<std::sync::Arc<dyn Store>> {
        Ok(match self {
            StoreUrl::Sqlite(path) => std::sync::Arc::new(SqliteStore::open_file(path, cipher)?),
            StoreUrl::Postgres(url) => std::sync::Arc::new(PgStore::connect(url, cipher).await?),
        })
    }

    /// For messages: the file, or host:port/db (never a password).
    pub fn describe(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            StoreUrl::Postgres(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(c) => format!("postgres://{}", describe_target(&c)),
                Err(_) => "postgres://(invalid)".into(),
            },
        }
    }
}

/// A deployment as the backends store it (JSON): `is_active` is derived
/// from the slot and `version` kept in its own column.
pub(crate) fn run_json(r: &Run) -> Result<String> {
    serde_json::to_string(r).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn backup_json(b: &Backup) -> Result<String> {
    serde_json::to_string(b).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn backup_from_json(data: &str) -> Result<Backup> {
    serde_json::from_str(data).map_err(|e| StoreError::Backend(format!("bad backup record: {e}")))
}

pub(crate) fn run_from_json(data: &str) -> Result<Run> {
    serde_json::from_str(data).map_err(|e| StoreError::Backend(format!("bad run record: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| StoreError::Backend(format!("bad {what} record: {e}")))
}

pub(crate) fn deployment_json(d: &Deployment) -> Result<String> {
    let mut stored = d.clone();
    stored.is_active = false;
    serde_json::to_string(&stored).map_err(|e| StoreError::Backend(e.to_string()))
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A hostname's TLS certificate record. `key_pem` is sealed in the store
/// and opened on read; it is never serialized.
#[derive(Clone, PartialEq)]
pub struct CertRecord {
    pub hostname: String,
    pub state: CertState,
    /// PEM chain, leaf first (issued, or kept while a renewal fails).
    pub chain_pem: Option<String>,
    /// PEM private key of `chain_pem`.
    pub key_pem: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Failed attempts in a row (backoff).
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("hostname", &self.hostname)
            .field("state", &self.state)
            .field("not_after", &self.not_after)
            .field("error", &self.error)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<sealed>"))
            .finish()
    }
}

/// A project to create. The `production` environment comes with it.
#[derive(Clone, Debug)]
pub struct NewProject {
    pub name: String,
    pub repo: String,
    pub default_branch: String,
    pub retain_images: u32,
    pub webhook_secret: Option<String>,
    /// SSH private key for the repository.
    pub deploy_key: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Changes to a project; `None` keeps the current value.
#[derive(Clone, Debug, Default)]
pub struct ProjectPatch {
    pub retain_images: Option<u32>,
    pub webhook_secret: Option<String>,
    pub default_branch: Option<String>,
    pub repo: Option<String>,
    /// `Some("")` removes the stored key.
    pub deploy_key: Option<String>,
}

/// How a variable is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VarFlags {
    /// Sealed at rest, never shown.
    pub secret: bool,
    /// Given to builds (a build argument, or a BuildKit secret).
    pub build: bool,
}

impl VarFlags {
    pub const PLAIN: VarFlags = VarFlags {
        secret: false,
        build: false,
    };
    pub const SECRET: VarFlags = VarFlags {
        secret: true,
        build: false,
    };
}

/// What the pipeline needs to fetch a project's repository, in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoAccess {
    /// The URL with its credentials, if any were stored.
    pub url: String,
    /// The SSH deploy key, if one is stored.
    pub deploy_key: Option<String>,
}

impl std::fmt::Debug for RepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoAccess")
            .field("url", &berth_core::model::mask_url(&self.url))
            .field("deploy_key", &self.deploy_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A variable with its clear value, for the runtime and builds only.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedVar {
    pub key: String,
    pub value: String,
    pub secret: bool,
    pub build: bool,
}

impl std::fmt::Debug for ResolvedVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.secret { "***" } else { &self.value };
        write!(f, "{}={v}", self.key)
    }
}

/// Which service slot a deployment belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub project: String,
    pub environment: String,
    pub service: String,
}

impl Slot {
    pub fn of(d: &Deployment) -> Self {
        Slot {
            project: d.project_name.clone(),
            environment: d.environment_name.clone(),
            service: d.service_name.clone(),
        }
    }
}

/// Filters for listing deployments; results come newest first.
#[derive(Clone, Debug, Default)]
pub struct DeploymentQuery {
    pub project: Option<String>,
    pub environment: Option<String>,
    pub service: Option<String>,
    /// Only deployments whose status is not terminal.
    pub unfinished: bool,
    pub limit: Option<u32>,
}

/// A log line to append (tags are joined from the deployment on read).
#[derive(Clone, Debug)]
pub struct NewLogLine {
    pub deployment_id: String,
    pub ts: DateTime<Utc>,
    pub stream: LogStream,
    pub step: Option<StepName>,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub deployment_id: Option<String>,
    /// Every deployment of this slot (runtime logs across deployments).
    pub slot: Option<Slot>,
    pub streams: Vec<LogStream>,
    pub step: Option<StepName>,
    /// Only lines with `seq` greater than this (resume cursor).
    pub after_seq: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// When limited, return the last `limit` lines rather than the first.
    pub tail: bool,
}

/// Filters for listing runs; results come newest first.
#[derive(Clone, Debug, Default)]
pub struct RunQuery {
    pub project: Option<String>,
    pub environment: Option<String>,
    /// Only this job's runs.
    pub job: Option<String>,
    /// Only runs of jobs (not `berth run`).
    pub jobs_only: bool,
    /// Only runs still going.
    pub unfinished: bool,
    /// Only runs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
}

/// An API token as stored: its record and the SHA-256 (hex) of the token,
/// never the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub hash: String,
}

/// Filters for the audit log; results come newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub limit: Option<u32>,
}

/// A console sign-in: the SHA-256 (hex) of the session id (the cookie's
/// value is never stored) and the token it signed in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: String,
    /// The token's name ([`berth_core::access::ADMIN_TOKEN_NAME`] for the
    /// server's `--token`).
    pub token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One minute of one deployment's traffic as one server's edge counted
/// it: the rollup behind the console's charts (kept about an hour, then
/// pruned). Every server writes its own rows ([`MetricMinute::member`]);
/// [`Store::list_metric_minutes`] gives them summed ([`rollup`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricMinute {
    pub deployment_id: String,
    pub project_name: String,
    pub environment_name: String,
    pub service_name: String,
    /// The cluster member (server instance id) whose edge counted it;
    /// empty in what [`Store::list_metric_minutes`] returns (the members
    /// summed) and in rows written before members were kept.
    pub member: String,
    /// The start of the minute (whole seconds, seconds at zero).
    pub minute: DateTime<Utc>,
    pub requests: u64,
    /// Responses with a 5xx status, the edge's own 502/503/504 included.
    pub errors: u64,
    /// The minute's latency histogram, sparse ([`rollup::sparse`]):
    /// `(upper bound in seconds, cumulative count)`; what lets members'
    /// rows be combined into one p95. Empty in rows written before it was
    /// kept.
    pub latency: Vec<(f64, u64)>,
    /// p95 latency of the minute's requests in milliseconds (`None`
    /// without requests); of the summed histogram in what
    /// [`Store::list_metric_minutes`] returns.
    pub p95_ms: Option<f64>,
}

/// A notification endpoint's URL and signing secret in clear, for sending
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = berth_core::notify::parse_url(&self.url)
            .map(|u| u.shown)
            .unwrap_or_else(|_| "(invalid)".into());
        f.debug_struct("NotifyTarget")
            .field("url", &shown)
            .field("secret", &"***")
            .finish()
    }
}

/// The activation change inside [`Store::save_deployments`].
#[derive(Clone, Debug)]
pub struct Activate {
    pub slot: Slot,
    /// The deployment that serves from now on; `None` empties the slot.
    pub deployment_id: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_project(&self, p: NewProject) -> Result<Project>;
    async fn list_projects(&self) -> Result<Vec<Project>>;
    async fn get_project(&self, name: &str) -> Result<Project>;
    async fn update_project(&self, name: &str, patch: ProjectPatch) -> Result<Project>;
    /// The webhook secret in clear, for signature checks only.
    async fn webhook_secret(&self, project: &str) -> Result<Option<String>>;
    /// The repository URL with its credentials and the deploy key, in
    /// clear, for fetching only.
    async fn repo_access(&self, project: &str) -> Result<RepoAccess>;

    async fn list_environments(&self, project: &str) -> Result<Vec<Environment>>;
    async fn get_environment(&self, project: &str, env: &str) -> Result<Environment>;
    async fn create_environment(&self, env: Environment) -> Result<Environment>;
    async fn delete_environment(&self, project: &str, env: &str) -> Result<()>;

    async fn set_variable(
        &self,
        project: &str,
        env: &str,
        key: &str,
        value: &str,
        flags: VarFlags,
        at: DateTime<Utc>,
    ) -> Result<Variable>;
    /// Whether the variable existed.
    async fn unset_variable(&self, project: &str, env: &str, key: &str) -> Result<bool>;
    /// Variables as shown: secret values are `None`.
    async fn list_variables(&self, project: &str, env: &str) -> Result<Vec<Variable>>;
    /// Variables with clear values, for the runtime and builds.
    async fn resolve_variables(&self, project: &str, env: &str) -> Result<Vec<ResolvedVar>>;

    async fn insert_deployment(&self, d: &Deployment) -> Result<()>;
    /// `is_active` is filled from the slot.
    async fn get_deployment(&self, id: &str) -> Result<Deployment>;
    async fn list_deployments(&self, q: &DeploymentQuery) -> Result<Vec<Deployment>>;
    /// Write deployments and optionally flip a slot's active pointer, in one
    /// transaction. Compare-and-set: each record is written only when the
    /// stored version is still the `version` it was read with; otherwise
    /// nothing of the batch is written and the answer is
    /// [`StoreError::Stale`]. On success each `version` is bumped to the
    /// stored one, so the caller's copies stay current.
    async fn save_deployments(
        &self,
        ds: &mut [&mut Deployment],
        activate: Option<Activate>,
    ) -> Result<()>;
    async fn active_deployment(&self, slot: &Slot) -> Result<Option<Deployment>>;

    async fn append_logs(&self, lines: &[NewLogLine]) -> Result<()>;
    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>>;

    async fn put_external_route(&self, r: &ExternalRoute) -> Result<()>;
    async fn list_external_routes(&self) -> Result<Vec<ExternalRoute>>;
    /// Whether the route existed.
    async fn remove_external_route(&self, hostname: &str) -> Result<bool>;

    /// Remember a webhook delivery; `false` when it was seen before.
    async fn record_delivery(
        &self,
        project: &str,
        delivery_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// The build output manifest of an image.
    async fn put_manifest(
        &self,
        image: &str,
        entries: &[ManifestEntry],
        at: DateTime<Utc>,
    ) -> Result<()>;
    async fn get_manifest(&self, image: &str) -> Result<Option<Vec<ManifestEntry>>>;

    /// Log retention: drop lines older than `older_than`, and each
    /// project's oldest lines beyond `max_lines_per_project`. Returns how
    /// many lines went.
    async fn prune_logs(
        &self,
        older_than: DateTime<Utc>,
        max_lines_per_project: u64,
    ) -> Result<u64>;

    /// Custom domains.
    async fn add_domain(&self, d: &Domain) -> Result<Domain>;
    /// A project's domains, or every domain.
    async fn list_domains(&self, project: Option<&str>) -> Result<Vec<Domain>>;
    async fn set_domain_verified(&self, hostname: &str, at: DateTime<Utc>) -> Result<()>;
    /// Whether the domain existed.
    async fn remove_domain(&self, hostname: &str) -> Result<bool>;

    /// TLS certificates (private keys sealed at rest).
    async fn put_certificate(&self, c: &CertRecord) -> Result<()>;
    async fn get_certificate(&self, hostname: &str) -> Result<Option<CertRecord>>;
    /// Every certificate record, keys opened, by hostname.
    async fn list_certificates(&self) -> Result<Vec<CertRecord>>;
    /// Whether a record existed.
    async fn remove_certificate(&self, hostname: &str) -> Result<bool>;
    /// The ACME account credentials (JSON, sealed at rest) for a directory URL.
    async fn acme_account(&self, directory: &str) -> Result<Option<String>>;
    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<()>;

    /// Every directory URL with an ACME account (for copying a store).
    async fn list_acme_directories(&self) -> Result<Vec<String>>;
    /// Every image with a manifest (for copying a store).
    async fn list_manifest_images(&self) -> Result<Vec<String>>;
    /// Every webhook delivery seen: (project, delivery id, received at).
    async fn list_deliveries(&self) -> Result<Vec<(String, String, DateTime<Utc>)>>;

    /// Whether several servers may share this store (a leader lease).
    fn clustered(&self) -> bool {
        false
    }
    /// Cluster: record server `member` (at `api_url`) as alive, and take
    /// the leader lease when it is free or expired (a new epoch) or renew
    /// it for `ttl` when `member` holds it. See [`cluster`].
    async fn heartbeat(
        &self,
        _member: &str,
        _api_url: &str,
        _ttl: std::time::Duration,
    ) -> Result<cluster::Lease> {
        Err(StoreError::Invalid(
            "this store has no cluster: use a PostgreSQL database".into(),
        ))
    }
    /// Give the lease up (a clean stop), when `member` holds it.
    async fn release_lease(&self, _member: &str) -> Result<()> {
        Ok(())
    }
    /// Every server seen, the leader first.
    async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        Ok(Vec::new())
    }
    /// The identity every server of the cluster uses on the container
    /// engine: the first claimant's `candidate`, kept. `None` when the
    /// store has no cluster.
    async fn engine_identity(&self, _candidate: &str) -> Result<Option<String>> {
        Ok(None)
    }

    /// Records a run (its environment must exist). A second run of one job
    /// for one firing (project, environment, job, `scheduled_for`) is
    /// refused with [`StoreError::Conflict`]: a firing runs at most once.
    async fn insert_run(&self, r: &Run) -> Result<()>;
    /// Replaces a recorded run ([`StoreError::NotFound`] when absent).
    async fn save_run(&self, r: &Run) -> Result<()>;
    async fn get_run(&self, id: &str) -> Result<Run>;
    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>>;

    // --- tokens, audit log, console sessions ---
    /// Records a new API token; [`StoreError::Conflict`] when its name is
    /// taken (by a revoked token too) or its hash is not new.
    async fn create_token(&self, t: &TokenRecord) -> Result<()>;
    /// Every token, by name (revoked ones too).
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Every token with its hash (for copying a store).
    async fn token_records(&self) -> Result<Vec<TokenRecord>>;
    /// The token whose SHA-256 is `hash`, revoked and expired ones too (so
    /// a refusal can say which).
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>>;
    async fn get_token(&self, name: &str) -> Result<TokenInfo>;
    /// Marks a token revoked from `at` on (a second revoke keeps the first
    /// time); [`StoreError::NotFound`] when there is no such token.
    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<TokenInfo>;
    /// Records that a token was used at `at`.
    async fn touch_token(&self, name: &str, at: DateTime<Utc>) -> Result<()>;
    /// Appends one entry to the audit log.
    async fn append_audit(&self, e: &AuditEntry) -> Result<()>;
    /// The audit log, newest first.
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Records a console session (and forgets sessions expired by then).
    async fn put_session(&self, s: &SessionRecord) -> Result<()>;
    /// The session whose id hashes to `id_hash`, unless it expired by `now`.
    async fn get_session(&self, id_hash: &str, now: DateTime<Utc>)
        -> Result<Option<SessionRecord>>;
    /// Signs a session out (nothing when it is unknown).
    async fn remove_session(&self, id_hash: &str) -> Result<()>;

    // --- volume backups ---
    /// Records a backup (its project must exist; [`StoreError::Conflict`]
    /// when the id is taken).
    async fn insert_backup(&self, b: &Backup) -> Result<()>;
    /// Replaces a recorded backup ([`StoreError::NotFound`] when absent).
    async fn save_backup(&self, b: &Backup) -> Result<()>;
    async fn get_backup(&self, id: &str) -> Result<Backup>;
    /// The backups of `project` (of one environment, of one volume),
    /// newest first.
    async fn list_backups(
        &self,
        project: &str,
        environment: Option<&str>,
        volume: Option<&str>,
    ) -> Result<Vec<Backup>>;
    /// Forgets a backup (nothing when it is unknown).
    async fn delete_backup(&self, id: &str) -> Result<()>;

    // --- notifications ---
    /// Records an endpoint; its URL and secret are sealed.
    async fn add_notification(&self, n: &Notification, target: &NotifyTarget) -> Result<()>;
    /// A project's endpoints, or every one, oldest first.
    async fn list_notifications(&self, project: Option<&str>) -> Result<Vec<Notification>>;
    /// Removes an endpoint of `project` and its deliveries; whether it existed.
    async fn remove_notification(&self, project: &str, id: &str) -> Result<bool>;
    /// The URL and secret in clear, for sending only.
    async fn notification_target(&self, id: &str) -> Result<NotifyTarget>;
    /// Queues a delivery; `false` (nothing written) when this endpoint
    /// already has one for this deployment and event.
    async fn queue_delivery(&self, d: &Delivery) -> Result<bool>;
    /// Pending deliveries due at `now`, the earliest first.
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>>;
    /// Replaces a queued delivery ([`StoreError::NotFound`] when absent,
    /// e.g. its endpoint was removed).
    async fn save_delivery(&self, d: &Delivery) -> Result<()>;
    /// An endpoint's deliveries, newest first.
    async fn notification_deliveries(
        &self,
        notification: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>>;

    // --- maintenance ---
    /// Puts a service (with `service_name` `None`: every service) of an
    /// environment in maintenance; the environment must exist
    /// ([`StoreError::NotFound`]). Again for the same one: the first
    /// `since` is kept.
    async fn set_maintenance(&self, m: &Maintenance) -> Result<()>;
    /// Takes `service` out of maintenance (with `None`: the environment and
    /// every service of it); how many entries were removed. The
    /// environment must exist ([`StoreError::NotFound`]).
    async fn clear_maintenance(
        &self,
        project: &str,
        environment: &str,
        service: Option<&str>,
    ) -> Result<u64>;
    /// What is in maintenance, of one project or of all, by project,
    /// environment and service (the environment-wide entry first).
    async fn list_maintenance(&self, project: Option<&str>) -> Result<Vec<Maintenance>>;

    // --- copy-store ---
    /// Every console session not expired by `now`, oldest first (for
    /// copying a store).
    async fn session_records(&self, now: DateTime<Utc>) -> Result<Vec<SessionRecord>>;

    // --- certificates: DNS-01 keys, followers ---
    /// A value that changes whenever a certificate record is written or
    /// removed (their count and latest update): a follower reads it often
    /// and reloads the certificates only when it moved.
    async fn certificates_stamp(&self) -> Result<String>;
    /// The TSIG key (`name:algorithm:secret`, sealed at rest) of a DNS
    /// server (`host:port`) taking RFC 2136 updates.
    async fn dns_update_key(&self, server: &str) -> Result<Option<String>>;
    async fn put_dns_update_key(&self, server: &str, key: &str) -> Result<()>;
    /// Every DNS server with a key (for copying a store).
    async fn list_dns_update_servers(&self) -> Result<Vec<String>>;

    // --- charts: per-minute traffic rollup ---
    /// Writes minutes of traffic; a row for a (deployment, member, minute)
    /// already stored replaces it (each server rewrites its current minute
    /// as it fills). A server writes only rows of its own member id, so
    /// these writes need no fence.
    async fn put_metric_minutes(&self, rows: &[MetricMinute]) -> Result<()>;
    /// A service's minutes from `since` on (inclusive), every deployment
    /// of it, oldest minute first, then by deployment id: one row per
    /// deployment and minute, the members' rows summed
    /// ([`rollup::merge_members`]: requests and errors added, p95 of the
    /// summed histogram).
    async fn list_metric_minutes(
        &self,
        project: &str,
        environment: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<MetricMinute>>;
    /// Removes the minutes before `before`; how many were removed.
    async fn prune_metric_minutes(&self, before: DateTime<Utc>) -> Result<u64>;

    // --- pushed repositories, cancel requests (cluster) ---
    /// The version of `project`'s pushed repository (0: never pushed): a
    /// server compares it with the copy it holds before serving a fetch or
    /// cloning.
    async fn pushed_repo_version(&self, project: &str) -> Result<u64>;
    /// `project`'s pushed repository (a git bundle of every ref) and its
    /// version; `None` when never pushed.
    async fn pushed_repo(&self, project: &str) -> Result<Option<(u64, Vec<u8>)>>;
    /// Replaces `project`'s bundle if its version is still `expected` (0:
    /// none yet); the new version, or `None` (nothing written) when
    /// another push was saved first. The project must exist
    /// ([`StoreError::NotFound`]).
    async fn put_pushed_repo(
        &self,
        project: &str,
        expected: u64,
        bundle: &[u8],
    ) -> Result<Option<u64>>;
    /// Every project with a pushed repository (for copying a store).
    async fn pushed_repo_projects(&self) -> Result<Vec<String>>;
    /// Records that cancelling deployment `id` was asked (again: kept
    /// once); [`StoreError::NotFound`] when there is no such deployment.
    async fn request_cancel(&self, id: &str) -> Result<()>;
    /// The deployments whose cancel was asked and not yet carried out,
    /// oldest request first.
    async fn cancel_requests(&self) -> Result<Vec<String>>;
    /// Forgets the cancel request of `id` (nothing when there is none).
    async fn clear_cancel_request(&self, id: &str) -> Result<()>;
}

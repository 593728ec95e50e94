//! The PostgreSQL backend: a connection pool (deadpool-postgres over
//! tokio-postgres), embedded migrations applied under an advisory lock,
//! secrets sealed by [`crate::seal`] exactly as on SQLite.
//!
//! The log cursor: `logs.seq` is not a sequence (sequences hand out numbers
//! in call order, not commit order, so a follower could read line 12 before
//! line 11 commits and skip it forever). Each append bumps the one row of
//! `log_cursor` inside its transaction; that row stays locked until commit,
//! so the next appender gets its numbers only after this one committed.

use crate::seal::{Sealer, Secret};
use crate::sqlite::{env_kind, env_kind_str};
use crate::RunQuery;
use crate::{
    Activate, CertRecord, Cipher, DeploymentQuery, LogQuery, NewLogLine, NewProject, ProjectPatch,
    RepoAccess, ResolvedVar, Result, Slot, Store, StoreError, VarFlags,
};
use crate::{AuditQuery, SessionRecord, TokenRecord};
use crate::{MetricMinute, NotifyTarget};
use async_trait::async_trait;
use berth_core::access::{AuditEntry, Role, TokenInfo};
use berth_core::model::{
    split_url_credentials, with_url_credentials, CertState, CertificateStatus, ClusterMember,
    Deployment, Domain, DomainVerification, Environment, ExternalRoute, LogLine, LogStream,
    Maintenance, ManifestEntry, Project, StepName, Variable, PRODUCTION,
};
use berth_core::names;
use berth_core::notify::{Delivery, Notification};
use berth_core::ops::Run;
use berth_core::volumes::Backup;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Migrations in order; `berth_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_cluster.sql"),
    include_str!("../migrations/postgres/0003_runs.sql"),
    include_str!("../migrations/postgres/0004_access.sql"),
    include_str!("../migrations/postgres/0005_backups.sql"),
    include_str!("../migrations/postgres/0006_notifications.sql"),
    include_str!("../migrations/postgres/0007_maintenance.sql"),
    include_str!("../migrations/postgres/0008_dns_update_keys.sql"),
    include_str!("../migrations/postgres/0009_metric_minutes.sql"),
    include_str!("../migrations/postgres/0010_pushed_repos.sql"),
    include_str!("../migrations/postgres/0011_metric_members.sql"),
    include_str!("../migrations/postgres/0012_deployments_read.sql"),
];

/// The advisory lock key migrations run under ("berth" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6572_7468;

/// Connections per server.
const POOL_SIZE: usize = 16;

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    sealer: Sealer,
    /// `host:port` (or the socket dir), for messages; never the password.
    target: String,
    /// [`STALE_SEEN`] when this store last cleared its connections' caches.
    stale_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.target)
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if is_stale_plan(&e) {
        return StoreError::Backend(
            "postgresql: a table changed under a cached statement (cached plan must not change result type); the statement cache was cleared, retry".into(),
        );
    }
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("postgresql: {}", db.message())),
        None if lost_connection(&e) => {
            StoreError::Unavailable(format!("the database is unreachable (postgresql: {e})"))
        }
        None => StoreError::Backend(format!("postgresql: {e}")),
    }
}

/// Whether an error without a server answer means the connection is gone.
fn lost_connection(e: &tokio_postgres::Error) -> bool {
    use std::error::Error;
    e.is_closed()
        || e.source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_err(e)
    }
}

/// Inside [`crate::cluster::fenced`]: refuse the transaction unless the
/// lease still has this holder and epoch; the row stays share-locked until
/// commit, so the lease cannot move while the write lands.
async fn check_fence(tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    let Some(f) = crate::cluster::current_fence() else {
        return Ok(());
    };
    let held = tx
        .query_opt_cached(
            "SELECT 1 FROM cluster_lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR SHARE",
            &[&f.member, &(f.epoch as i64)],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced { epoch: f.epoch }),
    }
}

/// Begin a write. Inside [`crate::cluster::fenced`] its first statement
/// checks the lease ([`check_fence`]), so a deposed leader's write of any
/// kind (deployments, log lines, certificates, runs, backups, deliveries)
/// lands whole or not at all.
async fn write_tx(c: &mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = c.transaction().await?;
    check_fence(&tx).await?;
    Ok(tx)
}

/// Statements through the connection's statement cache (deadpool-postgres'
/// `prepare_cached`): each SQL text is parsed and described once per pooled
/// connection, then every use is one round trip (Bind/Execute) instead of
/// two (Parse/Describe, then Bind/Execute). So no SQL text may vary by value:
/// values are always parameters (`LIMIT` too), and the texts built from
/// optional filters form a small fixed set, which bounds each cache.
///
/// A cached statement goes stale when a table it reads changes its result
/// type (another server's migration in a rolling upgrade, any `ALTER TABLE`
/// of a selected column): the server answers [`is_stale_plan`]. Then the
/// connection's cache is cleared (every statement of it may be stale) and,
/// outside a transaction, the statement is prepared again and run once more.
/// Inside a transaction the server has already aborted it, so one statement
/// cannot be redone alone: the error is returned (the cache cleared, so the
/// caller's next attempt works) and the writer's transaction rolls back
/// whole, as on any other error. Either way the next checkout clears every
/// other connection's cache too ([`STALE_SEEN`]).
#[async_trait]
trait Cached: GenericClient {
    /// This connection's statement cache.
    fn cache(&self) -> &deadpool_postgres::StatementCache;

    /// Whether statements run inside a transaction.
    fn in_transaction(&self) -> bool;

    /// After `e`: whether to prepare the statement again and retry it (a
    /// stale plan outside a transaction), clearing the cache on a stale plan.
    fn retry_after(&self, e: &tokio_postgres::Error) -> bool {
        if !is_stale_plan(e) {
            return false;
        }
        self.cache().clear();
        STALE_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            in_transaction = self.in_transaction(),
            "postgresql: a table changed under a cached statement; statement cache cleared"
        );
        !self.in_transaction()
    }

    async fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        match self.query(&st, params).await {
            Err(e) if self.retry_after(&e) => {
                let st = self.prepare_cached(sql).await?;
                self.query(&st, params).await
            }
            r => r,
        }
    }

    async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        match self.query_one(&st, params).await {
            Err(e) if self.retry_after(&e) => {
                let st = self.prepare_cached(sql).await?;
                self.query_one(&st, params).await
            }
            r => r,
        }
    }

    async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        match self.query_opt(&st, params).await {
            Err(e) if self.retry_after(&e) => {
                let st = self.prepare_cached(sql).await?;
                self.query_opt(&st, params).await
            }
            r => r,
        }
    }

    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        match self.execute(&st, params).await {
            Err(e) if self.retry_after(&e) => {
                let st = self.prepare_cached(sql).await?;
                self.execute(&st, params).await
            }
            r => r,
        }
    }
}

impl Cached for deadpool_postgres::Client {
    fn cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }

    fn in_transaction(&self) -> bool {
        false
    }
}

impl Cached for deadpool_postgres::Transaction<'_> {
    fn cache(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }

    fn in_transaction(&self) -> bool {
        true
    }
}

/// Counts the stale cached statements met in this process: the change that
/// made one connection's statements stale made the others' stale too, so a
/// store's next checkout ([`PgStore::client`]) after the count moved clears
/// every connection's cache, and at most the transactions already running
/// meet the error (not one per connection). Process-wide, so each store
/// compares it with its own copy (`PgStore::stale_seen`).
static STALE_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The server's answer to a cached statement whose result columns changed
/// type since it was prepared (SQLSTATE 0A000 "cached plan must not change
/// result type").
fn is_stale_plan(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
        && e.as_db_error().is_some_and(|db| {
            db.message()
                .starts_with("cached plan must not change result type")
        })
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Where a connection string points, for messages (no credentials).
pub fn describe_target(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        #[cfg(unix)]
        Some(Host::Unix(p)) => format!("{} (port {port})", p.display()),
        None => format!("localhost:{port}"),
    };
    match cfg.get_dbname() {
        Some(db) => format!("{host}/{db}"),
        None => host,
    }
}

impl PgStore {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or
    /// `postgres:///db?host=/socket/dir`), apply migrations, and check that
    /// `cipher` opens this database's secrets.
    pub async fn connect(url: &str, cipher: Cipher) -> Result<Self> {
        let cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("invalid PostgreSQL URL: {e}")))?;
        let target = describe_target(&cfg);
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("postgresql pool: {e}")))?;
        let store = PgStore {
            pool,
            sealer: Sealer::new(cipher),
            target,
            stale_seen: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                STALE_SEEN.load(std::sync::atomic::Ordering::Relaxed),
            )),
        };
        let mut c = store.client().await?;
        migrate(&mut c).await?;
        store.check_key(&c).await?;
        Ok(store)
    }

    /// Where the store points (host:port/db), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = STALE_SEEN.load(Relaxed);
        if self.stale_seen.swap(seen, Relaxed) != seen {
            self.pool.manager().statement_caches.clear();
        }
        self.pool.get().await.map_err(|e| {
            let why = match &e {
                deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => e.to_string(),
                },
                e => e.to_string(),
            };
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {why}",
                self.target
            ))
        })
    }

    async fn check_key(&self, c: &deadpool_postgres::Object) -> Result<()> {
        let fresh = self.sealer.seal(Secret::KeyCheck, "berth");
        c.execute_cached(
            "INSERT INTO key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            &[&fresh],
        )
        .await?;
        let sealed: String = c
            .query_one_cached("SELECT sealed FROM key_check WHERE id = 1", &[])
            .await?
            .get(0);
        self.sealer.open(Secret::KeyCheck, &sealed).map_err(|_| {
            StoreError::Invalid(format!(
                "the master key does not open the secrets of the store at {}; start with the key the other servers use",
                self.target
            ))
        })?;
        Ok(())
    }

    fn open_cert(&self, (mut rec, sealed): (CertRecord, Option<String>)) -> Result<CertRecord> {
        rec.key_pem = self
            .sealer
            .open_opt(Secret::TlsKey(&rec.hostname), sealed.as_deref())?;
        Ok(rec)
    }
}

async fn migrate(c: &mut deadpool_postgres::Object) -> Result<()> {
    let tx = c.transaction().await?;
    tx.execute_cached("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS berth_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let done: i32 = tx
        .query_one_cached(
            "SELECT COALESCE(MAX(version), 0) FROM berth_migrations",
            &[],
        )
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {} failed: {}", i + 1, pg_err(e)))
        })?;
        tx.execute_cached(
            "INSERT INTO berth_migrations (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

const PROJECT_COLS: &str = "name, repo, default_branch, retain_images, webhook_secret, created_at, repo_credentials, deploy_key";

fn project_row(r: &Row) -> Project {
    Project {
        name: r.get(0),
        repo: r.get(1),
        default_branch: r.get(2),
        retain_images: r.get::<_, i32>(3).max(0) as u32,
        has_webhook_secret: r.get::<_, Option<String>>(4).is_some(),
        created_at: r.get(5),
        has_repo_credentials: r.get::<_, Option<String>>(6).is_some(),
        has_deploy_key: r.get::<_, Option<String>>(7).is_some(),
    }
}

async fn get_project<C: Cached>(c: &C, name: &str) -> Result<Project> {
    c.query_opt_cached(
        &format!("SELECT {PROJECT_COLS} FROM projects WHERE name = $1"),
        &[&name],
    )
    .await?
    .map(|r| project_row(&r))
    .ok_or_else(|| StoreError::not_found("project", name))
}

fn env_row(r: &Row) -> Environment {
    Environment {
        project_name: r.get(0),
        name: r.get(1),
        branch: r.get(2),
        kind: env_kind(r.get(3)),
        created_at: r.get(4),
    }
}

async fn get_env<C: Cached>(c: &C, project: &str, env: &str) -> Result<Environment> {
    get_project(c, project).await?;
    c.query_opt_cached(
        "SELECT project, name, branch, kind, created_at FROM environments WHERE project = $1 AND name = $2",
        &[&project, &env],
    )
    .await?
    .map(|r| env_row(&r))
    .ok_or_else(|| StoreError::not_found("environment", format!("{project}/{env}")))
}

const DEPLOYMENT_SELECT: &str = "SELECT d.data, s.active, d.version FROM deployments d \
     LEFT JOIN slots s ON s.project = d.project AND s.environment = d.environment AND s.service = d.service";

fn deployment_row(r: &Row) -> Result<Deployment> {
    let data: String = r.get(0);
    let active: Option<String> = r.get(1);
    let mut d: Deployment = serde_json::from_str(&data)
        .map_err(|e| StoreError::Backend(format!("deployment record: {e}")))?;
    d.is_active = active.as_deref() == Some(d.id.as_str());
    d.version = r.get::<_, i64>(2) as u64;
    Ok(d)
}

const CERT_COLUMNS: &str =
    "hostname, state, chain_pem, key_sealed, not_after, error, attempts, next_attempt_at, updated_at";

fn cert_row(r: &Row) -> (CertRecord, Option<String>) {
    let state: String = r.get(1);
    (
        CertRecord {
            hostname: r.get(0),
            state: CertState::parse(&state).unwrap_or(CertState::Failed),
            chain_pem: r.get(2),
            key_pem: None,
            not_after: r.get(4),
            error: r.get(5),
            attempts: r.get::<_, i32>(6).max(0) as u32,
            next_attempt_at: r.get(7),
            updated_at: r.get(8),
        },
        r.get(3),
    )
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

const TOKEN_COLS: &str = "name, role, project, created_at, expires_at, last_used_at, revoked_at";

fn token_row(r: &Row) -> Result<TokenInfo> {
    let role: String = r.get(1);
    Ok(TokenInfo {
        name: r.get(0),
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("unknown role {role:?} in api_tokens")))?,
        project: r.get(2),
        created_at: r.get(3),
        expires_at: r.get(4),
        last_used_at: r.get(5),
        revoked_at: r.get(6),
    })
}

#[async_trait]
impl Store for PgStore {
    async fn create_project(&self, p: NewProject) -> Result<Project> {
        names::project_name(&p.name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if p.repo.trim().is_empty() {
            return Err(StoreError::Invalid("repo must not be empty".into()));
        }
        let sealed = p
            .webhook_secret
            .as_deref()
            .map(|s| self.sealer.seal(Secret::Webhook(&p.name), s));
        let (repo, cred) = split_url_credentials(p.repo.trim());
        let cred = cred.map(|c| self.sealer.seal(Secret::RepoCredentials(&p.name), &c));
        let key = p
            .deploy_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|k| self.sealer.seal(Secret::DeployKey(&p.name), k));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let retain = p.retain_images as i32;
        let n = tx
            .execute_cached(
                &format!(
                    "INSERT INTO projects ({PROJECT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING"
                ),
                &[&p.name, &repo, &p.default_branch, &retain, &sealed, &p.created_at, &cred, &key],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict {
                what: "project",
                name: p.name,
            });
        }
        tx.execute_cached(
            "INSERT INTO environments (project, name, branch, kind, created_at) VALUES ($1, $2, $3, 'production', $4)",
            &[&p.name, &PRODUCTION, &p.default_branch, &p.created_at],
        )
        .await?;
        let project = get_project(&tx, &p.name).await?;
        tx.commit().await?;
        Ok(project)
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                &format!("SELECT {PROJECT_COLS} FROM projects ORDER BY name"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(project_row).collect())
    }

    async fn get_project(&self, name: &str) -> Result<Project> {
        let c = self.client().await?;
        get_project(&c, name).await
    }

    async fn update_project(&self, name: &str, patch: ProjectPatch) -> Result<Project> {
        let sealed = patch
            .webhook_secret
            .as_deref()
            .map(|s| self.sealer.seal(Secret::Webhook(name), s));
        let repo = patch.repo.as_deref().map(|r| {
            let (bare, cred) = split_url_credentials(r.trim());
            (
                bare,
                cred.map(|c| self.sealer.seal(Secret::RepoCredentials(name), &c)),
            )
        });
        let key = patch
            .deploy_key
            .as_deref()
            .map(|k| (!k.trim().is_empty()).then(|| self.sealer.seal(Secret::DeployKey(name), k)));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.query_opt_cached(
            "SELECT 1 FROM projects WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("project", name))?;
        if let Some(n) = patch.retain_images {
            tx.execute_cached(
                "UPDATE projects SET retain_images = $2 WHERE name = $1",
                &[&name, &(n as i32)],
            )
            .await?;
        }
        if let Some(s) = sealed {
            tx.execute_cached(
                "UPDATE projects SET webhook_secret = $2 WHERE name = $1",
                &[&name, &s],
            )
            .await?;
        }
        if let Some(b) = patch.default_branch {
            tx.execute_cached(
                "UPDATE projects SET default_branch = $2 WHERE name = $1",
                &[&name, &b],
            )
            .await?;
        }
        if let Some((r, cred)) = repo {
            tx.execute_cached(
                "UPDATE projects SET repo = $2, repo_credentials = $3 WHERE name = $1",
                &[&name, &r, &cred],
            )
            .await?;
        }
        if let Some(k) = key {
            tx.execute_cached(
                "UPDATE projects SET deploy_key = $2 WHERE name = $1",
                &[&name, &k],
            )
            .await?;
        }
        let p = get_project(&tx, name).await?;
        tx.commit().await?;
        Ok(p)
    }

    async fn webhook_secret(&self, project: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                "SELECT webhook_secret FROM projects WHERE name = $1",
                &[&project],
            )
            .await?
            .ok_or_else(|| StoreError::not_found("project", project))?;
        let sealed: Option<String> = row.get(0);
        self.sealer
            .open_opt(Secret::Webhook(project), sealed.as_deref())
    }

    async fn repo_access(&self, project: &str) -> Result<RepoAccess> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                "SELECT repo, repo_credentials, deploy_key FROM projects WHERE name = $1",
                &[&project],
            )
            .await?
            .ok_or_else(|| StoreError::not_found("project", project))?;
        let repo: String = row.get(0);
        let cred: Option<String> = row.get(1);
        let key: Option<String> = row.get(2);
        let cred = self
            .sealer
            .open_opt(Secret::RepoCredentials(project), cred.as_deref())?;
        Ok(RepoAccess {
            url: with_url_credentials(&repo, cred.as_deref()),
            deploy_key: self
                .sealer
                .open_opt(Secret::DeployKey(project), key.as_deref())?,
        })
    }

    async fn list_environments(&self, project: &str) -> Result<Vec<Environment>> {
        let c = self.client().await?;
        get_project(&c, project).await?;
        let rows = c
            .query_cached(
                "SELECT project, name, branch, kind, created_at FROM environments WHERE project = $1 \
                 ORDER BY name <> 'production', name",
                &[&project],
            )
            .await?;
        Ok(rows.iter().map(env_row).collect())
    }

    async fn get_environment(&self, project: &str, env: &str) -> Result<Environment> {
        let c = self.client().await?;
        get_env(&c, project, env).await
    }

    async fn create_environment(&self, e: Environment) -> Result<Environment> {
        names::environment_name(&e.name).map_err(|err| StoreError::Invalid(err.to_string()))?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        get_project(&tx, &e.project_name).await?;
        let n = tx
            .execute_cached(
                "INSERT INTO environments (project, name, branch, kind, created_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (project, name) DO NOTHING",
                &[&e.project_name, &e.name, &e.branch, &env_kind_str(e.kind), &e.created_at],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict {
                what: "environment",
                name: format!("{}/{}", e.project_name, e.name),
            });
        }
        let env = get_env(&tx, &e.project_name, &e.name).await?;
        tx.commit().await?;
        Ok(env)
    }

    async fn delete_environment(&self, project: &str, env: &str) -> Result<()> {
        if env == PRODUCTION {
            return Err(StoreError::Invalid(
                "the production environment cannot be deleted".into(),
            ));
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        get_env(&tx, project, env).await?;
        tx.execute_cached(
            "DELETE FROM slots WHERE project = $1 AND environment = $2",
            &[&project, &env],
        )
        .await?;
        tx.execute_cached(
            "DELETE FROM environments WHERE project = $1 AND name = $2",
            &[&project, &env],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_variable(
        &self,
        project: &str,
        env: &str,
        key: &str,
        value: &str,
        flags: VarFlags,
        at: DateTime<Utc>,
    ) -> Result<Variable> {
        let VarFlags { secret, build } = flags;
        names::variable_name(key).map_err(|e| StoreError::Invalid(e.to_string()))?;
        names::variable_value(key, value).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let stored = if secret {
            self.sealer.seal(
                Secret::Variable {
                    project,
                    environment: env,
                    key,
                },
                value,
            )
        } else {
            value.to_string()
        };
        let c = self.client().await?;
        get_env(&c, project, env).await?;
        c.execute_cached(
            "INSERT INTO variables (project, environment, key, value, secret, build, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (project, environment, key) DO UPDATE SET value = excluded.value, secret = excluded.secret, build = excluded.build, updated_at = excluded.updated_at",
            &[&project, &env, &key, &stored, &secret, &build, &at],
        )
        .await?;
        Ok(Variable {
            key: key.to_string(),
            value: (!secret).then(|| value.to_string()),
            secret,
            build,
            updated_at: at,
        })
    }

    async fn unset_variable(&self, project: &str, env: &str, key: &str) -> Result<bool> {
        let c = self.client().await?;
        get_env(&c, project, env).await?;
        let n = c
            .execute_cached(
                "DELETE FROM variables WHERE project = $1 AND environment = $2 AND key = $3",
                &[&project, &env, &key],
            )
            .await?;
        Ok(n > 0)
    }

    async fn list_variables(&self, project: &str, env: &str) -> Result<Vec<Variable>> {
        let c = self.client().await?;
        get_env(&c, project, env).await?;
        let rows = c
            .query_cached(
                "SELECT key, value, secret, updated_at, build FROM variables WHERE project = $1 AND environment = $2 ORDER BY key",
                &[&project, &env],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let secret: bool = r.get(2);
                Variable {
                    key: r.get(0),
                    value: if secret { None } else { Some(r.get(1)) },
                    secret,
                    build: r.get(4),
                    updated_at: r.get(3),
                }
            })
            .collect())
    }

    async fn resolve_variables(&self, project: &str, env: &str) -> Result<Vec<ResolvedVar>> {
        let c = self.client().await?;
        get_env(&c, project, env).await?;
        let rows = c
            .query_cached(
                "SELECT key, value, secret, build FROM variables WHERE project = $1 AND environment = $2 ORDER BY key",
                &[&project, &env],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let value: String = r.get(1);
                let secret: bool = r.get(2);
                let value = if secret {
                    self.sealer.open(
                        Secret::Variable {
                            project,
                            environment: env,
                            key: &key,
                        },
                        &value,
                    )?
                } else {
                    value
                };
                Ok(ResolvedVar {
                    key,
                    value,
                    secret,
                    build: r.get(3),
                })
            })
            .collect()
    }

    async fn insert_deployment(&self, d: &Deployment) -> Result<()> {
        let data = crate::deployment_json(d)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        get_env(&tx, &d.project_name, &d.environment_name).await?;
        tx.execute_cached(
            "INSERT INTO deployments (id, project, environment, service, status, stage, created_at, data, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &d.id,
                &d.project_name,
                &d.environment_name,
                &d.service_name,
                &d.status.as_str(),
                &d.promotion_stage.as_str(),
                &d.created_at,
                &data,
                &(d.version as i64),
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "deployment",
                    name: d.id.clone(),
                }
            } else {
                pg_err(e)
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_deployment(&self, id: &str) -> Result<Deployment> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(&format!("{DEPLOYMENT_SELECT} WHERE d.id = $1"), &[&id])
            .await?
            .ok_or_else(|| StoreError::not_found("deployment", id))?;
        deployment_row(&row)
    }

    async fn list_deployments(&self, q: &DeploymentQuery) -> Result<Vec<Deployment>> {
        let mut sql = format!("{DEPLOYMENT_SELECT} WHERE TRUE");
        let mut params: Params = Vec::new();
        for (col, v) in [
            ("d.project", &q.project),
            ("d.environment", &q.environment),
            ("d.service", &q.service),
        ] {
            if let Some(v) = v {
                params.push(Box::new(v.clone()));
                sql.push_str(&format!(" AND {col} = ${}", params.len()));
            }
        }
        if q.unfinished {
            sql.push_str(" AND d.status IN ('queued', 'running')");
        }
        sql.push_str(" ORDER BY d.created_at DESC, d.id DESC");
        if let Some(l) = q.limit {
            params.push(Box::new(i64::from(l)));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        rows.iter().map(deployment_row).collect()
    }

    async fn save_deployments(
        &self,
        ds: &mut [&mut Deployment],
        activate: Option<Activate>,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        for d in ds.iter() {
            let data = crate::deployment_json(d)?;
            let n = tx
                .execute_cached(
                    "UPDATE deployments SET status = $2, stage = $3, data = $4, version = version + 1 \
                     WHERE id = $1 AND version = $5",
                    &[
                        &d.id,
                        &d.status.as_str(),
                        &d.promotion_stage.as_str(),
                        &data,
                        &(d.version as i64),
                    ],
                )
                .await?;
            if n == 0 {
                let found = tx
                    .query_opt_cached("SELECT version FROM deployments WHERE id = $1", &[&d.id])
                    .await?;
                return Err(match found {
                    None => StoreError::not_found("deployment", &d.id),
                    Some(r) => StoreError::stale(d, r.get::<_, i64>(0) as u64),
                });
            }
        }
        if let Some(a) = activate {
            tx.execute_cached(
                "INSERT INTO slots (project, environment, service, active) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project, environment, service) DO UPDATE SET active = excluded.active",
                &[&a.slot.project, &a.slot.environment, &a.slot.service, &a.deployment_id],
            )
            .await?;
        }
        tx.commit().await?;
        for d in ds.iter_mut() {
            d.version += 1;
        }
        Ok(())
    }

    async fn active_deployment(&self, slot: &Slot) -> Result<Option<Deployment>> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                &format!(
                    "{DEPLOYMENT_SELECT} WHERE s.project = $1 AND s.environment = $2 AND s.service = $3 AND d.id = s.active"
                ),
                &[&slot.project, &slot.environment, &slot.service],
            )
            .await?;
        row.map(|r| deployment_row(&r)).transpose()
    }

    async fn append_logs(&self, lines: &[NewLogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        // The counter row stays locked until commit: cursors in commit order.
        let last: i64 = tx
            .query_one_cached(
                "UPDATE log_cursor SET last = last + $1 WHERE id = 1 RETURNING last",
                &[&(lines.len() as i64)],
            )
            .await?
            .get(0);
        let first = last - lines.len() as i64 + 1;
        // One statement for the whole batch (one round trip, not one a line).
        let seqs: Vec<i64> = (first..=last).collect();
        let ids: Vec<&str> = lines.iter().map(|l| l.deployment_id.as_str()).collect();
        let ts: Vec<DateTime<Utc>> = lines.iter().map(|l| l.ts).collect();
        let streams: Vec<&str> = lines.iter().map(|l| l.stream.as_str()).collect();
        let steps: Vec<Option<&str>> = lines.iter().map(|l| l.step.map(|s| s.as_str())).collect();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        tx.execute_cached(
            "INSERT INTO logs (seq, deployment_id, ts, stream, step, text) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])",
            &[&seqs, &ids, &ts, &streams, &steps, &texts],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>> {
        let mut sql = String::from(
            "SELECT l.seq, l.ts, l.deployment_id, d.project, d.service, d.environment, l.stream, l.step, l.text \
             FROM logs l JOIN deployments d ON d.id = l.deployment_id WHERE TRUE",
        );
        let mut params: Params = Vec::new();
        let mut push = |sql: &mut String, cond: &str, v: Box<dyn ToSql + Sync + Send>| {
            params.push(v);
            sql.push_str(&cond.replace('?', &format!("${}", params.len())));
        };
        if let Some(id) = &q.deployment_id {
            push(&mut sql, " AND l.deployment_id = ?", Box::new(id.clone()));
        }
        if let Some(s) = &q.slot {
            push(&mut sql, " AND d.project = ?", Box::new(s.project.clone()));
            push(
                &mut sql,
                " AND d.environment = ?",
                Box::new(s.environment.clone()),
            );
            push(&mut sql, " AND d.service = ?", Box::new(s.service.clone()));
        }
        if let Some(step) = q.step {
            push(
                &mut sql,
                " AND l.step = ?",
                Box::new(step.as_str().to_string()),
            );
        }
        if let Some(after) = q.after_seq {
            push(&mut sql, " AND l.seq > ?", Box::new(after));
        }
        if let Some(since) = q.since {
            push(&mut sql, " AND l.ts >= ?", Box::new(since));
        }
        if !q.streams.is_empty() {
            let list: Vec<String> = q.streams.iter().map(|s| s.as_str().to_string()).collect();
            push(&mut sql, " AND l.stream = ANY(?)", Box::new(list));
        }
        let tail = q.tail && q.limit.is_some();
        sql.push_str(if tail {
            " ORDER BY l.seq DESC"
        } else {
            " ORDER BY l.seq"
        });
        if let Some(l) = q.limit {
            params.push(Box::new(i64::from(l)));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        let mut out: Vec<LogLine> = rows
            .iter()
            .map(|r| LogLine {
                seq: r.get(0),
                ts: r.get(1),
                deployment_id: r.get(2),
                project_name: r.get(3),
                service_name: r.get(4),
                environment_name: r.get(5),
                sha: None,
                stream: LogStream::parse(r.get(6)).unwrap_or(LogStream::Berth),
                step: r
                    .get::<_, Option<String>>(7)
                    .and_then(|s| StepName::parse(&s)),
                text: r.get(8),
            })
            .collect();
        let mut shas: std::collections::HashMap<String, Option<String>> = Default::default();
        for line in out.iter_mut() {
            if !shas.contains_key(&line.deployment_id) {
                let data: Option<String> = c
                    .query_opt_cached(
                        "SELECT data FROM deployments WHERE id = $1",
                        &[&line.deployment_id],
                    )
                    .await?
                    .map(|r| r.get(0));
                let sha = data
                    .and_then(|d| serde_json::from_str::<Deployment>(&d).ok())
                    .and_then(|d| d.commit.map(|c| c.sha.chars().take(7).collect()));
                shas.insert(line.deployment_id.clone(), sha);
            }
            line.sha = shas[&line.deployment_id].clone();
        }
        if tail {
            out.reverse();
        }
        Ok(out)
    }

    async fn put_external_route(&self, r: &ExternalRoute) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "INSERT INTO external_routes (hostname, upstream, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (hostname) DO UPDATE SET upstream = excluded.upstream",
            &[&r.hostname, &r.upstream, &r.created_at],
        )
        .await?;
        Ok(())
    }

    async fn list_external_routes(&self) -> Result<Vec<ExternalRoute>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT hostname, upstream, created_at FROM external_routes ORDER BY hostname",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ExternalRoute {
                hostname: r.get(0),
                upstream: r.get(1),
                created_at: r.get(2),
            })
            .collect())
    }

    async fn remove_external_route(&self, hostname: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute_cached(
            "DELETE FROM external_routes WHERE hostname = $1",
            &[&hostname],
        )
        .await?
            > 0)
    }

    async fn record_delivery(
        &self,
        project: &str,
        delivery_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute_cached(
                "INSERT INTO webhook_deliveries (delivery_id, project, received_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (delivery_id) DO NOTHING",
                &[&delivery_id, &project, &at],
            )
            .await?;
        Ok(n > 0)
    }

    async fn put_manifest(
        &self,
        image: &str,
        entries: &[ManifestEntry],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let data =
            serde_json::to_string(entries).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        tx.execute_cached(
            "INSERT INTO manifests (image, data, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (image) DO UPDATE SET data = excluded.data",
            &[&image, &data, &at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_manifest(&self, image: &str) -> Result<Option<Vec<ManifestEntry>>> {
        let c = self.client().await?;
        let data: Option<String> = c
            .query_opt_cached("SELECT data FROM manifests WHERE image = $1", &[&image])
            .await?
            .map(|r| r.get(0));
        data.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Backend(e.to_string())))
            .transpose()
    }

    async fn prune_logs(
        &self,
        older_than: DateTime<Utc>,
        max_lines_per_project: u64,
    ) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let mut removed = tx
            .execute_cached("DELETE FROM logs WHERE ts < $1", &[&older_than])
            .await?;
        let projects = tx.query_cached("SELECT name FROM projects", &[]).await?;
        for p in projects {
            let p: String = p.get(0);
            let cut: Option<i64> = tx
                .query_opt_cached(
                    "SELECT l.seq FROM logs l JOIN deployments d ON d.id = l.deployment_id \
                     WHERE d.project = $1 ORDER BY l.seq DESC LIMIT 1 OFFSET $2",
                    &[&p, &(max_lines_per_project as i64)],
                )
                .await?
                .map(|r| r.get(0));
            if let Some(cut) = cut {
                removed += tx
                    .execute_cached(
                        "DELETE FROM logs WHERE seq <= $1 AND deployment_id IN (SELECT id FROM deployments WHERE project = $2)",
                        &[&cut, &p],
                    )
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn add_domain(&self, d: &Domain) -> Result<Domain> {
        let c = self.client().await?;
        get_env(&c, &d.project_name, &d.environment_name).await?;
        let n = c
            .execute_cached(
                "INSERT INTO domains (hostname, project, environment, service, token, target, verified_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, $7) ON CONFLICT (hostname) DO NOTHING",
                &[
                    &d.hostname,
                    &d.project_name,
                    &d.environment_name,
                    &d.service_name,
                    &d.verification.value,
                    &d.target,
                    &d.created_at,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict {
                what: "domain",
                name: d.hostname.clone(),
            });
        }
        Ok(d.clone())
    }

    async fn list_domains(&self, project: Option<&str>) -> Result<Vec<Domain>> {
        let mut sql = String::from(
            "SELECT d.hostname, d.project, d.environment, d.service, d.token, d.target, d.verified_at, d.created_at, \
             c.state, c.not_after, c.error, c.next_attempt_at, c.attempts \
             FROM domains d LEFT JOIN certificates c ON c.hostname = d.hostname",
        );
        let mut params: Params = Vec::new();
        if let Some(p) = project {
            params.push(Box::new(p.to_string()));
            sql.push_str(" WHERE d.project = $1");
        }
        sql.push_str(" ORDER BY d.hostname");
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let hostname: String = r.get(0);
                let verified_at: Option<DateTime<Utc>> = r.get(6);
                Domain {
                    verification: DomainVerification {
                        record_type: "TXT".into(),
                        name: berth_core::model::verification_name(&hostname),
                        value: r.get(4),
                    },
                    hostname,
                    project_name: r.get(1),
                    environment_name: r.get(2),
                    service_name: r.get(3),
                    target: r.get(5),
                    verified: verified_at.is_some(),
                    verified_at,
                    created_at: r.get(7),
                    certificate: CertificateStatus {
                        state: r
                            .get::<_, Option<String>>(8)
                            .and_then(|s| CertState::parse(&s))
                            .unwrap_or_default(),
                        not_after: r.get(9),
                        error: r.get(10),
                        next_attempt_at: r.get(11),
                        attempts: r.get::<_, Option<i32>>(12).unwrap_or(0).max(0) as u32,
                    },
                }
            })
            .collect())
    }

    async fn set_domain_verified(&self, hostname: &str, at: DateTime<Utc>) -> Result<()> {
        let c = self.client().await?;
        let n = c
            .execute_cached(
                "UPDATE domains SET verified_at = $2 WHERE hostname = $1",
                &[&hostname, &at],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::not_found("domain", hostname));
        }
        Ok(())
    }

    async fn remove_domain(&self, hostname: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(
            c.execute_cached("DELETE FROM domains WHERE hostname = $1", &[&hostname])
                .await?
                > 0,
        )
    }

    async fn put_certificate(&self, cert: &CertRecord) -> Result<()> {
        let sealed = cert
            .key_pem
            .as_ref()
            .map(|k| self.sealer.seal(Secret::TlsKey(&cert.hostname), k));
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        tx.execute_cached(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (hostname) DO UPDATE SET state = excluded.state, chain_pem = excluded.chain_pem, \
                 key_sealed = excluded.key_sealed, not_after = excluded.not_after, error = excluded.error, \
                 attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at"
            ),
            &[
                &cert.hostname,
                &cert.state.as_str(),
                &cert.chain_pem,
                &sealed,
                &cert.not_after,
                &cert.error,
                &(cert.attempts as i32),
                &cert.next_attempt_at,
                &cert.updated_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_certificate(&self, hostname: &str) -> Result<Option<CertRecord>> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE hostname = $1"),
                &[&hostname],
            )
            .await?;
        row.map(|r| self.open_cert(cert_row(&r))).transpose()
    }

    async fn list_certificates(&self) -> Result<Vec<CertRecord>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                &format!("SELECT {CERT_COLUMNS} FROM certificates ORDER BY hostname"),
                &[],
            )
            .await?;
        rows.iter().map(|r| self.open_cert(cert_row(r))).collect()
    }

    async fn remove_certificate(&self, hostname: &str) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let n = tx
            .execute_cached("DELETE FROM certificates WHERE hostname = $1", &[&hostname])
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        let sealed: Option<String> = c
            .query_opt_cached(
                "SELECT credentials_sealed FROM acme_accounts WHERE directory = $1",
                &[&directory],
            )
            .await?
            .map(|r| r.get(0));
        self.sealer
            .open_opt(Secret::AcmeAccount(directory), sealed.as_deref())
    }

    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<()> {
        let sealed = self
            .sealer
            .seal(Secret::AcmeAccount(directory), credentials);
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        tx.execute_cached(
            "INSERT INTO acme_accounts (directory, credentials_sealed, created_at) VALUES ($1, $2, now()) \
             ON CONFLICT (directory) DO UPDATE SET credentials_sealed = excluded.credentials_sealed",
            &[&directory, &sealed],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_acme_directories(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT directory FROM acme_accounts ORDER BY directory",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn list_manifest_images(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query_cached("SELECT image FROM manifests ORDER BY image", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn list_deliveries(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT project, delivery_id, received_at FROM webhook_deliveries ORDER BY received_at, delivery_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn clustered(&self) -> bool {
        true
    }

    async fn heartbeat(
        &self,
        member: &str,
        api_url: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::cluster::Lease> {
        let ttl_ms = ttl.as_millis() as i64;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_one_cached(
                "SELECT holder, epoch, expires_at > now() FROM cluster_lease WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?;
        let (holder, valid): (Option<String>, bool) = (row.get(0), row.get(2));
        let row = if valid && holder.as_deref() == Some(member) {
            tx.query_one_cached(
                "UPDATE cluster_lease SET expires_at = now() + $1::bigint * interval '1 millisecond' WHERE id = 1 RETURNING holder, epoch, expires_at",
                &[&ttl_ms],
            )
            .await?
        } else if !valid {
            // Free or expired (also when it was ours: a server that could
            // not renew in time leads again only under a new epoch).
            tx.query_one_cached(
                "UPDATE cluster_lease SET holder = $1, epoch = epoch + 1, expires_at = now() + $2::bigint * interval '1 millisecond' WHERE id = 1 RETURNING holder, epoch, expires_at",
                &[&member, &ttl_ms],
            )
            .await?
        } else {
            tx.query_one_cached(
                "SELECT holder, epoch, expires_at FROM cluster_lease WHERE id = 1",
                &[],
            )
            .await?
        };
        let lease = crate::cluster::Lease {
            holder: row.get(0),
            epoch: row.get::<_, i64>(1) as u64,
            mine: row.get::<_, Option<String>>(0).as_deref() == Some(member),
            expires_at: row.get(2),
        };
        tx.execute_cached(
            "INSERT INTO cluster_members (id, api_url, epoch, last_seen_at) VALUES ($1, $2, $3, now()) ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, epoch = excluded.epoch, last_seen_at = excluded.last_seen_at",
            &[&member, &api_url, &(lease.epoch as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(lease)
    }

    async fn release_lease(&self, member: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "UPDATE cluster_lease SET expires_at = 'epoch' WHERE id = 1 AND holder = $1",
            &[&member],
        )
        .await?;
        Ok(())
    }

    async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT m.id, m.api_url, m.epoch, m.last_seen_at, (l.holder = m.id AND l.expires_at > now()) AS leader, l.epoch FROM cluster_members m CROSS JOIN cluster_lease l ORDER BY leader DESC, m.last_seen_at DESC, m.id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let is_leader: bool = r.get(4);
                let epoch: i64 = if is_leader { r.get(5) } else { r.get(2) };
                ClusterMember {
                    id: r.get(0),
                    api_url: r.get(1),
                    is_leader,
                    epoch: epoch as u64,
                    last_seen_at: r.get(3),
                }
            })
            .collect())
    }

    async fn engine_identity(&self, candidate: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        let row = c
            .query_one_cached(
                "UPDATE cluster_lease SET engine_id = COALESCE(engine_id, $1) WHERE id = 1 RETURNING engine_id",
                &[&candidate],
            )
            .await?;
        Ok(Some(row.get(0)))
    }

    async fn insert_run(&self, r: &Run) -> Result<()> {
        let data = crate::run_json(r)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        get_env(&tx, &r.project_name, &r.environment_name).await?;
        tx.execute_cached(
            "INSERT INTO runs (id, project, environment, service, job, scheduled_for, status, created_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &r.id,
                &r.project_name,
                &r.environment_name,
                &r.service_name,
                &r.job,
                &r.scheduled_for,
                &r.status.as_str(),
                &r.created_at,
                &data,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "run",
                    name: crate::sqlite::run_key(r),
                }
            } else {
                pg_err(e)
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_run(&self, r: &Run) -> Result<()> {
        let data = crate::run_json(r)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let n = tx
            .execute_cached(
                "UPDATE runs SET status = $2, data = $3 WHERE id = $1",
                &[&r.id, &r.status.as_str(), &data],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::not_found("run", &r.id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_run(&self, id: &str) -> Result<Run> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached("SELECT data FROM runs WHERE id = $1", &[&id])
            .await?
            .ok_or_else(|| StoreError::not_found("run", id))?;
        crate::run_from_json(&row.get::<_, String>(0))
    }

    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let mut sql = String::from("SELECT data FROM runs WHERE TRUE");
        let mut params: Params = Vec::new();
        for (col, v) in [
            ("project", &q.project),
            ("environment", &q.environment),
            ("job", &q.job),
        ] {
            if let Some(v) = v {
                params.push(Box::new(v.clone()));
                sql.push_str(&format!(" AND {col} = ${}", params.len()));
            }
        }
        if q.jobs_only {
            sql.push_str(" AND job IS NOT NULL");
        }
        if q.unfinished {
            sql.push_str(" AND status = 'running'");
        }
        if let Some(t) = q.created_before {
            params.push(Box::new(t));
            sql.push_str(&format!(" AND created_at < ${}", params.len()));
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        if let Some(l) = q.limit {
            params.push(Box::new(i64::from(l)));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        rows.iter()
            .map(|r| crate::run_from_json(&r.get::<_, String>(0)))
            .collect()
    }

    // --- tokens, audit log, console sessions ---
    async fn create_token(&self, t: &TokenRecord) -> Result<()> {
        crate::sqlite::check_token(t)?;
        let i = &t.info;
        let c = self.client().await?;
        c.execute_cached(
            "INSERT INTO api_tokens (name, hash, role, project, created_at, expires_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &i.name,
                &t.hash,
                &i.role.as_str(),
                &i.project,
                &i.created_at,
                &i.expires_at,
                &i.last_used_at,
                &i.revoked_at,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "token",
                    name: i.name.clone(),
                }
            } else {
                pg_err(e)
            }
        })?;
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY name"),
                &[],
            )
            .await?;
        rows.iter().map(token_row).collect()
    }

    async fn token_records(&self) -> Result<Vec<TokenRecord>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                &format!("SELECT {TOKEN_COLS}, hash FROM api_tokens ORDER BY name"),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    info: token_row(r)?,
                    hash: r.get(7),
                })
            })
            .collect()
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let c = self.client().await?;
        c.query_opt_cached(
            &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE hash = $1"),
            &[&hash],
        )
        .await?
        .as_ref()
        .map(token_row)
        .transpose()
    }

    async fn get_token(&self, name: &str) -> Result<TokenInfo> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE name = $1"),
                &[&name],
            )
            .await?
            .ok_or_else(|| StoreError::not_found("token", name))?;
        token_row(&row)
    }

    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<TokenInfo> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                &format!(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1 \
                     RETURNING {TOKEN_COLS}"
                ),
                &[&name, &at],
            )
            .await?
            .ok_or_else(|| StoreError::not_found("token", name))?;
        token_row(&row)
    }

    async fn touch_token(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "UPDATE api_tokens SET last_used_at = $2 WHERE name = $1",
            &[&name, &at],
        )
        .await?;
        Ok(())
    }

    async fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "INSERT INTO audit_log (at, token, action, target, project, source_ip) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &e.at,
                &e.token,
                &e.action,
                &e.target,
                &e.project,
                &e.source_ip,
            ],
        )
        .await?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql =
            String::from("SELECT at, token, action, target, project, source_ip FROM audit_log");
        let mut params: Params = Vec::new();
        if let Some(p) = &q.project {
            params.push(Box::new(p.clone()));
            sql.push_str(" WHERE project = $1");
        }
        sql.push_str(" ORDER BY seq DESC");
        if let Some(l) = q.limit {
            params.push(Box::new(i64::from(l)));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                token: r.get(1),
                action: r.get(2),
                target: r.get(3),
                project: r.get(4),
                source_ip: r.get(5),
            })
            .collect())
    }

    async fn put_session(&self, s: &SessionRecord) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute_cached(
            "DELETE FROM console_sessions WHERE expires_at <= $1",
            &[&s.created_at],
        )
        .await?;
        tx.execute_cached(
            "INSERT INTO console_sessions (id_hash, token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (id_hash) DO UPDATE \
             SET token = EXCLUDED.token, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
            &[&s.id_hash, &s.token, &s.created_at, &s.expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let c = self.client().await?;
        Ok(c.query_opt_cached(
            "SELECT id_hash, token, created_at, expires_at FROM console_sessions \
             WHERE id_hash = $1 AND expires_at > $2",
            &[&id_hash, &now],
        )
        .await?
        .map(|r| SessionRecord {
            id_hash: r.get(0),
            token: r.get(1),
            created_at: r.get(2),
            expires_at: r.get(3),
        }))
    }

    async fn remove_session(&self, id_hash: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[&id_hash],
        )
        .await?;
        Ok(())
    }

    // --- volume backups ---
    async fn insert_backup(&self, b: &Backup) -> Result<()> {
        let data = crate::backup_json(b)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        get_project(&tx, &b.project_name).await?;
        tx.execute_cached(
            "INSERT INTO backups (id, project, environment, volume, status, created_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &b.id,
                &b.project_name,
                &b.environment_name,
                &b.volume,
                &b.status.as_str(),
                &b.created_at,
                &data,
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "backup",
                    name: b.id.clone(),
                }
            } else {
                pg_err(e)
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_backup(&self, b: &Backup) -> Result<()> {
        let data = crate::backup_json(b)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let n = tx
            .execute_cached(
                "UPDATE backups SET status = $2, data = $3 WHERE id = $1",
                &[&b.id, &b.status.as_str(), &data],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::not_found("backup", &b.id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_backup(&self, id: &str) -> Result<Backup> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached("SELECT data FROM backups WHERE id = $1", &[&id])
            .await?
            .ok_or_else(|| StoreError::not_found("backup", id))?;
        crate::backup_from_json(&row.get::<_, String>(0))
    }

    async fn list_backups(
        &self,
        project: &str,
        environment: Option<&str>,
        volume: Option<&str>,
    ) -> Result<Vec<Backup>> {
        let mut sql = String::from("SELECT data FROM backups WHERE project = $1");
        let mut params: Params = vec![Box::new(project.to_string())];
        for (col, v) in [("environment", environment), ("volume", volume)] {
            if let Some(v) = v {
                params.push(Box::new(v.to_string()));
                sql.push_str(&format!(" AND {col} = ${}", params.len()));
            }
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        let c = self.client().await?;
        let rows = c.query_cached(&sql, &refs(&params)).await?;
        rows.iter()
            .map(|r| crate::backup_from_json(&r.get::<_, String>(0)))
            .collect()
    }

    async fn delete_backup(&self, id: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        tx.execute_cached("DELETE FROM backups WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- notifications ---
    async fn add_notification(&self, n: &Notification, target: &NotifyTarget) -> Result<()> {
        let url = self.sealer.seal(Secret::NotifyUrl(&n.id), &target.url);
        let secret = self
            .sealer
            .seal(Secret::NotifySecret(&n.id), &target.secret);
        let data = crate::to_json(n)?;
        let c = self.client().await?;
        get_project(&c, &n.project_name).await?;
        c.execute_cached(
            "INSERT INTO notifications (id, project, url, secret, created_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&n.id, &n.project_name, &url, &secret, &n.created_at, &data],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "notification",
                    name: n.id.clone(),
                }
            } else {
                pg_err(e)
            }
        })?;
        Ok(())
    }

    async fn list_notifications(&self, project: Option<&str>) -> Result<Vec<Notification>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT data FROM notifications WHERE $1::TEXT IS NULL OR project = $1 \
                 ORDER BY created_at, id",
                &[&project],
            )
            .await?;
        rows.iter()
            .map(|r| crate::from_json("notification", &r.get::<_, String>(0)))
            .collect()
    }

    async fn remove_notification(&self, project: &str, id: &str) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute_cached(
                "DELETE FROM notifications WHERE project = $1 AND id = $2",
                &[&project, &id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn notification_target(&self, id: &str) -> Result<NotifyTarget> {
        let c = self.client().await?;
        let row = c
            .query_opt_cached(
                "SELECT url, secret FROM notifications WHERE id = $1",
                &[&id],
            )
            .await?
            .ok_or_else(|| StoreError::not_found("notification", id))?;
        Ok(NotifyTarget {
            url: self
                .sealer
                .open(Secret::NotifyUrl(id), &row.get::<_, String>(0))?,
            secret: self
                .sealer
                .open(Secret::NotifySecret(id), &row.get::<_, String>(1))?,
        })
    }

    async fn queue_delivery(&self, d: &Delivery) -> Result<bool> {
        let data = crate::to_json(d)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let n = tx
            .execute_cached(
                "INSERT INTO notification_deliveries \
                 (id, notification, deployment, event, status, next_attempt_at, created_at, data) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (notification, deployment, event) DO NOTHING",
                &[
                    &d.id,
                    &d.notification_id,
                    &d.deployment_id,
                    &d.event.as_str(),
                    &d.status.as_str(),
                    &d.next_attempt_at,
                    &d.created_at,
                    &data,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT data FROM notification_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, id LIMIT $2",
                &[&now, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| crate::from_json("delivery", &r.get::<_, String>(0)))
            .collect()
    }

    async fn save_delivery(&self, d: &Delivery) -> Result<()> {
        let data = crate::to_json(d)?;
        let mut c = self.client().await?;
        let tx = write_tx(&mut c).await?;
        let n = tx
            .execute_cached(
                "UPDATE notification_deliveries SET status = $2, next_attempt_at = $3, data = $4 \
                 WHERE id = $1",
                &[&d.id, &d.status.as_str(), &d.next_attempt_at, &data],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::not_found("delivery", &d.id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn notification_deliveries(
        &self,
        notification: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT data FROM notification_deliveries WHERE notification = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2",
                &[&notification, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| crate::from_json("delivery", &r.get::<_, String>(0)))
            .collect()
    }

    // --- maintenance ---
    async fn set_maintenance(&self, m: &Maintenance) -> Result<()> {
        let c = self.client().await?;
        get_env(&c, &m.project_name, &m.environment_name).await?;
        c.execute_cached(
            "INSERT INTO maintenance (project, environment, service, since) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[
                &m.project_name,
                &m.environment_name,
                &m.service_name.as_deref().unwrap_or(""),
                &m.since,
            ],
        )
        .await?;
        Ok(())
    }

    async fn clear_maintenance(
        &self,
        project: &str,
        environment: &str,
        service: Option<&str>,
    ) -> Result<u64> {
        let c = self.client().await?;
        get_env(&c, project, environment).await?;
        Ok(c.execute_cached(
            "DELETE FROM maintenance WHERE project = $1 AND environment = $2 \
             AND ($3::TEXT IS NULL OR service = $3)",
            &[&project, &environment, &service],
        )
        .await?)
    }

    async fn list_maintenance(&self, project: Option<&str>) -> Result<Vec<Maintenance>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT project, environment, service, since FROM maintenance \
                 WHERE $1::TEXT IS NULL OR project = $1 ORDER BY project, environment, service",
                &[&project],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let service: String = r.get(2);
                Maintenance {
                    project_name: r.get(0),
                    environment_name: r.get(1),
                    service_name: (!service.is_empty()).then_some(service),
                    since: r.get(3),
                }
            })
            .collect())
    }

    // --- copy-store ---
    async fn session_records(&self, now: DateTime<Utc>) -> Result<Vec<SessionRecord>> {
        let c = self.client().await?;
        Ok(c.query_cached(
            "SELECT id_hash, token, created_at, expires_at FROM console_sessions \
                 WHERE expires_at > $1 ORDER BY created_at, id_hash",
            &[&now],
        )
        .await?
        .iter()
        .map(|r| SessionRecord {
            id_hash: r.get(0),
            token: r.get(1),
            created_at: r.get(2),
            expires_at: r.get(3),
        })
        .collect())
    }

    // --- certificates: DNS-01 keys, followers ---
    async fn certificates_stamp(&self) -> Result<String> {
        let c = self.client().await?;
        let row = c
            .query_one_cached("SELECT COUNT(*), MAX(updated_at) FROM certificates", &[])
            .await?;
        let n: i64 = row.get(0);
        let last: Option<DateTime<Utc>> = row.get(1);
        Ok(format!(
            "{n}/{}",
            last.map(|t| t.to_rfc3339()).unwrap_or_default()
        ))
    }

    async fn dns_update_key(&self, server: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        let sealed: Option<String> = c
            .query_opt_cached(
                "SELECT key_sealed FROM dns_update_keys WHERE server = $1",
                &[&server],
            )
            .await?
            .map(|r| r.get(0));
        self.sealer
            .open_opt(Secret::DnsUpdateKey(server), sealed.as_deref())
    }

    async fn put_dns_update_key(&self, server: &str, key: &str) -> Result<()> {
        let sealed = self.sealer.seal(Secret::DnsUpdateKey(server), key);
        let c = self.client().await?;
        c.execute_cached(
            "INSERT INTO dns_update_keys (server, key_sealed, created_at) VALUES ($1, $2, now()) \
             ON CONFLICT (server) DO UPDATE SET key_sealed = excluded.key_sealed",
            &[&server, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn list_dns_update_servers(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query_cached("SELECT server FROM dns_update_keys ORDER BY server", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    // --- charts: per-minute traffic rollup ---
    async fn put_metric_minutes(&self, rows: &[MetricMinute]) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let st = tx
            .prepare_cached(
                "INSERT INTO metric_minutes (deployment_id, project, environment, service, \
                 minute, requests, errors, p95_ms, member, latency) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (deployment_id, minute, member) DO UPDATE SET \
                 requests = excluded.requests, errors = excluded.errors, \
                 p95_ms = excluded.p95_ms, latency = excluded.latency",
            )
            .await?;
        for r in rows {
            tx.execute(
                &st,
                &[
                    &r.deployment_id,
                    &r.project_name,
                    &r.environment_name,
                    &r.service_name,
                    &r.minute,
                    &(r.requests as i64),
                    &(r.errors as i64),
                    &r.p95_ms,
                    &r.member,
                    &crate::rollup::encode_latency(&r.latency),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_metric_minutes(
        &self,
        project: &str,
        environment: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<MetricMinute>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT deployment_id, project, environment, service, minute, requests, errors, \
                 p95_ms, member, latency FROM metric_minutes WHERE project = $1 \
                 AND environment = $2 AND service = $3 AND minute >= $4 \
                 ORDER BY minute, deployment_id, member",
                &[&project, &environment, &service, &since],
            )
            .await?;
        Ok(crate::rollup::merge_members(
            rows.iter()
                .map(|r| MetricMinute {
                    deployment_id: r.get(0),
                    project_name: r.get(1),
                    environment_name: r.get(2),
                    service_name: r.get(3),
                    minute: r.get(4),
                    requests: r.get::<_, i64>(5).max(0) as u64,
                    errors: r.get::<_, i64>(6).max(0) as u64,
                    p95_ms: r.get(7),
                    member: r.get(8),
                    latency: crate::rollup::decode_latency(r.get(9)),
                })
                .collect(),
        ))
    }

    async fn prune_metric_minutes(&self, before: DateTime<Utc>) -> Result<u64> {
        let c = self.client().await?;
        Ok(
            c.execute_cached("DELETE FROM metric_minutes WHERE minute < $1", &[&before])
                .await?,
        )
    }

    // --- pushed repositories, cancel requests (cluster) ---
    async fn pushed_repo_version(&self, project: &str) -> Result<u64> {
        let c = self.client().await?;
        let v: Option<i64> = c
            .query_opt_cached(
                "SELECT version FROM pushed_repos WHERE project = $1",
                &[&project],
            )
            .await?
            .map(|r| r.get(0));
        Ok(v.unwrap_or(0) as u64)
    }

    async fn pushed_repo(&self, project: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let c = self.client().await?;
        Ok(c.query_opt_cached(
            "SELECT version, bundle FROM pushed_repos WHERE project = $1",
            &[&project],
        )
        .await?
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1))))
    }

    async fn put_pushed_repo(
        &self,
        project: &str,
        expected: u64,
        bundle: &[u8],
    ) -> Result<Option<u64>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Locks the project row, so two pushes of it are saved one after
        // the other and the second sees the first's version.
        if tx
            .query_opt_cached(
                "SELECT 1 FROM projects WHERE name = $1 FOR UPDATE",
                &[&project],
            )
            .await?
            .is_none()
        {
            return Err(StoreError::not_found("project", project));
        }
        let cur: i64 = tx
            .query_opt_cached(
                "SELECT version FROM pushed_repos WHERE project = $1",
                &[&project],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if cur as u64 != expected {
            return Ok(None);
        }
        let next = cur + 1;
        tx.execute_cached(
            "INSERT INTO pushed_repos (project, version, bundle, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (project) DO UPDATE SET version = excluded.version, bundle = excluded.bundle, updated_at = excluded.updated_at",
            &[&project, &next, &bundle],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(next as u64))
    }

    async fn pushed_repo_projects(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query_cached("SELECT project FROM pushed_repos ORDER BY project", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn request_cancel(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        let n = c
            .execute_cached(
                "INSERT INTO cancel_requests (deployment_id, requested_at) \
                 SELECT id, now() FROM deployments WHERE id = $1 \
                 ON CONFLICT (deployment_id) DO NOTHING",
                &[&id],
            )
            .await?;
        if n == 0
            && c.query_opt_cached("SELECT 1 FROM deployments WHERE id = $1", &[&id])
                .await?
                .is_none()
        {
            return Err(StoreError::not_found("deployment", id));
        }
        Ok(())
    }

    async fn cancel_requests(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .query_cached(
                "SELECT deployment_id FROM cancel_requests ORDER BY requested_at, deployment_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn clear_cancel_request(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute_cached(
            "DELETE FROM cancel_requests WHERE deployment_id = $1",
            &[&id],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that count cached statements or meet stale ones, one at a
    /// time: meeting one moves the process-wide [`STALE_SEEN`], which makes
    /// every store of the process clear its caches at its next checkout.
    static STALE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// The statement cache of the pool's one connection.
    async fn cached(store: &PgStore) -> usize {
        store.client().await.unwrap().statement_cache.size()
    }

    /// The reads whose SQL is built from optional filters, with `n` in
    /// every value (limit, cursor, names).
    async fn reads(store: &PgStore, n: u32) {
        store
            .list_deployments(&DeploymentQuery {
                project: Some(format!("p{n}")),
                limit: Some(n),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .read_logs(&LogQuery {
                deployment_id: Some(format!("d{n}")),
                after_seq: Some(i64::from(n)),
                limit: Some(n),
                tail: true,
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .list_runs(&RunQuery {
                limit: Some(n),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .list_audit(&AuditQuery {
                limit: Some(n),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Each SQL text is prepared once per connection, and no text varies by
    /// value: after the first round of reads, 40 more with other limits,
    /// cursors and names add nothing to the connection's statement cache (a
    /// `LIMIT` formatted into the text would add a statement per value,
    /// without bound).
    #[tokio::test]
    async fn statements_are_prepared_once_per_text_whatever_the_values() {
        let Some(base) = crate::testpg::require() else {
            return;
        };
        let _one = STALE_TESTS.lock().await;
        let url = crate::testpg::fresh_database(&base).await;
        let store = PgStore::connect(&url, Cipher::from_key([3; 32]))
            .await
            .unwrap();
        // One connection: every call below goes through the same cache.
        store.pool.resize(1);
        reads(&store, 1).await;
        let warm = cached(&store).await;
        assert!(warm >= 4, "the reads were not cached ({warm} statements)");
        for n in 2..=40 {
            reads(&store, n).await;
        }
        assert_eq!(cached(&store).await, warm);
    }

    /// What another server's migration does to a table during a rolling
    /// upgrade: a selected column changes type (here `projects.repo`, TEXT
    /// to VARCHAR, which the store still decodes), from another connection.
    async fn alter_repo_type(url: &str, ty: &str) {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("ALTER TABLE projects ALTER COLUMN repo TYPE {ty}"))
            .await
            .unwrap();
        drop(client);
        task.await.unwrap().unwrap();
    }

    /// A read whose cached statement went stale (the server answers "cached
    /// plan must not change result type") is prepared again and succeeds;
    /// a write transaction that meets a stale statement rolls back whole
    /// with an error saying so, and the next attempt succeeds.
    #[tokio::test]
    async fn a_table_changed_under_cached_statements_is_prepared_again() {
        let Some(base) = crate::testpg::require() else {
            return;
        };
        let _one = STALE_TESTS.lock().await;
        let url = crate::testpg::fresh_database(&base).await;
        let store = PgStore::connect(&url, Cipher::from_key([4; 32]))
            .await
            .unwrap();
        // One connection: the statements primed here are the ones used after.
        store.pool.resize(1);
        store
            .create_project(NewProject {
                name: "shop".into(),
                repo: "/srv/git/shop.git".into(),
                default_branch: "main".into(),
                retain_images: 3,
                webhook_secret: None,
                deploy_key: None,
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        // Prime the cache: the reads, and the write's statements.
        assert_eq!(store.list_projects().await.unwrap().len(), 1);
        store.get_project("shop").await.unwrap();
        let patch = |n| ProjectPatch {
            retain_images: Some(n),
            ..Default::default()
        };
        store.update_project("shop", patch(4)).await.unwrap();

        alter_repo_type(&url, "VARCHAR(4096)").await;
        let listed = store.list_projects().await.expect("the list is read again");
        assert_eq!(listed[0].repo, "/srv/git/shop.git");
        assert_eq!(
            store.get_project("shop").await.unwrap().repo,
            "/srv/git/shop.git"
        );

        // The write: its statements went stale with the reads' (one cache).
        alter_repo_type(&url, "TEXT").await;
        // (the update's own SELECT is its first statement to read `repo`)
        let e = store
            .update_project("shop", patch(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a table changed under a cached statement"),
            "{e}"
        );
        assert_eq!(store.get_project("shop").await.unwrap().retain_images, 4);
        let p = store.update_project("shop", patch(5)).await.unwrap();
        assert_eq!((p.retain_images, p.repo.as_str()), (5, "/srv/git/shop.git"));
    }

    /// One connection meeting a stale statement clears every connection's
    /// cache at the next checkout: a write transaction on another primed
    /// connection then succeeds instead of failing in its turn.
    #[tokio::test]
    async fn a_stale_statement_on_one_connection_clears_every_connection() {
        let Some(base) = crate::testpg::require() else {
            return;
        };
        let _one = STALE_TESTS.lock().await;
        let url = crate::testpg::fresh_database(&base).await;
        let store = PgStore::connect(&url, Cipher::from_key([4; 32]))
            .await
            .unwrap();
        store.pool.resize(2);
        store
            .create_project(NewProject {
                name: "shop".into(),
                repo: "/srv/git/shop.git".into(),
                default_branch: "main".into(),
                retain_images: 3,
                webhook_secret: None,
                deploy_key: None,
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        // Two connections, both with the project read cached.
        let a = store.client().await.unwrap();
        let b = store.client().await.unwrap();
        get_project(&a, "shop").await.unwrap();
        get_project(&b, "shop").await.unwrap();
        drop(b);
        alter_repo_type(&url, "VARCHAR(4096)").await;
        // `a` meets the stale statement (and reads again); `b`, the only
        // idle connection while `a` is held, serves the write.
        get_project(&a, "shop").await.unwrap();
        let p = store
            .update_project(
                "shop",
                ProjectPatch {
                    retain_images: Some(7),
                    ..Default::default()
                },
            )
            .await
            .expect("the other connection's cache was cleared too");
        assert_eq!(p.retain_images, 7);
        drop(a);
    }
}

//! The SQLite backend: one file, WAL, `synchronous=FULL`, embedded migrations.

use crate::crypto::Cipher;
use crate::seal::{Sealer, Secret};
use crate::RunQuery;
use crate::{
    Activate, CertRecord, DeploymentQuery, LogQuery, NewLogLine, NewProject, ProjectPatch,
    RepoAccess, ResolvedVar, Result, Slot, Store, StoreError, VarFlags,
};
use crate::{AuditQuery, SessionRecord, TokenRecord};
use crate::{MetricMinute, NotifyTarget};
use async_trait::async_trait;
use berth_core::access::{AuditEntry, Role, TokenInfo};
use berth_core::model::{
    split_url_credentials, with_url_credentials, CertState, CertificateStatus, Domain,
    DomainVerification, ManifestEntry,
};
use berth_core::model::{
    Deployment, Environment, EnvironmentKind, ExternalRoute, LogLine, LogStream, Maintenance,
    Project, StepName, Variable, PRODUCTION,
};
use berth_core::names;
use berth_core::notify::{Delivery, Notification};
use berth_core::ops::Run;
use berth_core::volumes::Backup;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Migrations in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_deliveries.sql"),
    include_str!("../migrations/0003_manifests.sql"),
    include_str!("../migrations/0004_domains.sql"),
    include_str!("../migrations/0005_credentials.sql"),
    include_str!("../migrations/0006_certificates.sql"),
    include_str!("../migrations/0007_versions.sql"),
    include_str!("../migrations/0008_runs.sql"),
    include_str!("../migrations/0009_access.sql"),
    include_str!("../migrations/0010_backups.sql"),
    include_str!("../migrations/0011_notifications.sql"),
    include_str!("../migrations/0012_maintenance.sql"),
    include_str!("../migrations/0013_dns_update_keys.sql"),
    include_str!("../migrations/0014_metric_minutes.sql"),
    include_str!("../migrations/0015_pushed_repos.sql"),
    include_str!("../migrations/0016_metric_members.sql"),
];

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "berth.db";

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    sealer: Sealer,
    path: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

pub(crate) fn env_kind_str(k: EnvironmentKind) -> &'static str {
    match k {
        EnvironmentKind::Production => "production",
        EnvironmentKind::Branch => "branch",
        EnvironmentKind::Preview => "preview",
    }
}

pub(crate) fn env_kind(s: &str) -> EnvironmentKind {
    match s {
        "production" => EnvironmentKind::Production,
        "preview" => EnvironmentKind::Preview,
        _ => EnvironmentKind::Branch,
    }
}

const CERT_COLUMNS: &str =
    "hostname, state, chain_pem, key_sealed, not_after, error, attempts, next_attempt_at, updated_at";

fn opt_ts(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    r.get::<_, Option<String>>(i)?
        .map(|t| parse_ts(&t))
        .transpose()
}

/// A certificate row, the key still sealed.
fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(CertRecord, Option<String>)> {
    let state: String = r.get(1)?;
    Ok((
        CertRecord {
            hostname: r.get(0)?,
            state: CertState::parse(&state).unwrap_or(CertState::Failed),
            chain_pem: r.get(2)?,
            key_pem: None,
            not_after: opt_ts(r, 4)?,
            error: r.get(5)?,
            attempts: r.get::<_, i64>(6)?.max(0) as u32,
            next_attempt_at: opt_ts(r, 7)?,
            updated_at: parse_ts(&r.get::<_, String>(8)?)?,
        },
        r.get(3)?,
    ))
}

impl SqliteStore {
    /// Open (creating if needed) `<data_dir>/berth.db` and apply migrations.
    pub fn open(data_dir: &Path, cipher: Cipher) -> Result<Self> {
        Self::open_file(&data_dir.join(DB_FILE), cipher)
    }

    /// Open (creating if needed) the database file `path` and apply
    /// migrations.
    pub fn open_file(path: &Path, cipher: Cipher) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
        })?;
        let path = path.to_path_buf();
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A deleted or replaced value (a credential moved out of a URL, a
        // rotated key) is overwritten on disk, not left in a free page.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let sealer = Sealer::new(cipher);
        seal_repo_credentials(&mut conn, &sealer)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            sealer,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA integrity_check`: "ok" when the file is consistent.
    pub async fn integrity_check(&self) -> Result<String> {
        self.call(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .await
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

impl SqliteStore {
    /// Opens a certificate row's sealed key.
    fn open_cert(&self, (mut rec, sealed): (CertRecord, Option<String>)) -> Result<CertRecord> {
        rec.key_pem = sealed
            .map(|s| self.sealer.open(Secret::TlsKey(&rec.hostname), &s))
            .transpose()?;
        Ok(rec)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Backend(format!("migration {} failed: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

/// Projects written before credentials were sealed kept them inside the
/// repository URL: move them into the sealed column, then checkpoint so the
/// old page leaves the WAL too.
fn seal_repo_credentials(conn: &mut Connection, sealer: &Sealer) -> Result<()> {
    let rows: Vec<(String, String)> = {
        let mut st = conn.prepare("SELECT name, repo FROM projects")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut moved = 0;
    let tx = conn.transaction()?;
    for (name, repo) in rows {
        if let (bare, Some(cred)) = split_url_credentials(&repo) {
            tx.execute(
                "UPDATE projects SET repo = ?2, repo_credentials = ?3 WHERE name = ?1",
                params![
                    name,
                    bare,
                    sealer.seal(Secret::RepoCredentials(&name), &cred)
                ],
            )?;
            moved += 1;
        }
    }
    tx.commit()?;
    if moved > 0 {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        name: r.get(0)?,
        repo: r.get(1)?,
        default_branch: r.get(2)?,
        retain_images: r.get(3)?,
        has_webhook_secret: r.get::<_, Option<String>>(4)?.is_some(),
        created_at: parse_ts(&r.get::<_, String>(5)?)?,
        has_repo_credentials: r.get::<_, Option<String>>(6)?.is_some(),
        has_deploy_key: r.get::<_, Option<String>>(7)?.is_some(),
    })
}

const PROJECT_COLS: &str = "name, repo, default_branch, retain_images, webhook_secret, created_at, repo_credentials, deploy_key";

fn get_project(c: &Connection, name: &str) -> Result<Project> {
    c.query_row(
        &format!("SELECT {PROJECT_COLS} FROM projects WHERE name = ?1"),
        [name],
        project_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("project", name))
}

fn env_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Environment> {
    Ok(Environment {
        project_name: r.get(0)?,
        name: r.get(1)?,
        branch: r.get(2)?,
        kind: env_kind(&r.get::<_, String>(3)?),
        created_at: parse_ts(&r.get::<_, String>(4)?)?,
    })
}

/// How a run is named in a conflict: the job and its firing, or its id.
pub(crate) fn run_key(r: &Run) -> String {
    match (&r.job, &r.scheduled_for) {
        (Some(job), Some(at)) => format!(
            "{}/{}/{job}@{}",
            r.project_name,
            r.environment_name,
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => r.id.clone(),
    }
}

fn get_env(c: &Connection, project: &str, env: &str) -> Result<Environment> {
    get_project(c, project)?;
    c.query_row(
        "SELECT project, name, branch, kind, created_at FROM environments WHERE project = ?1 AND name = ?2",
        [project, env],
        env_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("environment", format!("{project}/{env}")))
}

fn deployment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    let data: String = r.get(0)?;
    let active: Option<String> = r.get(1)?;
    let mut d: Deployment = serde_json::from_str(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    d.is_active = active.as_deref() == Some(d.id.as_str());
    d.version = r.get::<_, i64>(2)? as u64;
    Ok(d)
}

const DEPLOYMENT_SELECT: &str = "SELECT d.data, s.active, d.version FROM deployments d \
     LEFT JOIN slots s ON s.project = d.project AND s.environment = d.environment AND s.service = d.service";

fn insert_deployment(c: &Connection, d: &Deployment) -> Result<()> {
    let data = crate::deployment_json(d)?;
    c.execute(
        "INSERT INTO deployments (id, project, environment, service, status, stage, created_at, data, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            d.id,
            d.project_name,
            d.environment_name,
            d.service_name,
            d.status.as_str(),
            d.promotion_stage.as_str(),
            ts(&d.created_at),
            data,
            d.version as i64
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict {
                what: "deployment",
                name: d.id.clone(),
            }
        }
        e => e.into(),
    })?;
    Ok(())
}

/// Compare-and-set: writes `d` only when the stored version is still
/// `d.version`, and bumps it.
fn update_deployment(c: &Connection, d: &Deployment) -> Result<()> {
    let data = crate::deployment_json(d)?;
    let n = c.execute(
        "UPDATE deployments SET status = ?2, stage = ?3, data = ?4, version = version + 1 \
         WHERE id = ?1 AND version = ?5",
        params![
            d.id,
            d.status.as_str(),
            d.promotion_stage.as_str(),
            data,
            d.version as i64
        ],
    )?;
    if n == 0 {
        let found: Option<i64> = c
            .query_row(
                "SELECT version FROM deployments WHERE id = ?1",
                [&d.id],
                |r| r.get(0),
            )
            .optional()?;
        return Err(match found {
            None => StoreError::not_found("deployment", &d.id),
            Some(v) => StoreError::stale(d, v as u64),
        });
    }
    Ok(())
}

const TOKEN_COLS: &str = "name, role, project, created_at, expires_at, last_used_at, revoked_at";

fn token_row(r: &rusqlite::Row) -> rusqlite::Result<TokenInfo> {
    let role: String = r.get(1)?;
    Ok(TokenInfo {
        name: r.get(0)?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown role {role:?}").into(),
            )
        })?,
        project: r.get(2)?,
        created_at: parse_ts(&r.get::<_, String>(3)?)?,
        expires_at: opt_ts(r, 4)?,
        last_used_at: opt_ts(r, 5)?,
        revoked_at: opt_ts(r, 6)?,
    })
}

pub(crate) fn check_token(t: &TokenRecord) -> Result<()> {
    berth_core::access::token_name(&t.info.name).map_err(StoreError::Invalid)?;
    if t.hash.len() != 64 || !t.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::Invalid(
            "a token hash is 64 hex digits (SHA-256)".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
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
        self.call(move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM projects WHERE name = ?1", [&p.name], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(StoreError::Conflict {
                    what: "project",
                    name: p.name,
                });
            }
            tx.execute(
                &format!("INSERT INTO projects ({PROJECT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![p.name, repo, p.default_branch, p.retain_images, sealed, ts(&p.created_at), cred, key],
            )?;
            tx.execute(
                "INSERT INTO environments (project, name, branch, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![p.name, PRODUCTION, p.default_branch, "production", ts(&p.created_at)],
            )?;
            let project = get_project(&tx, &p.name)?;
            tx.commit()?;
            Ok(project)
        })
        .await
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {PROJECT_COLS} FROM projects ORDER BY name"
            ))?;
            let rows = st.query_map([], project_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_project(&self, name: &str) -> Result<Project> {
        let name = name.to_string();
        self.call(move |c| get_project(c, &name)).await
    }

    async fn update_project(&self, name: &str, patch: ProjectPatch) -> Result<Project> {
        let name = name.to_string();
        let sealed = patch
            .webhook_secret
            .as_deref()
            .map(|s| self.sealer.seal(Secret::Webhook(&name), s));
        // A new URL replaces the stored credentials too: with its own, or
        // with none.
        let repo = patch.repo.as_deref().map(|r| {
            let (bare, cred) = split_url_credentials(r.trim());
            (
                bare,
                cred.map(|c| self.sealer.seal(Secret::RepoCredentials(&name), &c)),
            )
        });
        let key = patch
            .deploy_key
            .as_deref()
            .map(|k| (!k.trim().is_empty()).then(|| self.sealer.seal(Secret::DeployKey(&name), k)));
        self.call(move |c| {
            let tx = c.transaction()?;
            get_project(&tx, &name)?;
            if let Some(n) = patch.retain_images {
                tx.execute(
                    "UPDATE projects SET retain_images = ?2 WHERE name = ?1",
                    params![name, n],
                )?;
            }
            if let Some(s) = sealed {
                tx.execute(
                    "UPDATE projects SET webhook_secret = ?2 WHERE name = ?1",
                    params![name, s],
                )?;
            }
            if let Some(b) = patch.default_branch {
                tx.execute(
                    "UPDATE projects SET default_branch = ?2 WHERE name = ?1",
                    params![name, b],
                )?;
            }
            if let Some((r, cred)) = repo {
                tx.execute(
                    "UPDATE projects SET repo = ?2, repo_credentials = ?3 WHERE name = ?1",
                    params![name, r, cred],
                )?;
            }
            if let Some(k) = key {
                tx.execute(
                    "UPDATE projects SET deploy_key = ?2 WHERE name = ?1",
                    params![name, k],
                )?;
            }
            let p = get_project(&tx, &name)?;
            tx.commit()?;
            Ok(p)
        })
        .await
    }

    async fn webhook_secret(&self, project: &str) -> Result<Option<String>> {
        let name = project.to_string();
        let sealed: Option<String> = self
            .call(move |c| {
                get_project(c, &name)?;
                Ok(c.query_row(
                    "SELECT webhook_secret FROM projects WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )?)
            })
            .await?;
        self.sealer
            .open_opt(Secret::Webhook(project), sealed.as_deref())
    }

    async fn repo_access(&self, project: &str) -> Result<RepoAccess> {
        let name = project.to_string();
        let (repo, cred, key): (String, Option<String>, Option<String>) = self
            .call(move |c| {
                get_project(c, &name)?;
                Ok(c.query_row(
                    "SELECT repo, repo_credentials, deploy_key FROM projects WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .await?;
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
        let project = project.to_string();
        self.call(move |c| {
            get_project(c, &project)?;
            let mut st = c.prepare(
                "SELECT project, name, branch, kind, created_at FROM environments WHERE project = ?1 \
                 ORDER BY name <> 'production', name",
            )?;
            let rows = st.query_map([&project], env_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_environment(&self, project: &str, env: &str) -> Result<Environment> {
        let (project, env) = (project.to_string(), env.to_string());
        self.call(move |c| get_env(c, &project, &env)).await
    }

    async fn create_environment(&self, e: Environment) -> Result<Environment> {
        names::environment_name(&e.name).map_err(|err| StoreError::Invalid(err.to_string()))?;
        self.call(move |c| {
            let tx = c.transaction()?;
            get_project(&tx, &e.project_name)?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO environments (project, name, branch, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.project_name, e.name, e.branch, env_kind_str(e.kind), ts(&e.created_at)],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    what: "environment",
                    name: format!("{}/{}", e.project_name, e.name),
                });
            }
            let env = get_env(&tx, &e.project_name, &e.name)?;
            tx.commit()?;
            Ok(env)
        })
        .await
    }

    async fn delete_environment(&self, project: &str, env: &str) -> Result<()> {
        if env == PRODUCTION {
            return Err(StoreError::Invalid(
                "the production environment cannot be deleted".into(),
            ));
        }
        let (project, env) = (project.to_string(), env.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            get_env(&tx, &project, &env)?;
            tx.execute(
                "DELETE FROM slots WHERE project = ?1 AND environment = ?2",
                [&project, &env],
            )?;
            tx.execute(
                "DELETE FROM environments WHERE project = ?1 AND name = ?2",
                [&project, &env],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
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
        let (p, e, k) = (project.to_string(), env.to_string(), key.to_string());
        let shown = (!secret).then(|| value.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            get_env(&tx, &p, &e)?;
            tx.execute(
                "INSERT INTO variables (project, environment, key, value, secret, build, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (project, environment, key) DO UPDATE SET value = excluded.value, secret = excluded.secret, build = excluded.build, updated_at = excluded.updated_at",
                params![p, e, k, stored, secret, build, ts(&at)],
            )?;
            tx.commit()?;
            Ok(Variable {
                key: k,
                value: shown,
                secret,
                build,
                updated_at: at,
            })
        })
        .await
    }

    async fn unset_variable(&self, project: &str, env: &str, key: &str) -> Result<bool> {
        let (p, e, k) = (project.to_string(), env.to_string(), key.to_string());
        self.call(move |c| {
            get_env(c, &p, &e)?;
            let n = c.execute(
                "DELETE FROM variables WHERE project = ?1 AND environment = ?2 AND key = ?3",
                [&p, &e, &k],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_variables(&self, project: &str, env: &str) -> Result<Vec<Variable>> {
        let (p, e) = (project.to_string(), env.to_string());
        self.call(move |c| {
            get_env(c, &p, &e)?;
            let mut st = c.prepare(
                "SELECT key, value, secret, updated_at, build FROM variables WHERE project = ?1 AND environment = ?2 ORDER BY key",
            )?;
            let rows = st.query_map([&p, &e], |r| {
                let secret: bool = r.get(2)?;
                Ok(Variable {
                    key: r.get(0)?,
                    value: if secret { None } else { Some(r.get(1)?) },
                    secret,
                    build: r.get(4)?,
                    updated_at: parse_ts(&r.get::<_, String>(3)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn resolve_variables(&self, project: &str, env: &str) -> Result<Vec<ResolvedVar>> {
        let (p, e) = (project.to_string(), env.to_string());
        let rows: Vec<(String, String, bool, bool)> = self
            .call(move |c| {
                get_env(c, &p, &e)?;
                let mut st = c.prepare(
                    "SELECT key, value, secret, build FROM variables WHERE project = ?1 AND environment = ?2 ORDER BY key",
                )?;
                let rows = st.query_map([&p, &e], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(key, value, secret, build)| {
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
                    build,
                })
            })
            .collect()
    }

    async fn insert_deployment(&self, d: &Deployment) -> Result<()> {
        let d = d.clone();
        self.call(move |c| {
            get_env(c, &d.project_name, &d.environment_name)?;
            insert_deployment(c, &d)
        })
        .await
    }

    async fn get_deployment(&self, id: &str) -> Result<Deployment> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("{DEPLOYMENT_SELECT} WHERE d.id = ?1"),
                [&id],
                deployment_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("deployment", &id))
        })
        .await
    }

    async fn list_deployments(&self, q: &DeploymentQuery) -> Result<Vec<Deployment>> {
        let q = q.clone();
        self.call(move |c| {
            let mut sql = format!("{DEPLOYMENT_SELECT} WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            for (col, v) in [
                ("d.project", &q.project),
                ("d.environment", &q.environment),
                ("d.service", &q.service),
            ] {
                if let Some(v) = v {
                    args.push(v.clone());
                    sql.push_str(&format!(" AND {col} = ?{}", args.len()));
                }
            }
            if q.unfinished {
                sql.push_str(" AND d.status IN ('queued', 'running')");
            }
            sql.push_str(" ORDER BY d.created_at DESC, d.id DESC");
            if let Some(l) = q.limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), deployment_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn save_deployments(
        &self,
        ds: &mut [&mut Deployment],
        activate: Option<Activate>,
    ) -> Result<()> {
        let copies: Vec<Deployment> = ds.iter().map(|d| (**d).clone()).collect();
        self.call(move |c| {
            let tx = c.transaction()?;
            for d in &copies {
                update_deployment(&tx, d)?;
            }
            if let Some(a) = activate {
                tx.execute(
                    "INSERT INTO slots (project, environment, service, active) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (project, environment, service) DO UPDATE SET active = excluded.active",
                    params![a.slot.project, a.slot.environment, a.slot.service, a.deployment_id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        for d in ds.iter_mut() {
            d.version += 1;
        }
        Ok(())
    }

    async fn active_deployment(&self, slot: &Slot) -> Result<Option<Deployment>> {
        let slot = slot.clone();
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "{DEPLOYMENT_SELECT} WHERE s.project = ?1 AND s.environment = ?2 AND s.service = ?3 AND d.id = s.active"
                ),
                [&slot.project, &slot.environment, &slot.service],
                deployment_row,
            )
            .optional()?)
        })
        .await
    }

    async fn append_logs(&self, lines: &[NewLogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let lines = lines.to_vec();
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO logs (deployment_id, ts, stream, step, text) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for l in &lines {
                    st.execute(params![
                        l.deployment_id,
                        ts(&l.ts),
                        l.stream.as_str(),
                        l.step.map(|s| s.as_str()),
                        l.text
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn read_logs(&self, q: &LogQuery) -> Result<Vec<LogLine>> {
        let q = q.clone();
        self.call(move |c| {
            let mut sql = String::from(
                "SELECT l.seq, l.ts, l.deployment_id, d.project, d.service, d.environment, l.stream, l.step, l.text \
                 FROM logs l JOIN deployments d ON d.id = l.deployment_id WHERE 1=1",
            );
            let mut args: Vec<String> = Vec::new();
            let mut push = |sql: &mut String, cond: &str, v: String| {
                args.push(v);
                sql.push_str(&cond.replace('?', &format!("?{}", args.len())));
            };
            if let Some(id) = &q.deployment_id {
                push(&mut sql, " AND l.deployment_id = ?", id.clone());
            }
            if let Some(s) = &q.slot {
                push(&mut sql, " AND d.project = ?", s.project.clone());
                push(&mut sql, " AND d.environment = ?", s.environment.clone());
                push(&mut sql, " AND d.service = ?", s.service.clone());
            }
            if let Some(step) = q.step {
                push(&mut sql, " AND l.step = ?", step.as_str().to_string());
            }
            if let Some(after) = q.after_seq {
                sql.push_str(&format!(" AND l.seq > {after}"));
            }
            if let Some(since) = q.since {
                push(&mut sql, " AND l.ts >= ?", ts(&since));
            }
            if !q.streams.is_empty() {
                let list: Vec<String> = q.streams.iter().map(|s| format!("'{}'", s.as_str())).collect();
                sql.push_str(&format!(" AND l.stream IN ({})", list.join(",")));
            }
            let tail = q.tail && q.limit.is_some();
            sql.push_str(if tail { " ORDER BY l.seq DESC" } else { " ORDER BY l.seq" });
            if let Some(l) = q.limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok(LogLine {
                    seq: r.get(0)?,
                    ts: parse_ts(&r.get::<_, String>(1)?)?,
                    deployment_id: r.get(2)?,
                    project_name: r.get(3)?,
                    service_name: r.get(4)?,
                    environment_name: r.get(5)?,
                    sha: None,
                    stream: LogStream::parse(&r.get::<_, String>(6)?).unwrap_or(LogStream::Berth),
                    step: r.get::<_, Option<String>>(7)?.and_then(|s| StepName::parse(&s)),
                    text: r.get(8)?,
                })
            })?;
            let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            // The short SHA, read once per deployment rather than per line.
            let mut shas: std::collections::HashMap<String, Option<String>> = Default::default();
            for line in out.iter_mut() {
                if !shas.contains_key(&line.deployment_id) {
                    let data: Option<String> = c
                        .query_row("SELECT data FROM deployments WHERE id = ?1", [&line.deployment_id], |r| r.get(0))
                        .optional()?;
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
        })
        .await
    }

    async fn put_external_route(&self, r: &ExternalRoute) -> Result<()> {
        let r = r.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO external_routes (hostname, upstream, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (hostname) DO UPDATE SET upstream = excluded.upstream",
                params![r.hostname, r.upstream, ts(&r.created_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_external_routes(&self) -> Result<Vec<ExternalRoute>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT hostname, upstream, created_at FROM external_routes ORDER BY hostname",
            )?;
            let rows = st.query_map([], |r| {
                Ok(ExternalRoute {
                    hostname: r.get(0)?,
                    upstream: r.get(1)?,
                    created_at: parse_ts(&r.get::<_, String>(2)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn remove_external_route(&self, hostname: &str) -> Result<bool> {
        let h = hostname.to_string();
        self.call(move |c| {
            Ok(c.execute("DELETE FROM external_routes WHERE hostname = ?1", [&h])? > 0)
        })
        .await
    }

    async fn record_delivery(
        &self,
        project: &str,
        delivery_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let (p, id) = (project.to_string(), delivery_id.to_string());
        self.call(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, project, received_at) VALUES (?1, ?2, ?3)",
                params![id, p, ts(&at)],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_manifest(
        &self,
        image: &str,
        entries: &[ManifestEntry],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let data = serde_json::to_string(entries).map_err(backend)?;
        let image = image.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT INTO manifests (image, data, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (image) DO UPDATE SET data = excluded.data",
                params![image, data, ts(&at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_manifest(&self, image: &str) -> Result<Option<Vec<ManifestEntry>>> {
        let image = image.to_string();
        let data: Option<String> = self
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT data FROM manifests WHERE image = ?1",
                    [&image],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        data.map(|d| serde_json::from_str(&d).map_err(backend))
            .transpose()
    }

    async fn prune_logs(
        &self,
        older_than: DateTime<Utc>,
        max_lines_per_project: u64,
    ) -> Result<u64> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut removed = tx.execute("DELETE FROM logs WHERE ts < ?1", [ts(&older_than)])? as u64;
            let projects: Vec<String> = {
                let mut st = tx.prepare("SELECT name FROM projects")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for p in projects {
                // The seq below which this project's oldest lines go.
                let cut: Option<i64> = tx
                    .query_row(
                        "SELECT l.seq FROM logs l JOIN deployments d ON d.id = l.deployment_id \
                         WHERE d.project = ?1 ORDER BY l.seq DESC LIMIT 1 OFFSET ?2",
                        params![p, max_lines_per_project as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(cut) = cut {
                    removed += tx.execute(
                        "DELETE FROM logs WHERE seq <= ?1 AND deployment_id IN (SELECT id FROM deployments WHERE project = ?2)",
                        params![cut, p],
                    )? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn add_domain(&self, d: &Domain) -> Result<Domain> {
        let d = d.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            get_env(&tx, &d.project_name, &d.environment_name)?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO domains (hostname, project, environment, service, token, target, verified_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)",
                params![d.hostname, d.project_name, d.environment_name, d.service_name, d.verification.value, d.target, ts(&d.created_at)],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict { what: "domain", name: d.hostname });
            }
            tx.commit()?;
            Ok(d)
        })
        .await
    }

    async fn list_domains(&self, project: Option<&str>) -> Result<Vec<Domain>> {
        let project = project.map(String::from);
        self.call(move |c| {
            let mut sql = String::from(
                "SELECT d.hostname, d.project, d.environment, d.service, d.token, d.target, d.verified_at, d.created_at, \
                 c.state, c.not_after, c.error, c.next_attempt_at, c.attempts \
                 FROM domains d LEFT JOIN certificates c ON c.hostname = d.hostname",
            );
            if project.is_some() {
                sql.push_str(" WHERE d.project = ?1");
            }
            sql.push_str(" ORDER BY d.hostname");
            let mut st = c.prepare(&sql)?;
            let map = |r: &rusqlite::Row<'_>| {
                let hostname: String = r.get(0)?;
                let verified_at = r.get::<_, Option<String>>(6)?.map(|t| parse_ts(&t)).transpose()?;
                Ok(Domain {
                    verification: DomainVerification {
                        record_type: "TXT".into(),
                        name: berth_core::model::verification_name(&hostname),
                        value: r.get(4)?,
                    },
                    hostname,
                    project_name: r.get(1)?,
                    environment_name: r.get(2)?,
                    service_name: r.get(3)?,
                    target: r.get(5)?,
                    verified: verified_at.is_some(),
                    verified_at,
                    created_at: parse_ts(&r.get::<_, String>(7)?)?,
                    certificate: CertificateStatus {
                        state: r
                            .get::<_, Option<String>>(8)?
                            .and_then(|s| CertState::parse(&s))
                            .unwrap_or_default(),
                        not_after: opt_ts(r, 9)?,
                        error: r.get(10)?,
                        next_attempt_at: opt_ts(r, 11)?,
                        attempts: r.get::<_, Option<u32>>(12)?.unwrap_or(0),
                    },
                })
            };
            let rows = match &project {
                Some(p) => st.query_map([p], map)?.collect::<rusqlite::Result<Vec<_>>>()?,
                None => st.query_map([], map)?.collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(rows)
        })
        .await
    }

    async fn set_domain_verified(&self, hostname: &str, at: DateTime<Utc>) -> Result<()> {
        let h = hostname.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE domains SET verified_at = ?2 WHERE hostname = ?1",
                params![h, ts(&at)],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("domain", h));
            }
            Ok(())
        })
        .await
    }

    async fn remove_domain(&self, hostname: &str) -> Result<bool> {
        let h = hostname.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM domains WHERE hostname = ?1", [&h])? > 0))
            .await
    }
    async fn put_certificate(&self, cert: &CertRecord) -> Result<()> {
        let sealed = cert
            .key_pem
            .as_ref()
            .map(|k| self.sealer.seal(Secret::TlsKey(&cert.hostname), k));
        let cert = cert.clone();
        self.call(move |c| {
            c.execute(
                &format!(
                    "INSERT OR REPLACE INTO certificates ({CERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    cert.hostname,
                    cert.state.as_str(),
                    cert.chain_pem,
                    sealed,
                    cert.not_after.as_ref().map(ts),
                    cert.error,
                    i64::from(cert.attempts),
                    cert.next_attempt_at.as_ref().map(ts),
                    ts(&cert.updated_at),
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_certificate(&self, hostname: &str) -> Result<Option<CertRecord>> {
        let h = hostname.to_string();
        let row = self
            .call(move |c| {
                Ok(c.query_row(
                    &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE hostname = ?1"),
                    [&h],
                    cert_row,
                )
                .optional()?)
            })
            .await?;
        row.map(|r| self.open_cert(r)).transpose()
    }

    async fn list_certificates(&self) -> Result<Vec<CertRecord>> {
        let rows = self
            .call(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {CERT_COLUMNS} FROM certificates ORDER BY hostname"
                ))?;
                let rows = st
                    .query_map([], cert_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter().map(|r| self.open_cert(r)).collect()
    }

    async fn remove_certificate(&self, hostname: &str) -> Result<bool> {
        let h = hostname.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM certificates WHERE hostname = ?1", [&h])? > 0))
            .await
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        let d = directory.to_string();
        let sealed: Option<String> = self
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT credentials_sealed FROM acme_accounts WHERE directory = ?1",
                    [&d],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        self.sealer
            .open_opt(Secret::AcmeAccount(directory), sealed.as_deref())
    }

    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<()> {
        let sealed = self
            .sealer
            .seal(Secret::AcmeAccount(directory), credentials);
        let d = directory.to_string();
        let now = ts(&Utc::now());
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO acme_accounts (directory, credentials_sealed, created_at) VALUES (?1, ?2, ?3)",
                params![d, sealed, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_acme_directories(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT directory FROM acme_accounts ORDER BY directory")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn list_manifest_images(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT image FROM manifests ORDER BY image")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn list_deliveries(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT project, delivery_id, received_at FROM webhook_deliveries ORDER BY received_at, delivery_id",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, parse_ts(&r.get::<_, String>(2)?)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn insert_run(&self, r: &Run) -> Result<()> {
        let r = r.clone();
        self.call(move |c| {
            get_env(c, &r.project_name, &r.environment_name)?;
            c.execute(
                "INSERT INTO runs (id, project, environment, service, job, scheduled_for, status, created_at, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.id,
                    r.project_name,
                    r.environment_name,
                    r.service_name,
                    r.job,
                    r.scheduled_for.as_ref().map(ts),
                    r.status.as_str(),
                    ts(&r.created_at),
                    crate::run_json(&r)?
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict {
                        what: "run",
                        name: run_key(&r),
                    }
                }
                e => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    async fn save_run(&self, r: &Run) -> Result<()> {
        let r = r.clone();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE runs SET status = ?2, data = ?3 WHERE id = ?1",
                params![r.id, r.status.as_str(), crate::run_json(&r)?],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("run", &r.id));
            }
            Ok(())
        })
        .await
    }

    async fn get_run(&self, id: &str) -> Result<Run> {
        let id = id.to_string();
        self.call(move |c| {
            let data: Option<String> = c
                .query_row("SELECT data FROM runs WHERE id = ?1", [&id], |r| r.get(0))
                .optional()?;
            crate::run_from_json(&data.ok_or_else(|| StoreError::not_found("run", &id))?)
        })
        .await
    }

    async fn list_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let q = q.clone();
        self.call(move |c| {
            let mut sql = String::from("SELECT data FROM runs WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            for (col, v) in [
                ("project", &q.project),
                ("environment", &q.environment),
                ("job", &q.job),
            ] {
                if let Some(v) = v {
                    args.push(v.clone());
                    sql.push_str(&format!(" AND {col} = ?{}", args.len()));
                }
            }
            if q.jobs_only {
                sql.push_str(" AND job IS NOT NULL");
            }
            if q.unfinished {
                sql.push_str(" AND status = 'running'");
            }
            if let Some(t) = &q.created_before {
                args.push(ts(t));
                sql.push_str(&format!(" AND created_at < ?{}", args.len()));
            }
            sql.push_str(" ORDER BY created_at DESC, id DESC");
            if let Some(l) = q.limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|d| crate::run_from_json(&d?))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    // --- tokens, audit log, console sessions ---
    async fn create_token(&self, t: &TokenRecord) -> Result<()> {
        check_token(t)?;
        let t = t.clone();
        self.call(move |c| {
            let i = &t.info;
            c.execute(
                "INSERT INTO api_tokens (name, hash, role, project, created_at, expires_at, last_used_at, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    i.name,
                    t.hash,
                    i.role.as_str(),
                    i.project,
                    ts(&i.created_at),
                    i.expires_at.as_ref().map(ts),
                    i.last_used_at.as_ref().map(ts),
                    i.revoked_at.as_ref().map(ts)
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict {
                        what: "token",
                        name: i.name.clone(),
                    }
                }
                e => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM api_tokens ORDER BY name"
            ))?;
            let rows = st.query_map([], token_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn token_records(&self) -> Result<Vec<TokenRecord>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TOKEN_COLS}, hash FROM api_tokens ORDER BY name"
            ))?;
            let rows = st.query_map([], |r| {
                Ok(TokenRecord {
                    info: token_row(r)?,
                    hash: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let hash = hash.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE hash = ?1"),
                [&hash],
                token_row,
            )
            .optional()?)
        })
        .await
    }

    async fn get_token(&self, name: &str) -> Result<TokenInfo> {
        let name = name.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE name = ?1"),
                [&name],
                token_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("token", &name))
        })
        .await
    }

    async fn revoke_token(&self, name: &str, at: DateTime<Utc>) -> Result<TokenInfo> {
        let name = name.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE name = ?1",
                params![name, ts(&at)],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("token", &name));
            }
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE name = ?1"),
                [&name],
                token_row,
            )?)
        })
        .await
    }

    async fn touch_token(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        let name = name.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE name = ?1",
                params![name, ts(&at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        let e = e.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit_log (at, token, action, target, project, source_ip) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    ts(&e.at),
                    e.token,
                    e.action,
                    e.target,
                    e.project,
                    e.source_ip
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let q = q.clone();
        self.call(move |c| {
            let mut sql =
                String::from("SELECT at, token, action, target, project, source_ip FROM audit_log");
            if q.project.is_some() {
                sql.push_str(" WHERE project = ?1");
            }
            sql.push_str(" ORDER BY seq DESC");
            if let Some(l) = q.limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            let mut st = c.prepare(&sql)?;
            let args: Vec<String> = q.project.into_iter().collect();
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok(AuditEntry {
                    at: parse_ts(&r.get::<_, String>(0)?)?,
                    token: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    project: r.get(4)?,
                    source_ip: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_session(&self, s: &SessionRecord) -> Result<()> {
        let s = s.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?1",
                [ts(&s.created_at)],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO console_sessions (id_hash, token, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![s.id_hash, s.token, ts(&s.created_at), ts(&s.expires_at)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let id_hash = id_hash.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id_hash, token, created_at, expires_at FROM console_sessions \
                 WHERE id_hash = ?1 AND expires_at > ?2",
                params![id_hash, ts(&now)],
                |r| {
                    Ok(SessionRecord {
                        id_hash: r.get(0)?,
                        token: r.get(1)?,
                        created_at: parse_ts(&r.get::<_, String>(2)?)?,
                        expires_at: parse_ts(&r.get::<_, String>(3)?)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn remove_session(&self, id_hash: &str) -> Result<()> {
        let id_hash = id_hash.to_string();
        self.call(move |c| {
            c.execute(
                "DELETE FROM console_sessions WHERE id_hash = ?1",
                [&id_hash],
            )?;
            Ok(())
        })
        .await
    }

    // --- volume backups ---
    async fn insert_backup(&self, b: &Backup) -> Result<()> {
        let b = b.clone();
        self.call(move |c| {
            get_project(c, &b.project_name)?;
            c.execute(
                "INSERT INTO backups (id, project, environment, volume, status, created_at, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    b.id,
                    b.project_name,
                    b.environment_name,
                    b.volume,
                    b.status.as_str(),
                    ts(&b.created_at),
                    crate::backup_json(&b)?
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict {
                        what: "backup",
                        name: b.id.clone(),
                    }
                }
                e => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    async fn save_backup(&self, b: &Backup) -> Result<()> {
        let b = b.clone();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE backups SET status = ?2, data = ?3 WHERE id = ?1",
                params![b.id, b.status.as_str(), crate::backup_json(&b)?],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("backup", &b.id));
            }
            Ok(())
        })
        .await
    }

    async fn get_backup(&self, id: &str) -> Result<Backup> {
        let id = id.to_string();
        self.call(move |c| {
            let data: Option<String> = c
                .query_row("SELECT data FROM backups WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?;
            crate::backup_from_json(&data.ok_or_else(|| StoreError::not_found("backup", &id))?)
        })
        .await
    }

    async fn list_backups(
        &self,
        project: &str,
        environment: Option<&str>,
        volume: Option<&str>,
    ) -> Result<Vec<Backup>> {
        let mut args = vec![project.to_string()];
        let mut sql = String::from("SELECT data FROM backups WHERE project = ?1");
        for (col, v) in [("environment", environment), ("volume", volume)] {
            if let Some(v) = v {
                args.push(v.to_string());
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        self.call(move |c| {
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|d| crate::backup_from_json(&d?))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    async fn delete_backup(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM backups WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    // --- notifications ---
    async fn add_notification(&self, n: &Notification, target: &NotifyTarget) -> Result<()> {
        let n = n.clone();
        let url = self.sealer.seal(Secret::NotifyUrl(&n.id), &target.url);
        let secret = self
            .sealer
            .seal(Secret::NotifySecret(&n.id), &target.secret);
        self.call(move |c| {
            get_project(c, &n.project_name)?;
            c.execute(
                "INSERT INTO notifications (id, project, url, secret, created_at, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    n.id,
                    n.project_name,
                    url,
                    secret,
                    ts(&n.created_at),
                    crate::to_json(&n)?
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict {
                        what: "notification",
                        name: n.id.clone(),
                    }
                }
                e => e.into(),
            })?;
            Ok(())
        })
        .await
    }

    async fn list_notifications(&self, project: Option<&str>) -> Result<Vec<Notification>> {
        let project = project.map(str::to_string);
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT data FROM notifications WHERE ?1 IS NULL OR project = ?1 \
                 ORDER BY created_at, id",
            )?;
            let rows = st.query_map([&project], |r| r.get::<_, String>(0))?;
            rows.map(|d| crate::from_json("notification", &d?))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    async fn remove_notification(&self, project: &str, id: &str) -> Result<bool> {
        let (project, id) = (project.to_string(), id.to_string());
        self.call(move |c| {
            let n = c.execute(
                "DELETE FROM notifications WHERE project = ?1 AND id = ?2",
                [&project, &id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn notification_target(&self, id: &str) -> Result<NotifyTarget> {
        let id = id.to_string();
        let sealer = self.sealer.clone();
        self.call(move |c| {
            let (url, secret): (String, String) = c
                .query_row(
                    "SELECT url, secret FROM notifications WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found("notification", &id))?;
            Ok(NotifyTarget {
                url: sealer.open(Secret::NotifyUrl(&id), &url)?,
                secret: sealer.open(Secret::NotifySecret(&id), &secret)?,
            })
        })
        .await
    }

    async fn queue_delivery(&self, d: &Delivery) -> Result<bool> {
        let d = d.clone();
        self.call(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO notification_deliveries \
                 (id, notification, deployment, event, status, next_attempt_at, created_at, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    d.id,
                    d.notification_id,
                    d.deployment_id,
                    d.event.as_str(),
                    d.status.as_str(),
                    d.next_attempt_at.as_ref().map(ts),
                    ts(&d.created_at),
                    crate::to_json(&d)?
                ],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT data FROM notification_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= ?1 \
                 ORDER BY next_attempt_at, id LIMIT ?2",
            )?;
            let rows = st.query_map(params![ts(&now), limit], |r| r.get::<_, String>(0))?;
            rows.map(|d| crate::from_json("delivery", &d?))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    async fn save_delivery(&self, d: &Delivery) -> Result<()> {
        let d = d.clone();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE notification_deliveries SET status = ?2, next_attempt_at = ?3, data = ?4 \
                 WHERE id = ?1",
                params![
                    d.id,
                    d.status.as_str(),
                    d.next_attempt_at.as_ref().map(ts),
                    crate::to_json(&d)?
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("delivery", &d.id));
            }
            Ok(())
        })
        .await
    }

    async fn notification_deliveries(
        &self,
        notification: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let notification = notification.to_string();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT data FROM notification_deliveries WHERE notification = ?1 \
                 ORDER BY created_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![notification, limit], |r| r.get::<_, String>(0))?;
            rows.map(|d| crate::from_json("delivery", &d?))
                .collect::<Result<Vec<_>>>()
        })
        .await
    }

    // --- maintenance ---
    async fn set_maintenance(&self, m: &Maintenance) -> Result<()> {
        let m = m.clone();
        self.call(move |c| {
            get_env(c, &m.project_name, &m.environment_name)?;
            c.execute(
                "INSERT OR IGNORE INTO maintenance (project, environment, service, since) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    m.project_name,
                    m.environment_name,
                    m.service_name.as_deref().unwrap_or(""),
                    ts(&m.since)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn clear_maintenance(
        &self,
        project: &str,
        environment: &str,
        service: Option<&str>,
    ) -> Result<u64> {
        let (project, env) = (project.to_string(), environment.to_string());
        let service = service.map(str::to_string);
        self.call(move |c| {
            get_env(c, &project, &env)?;
            let n = c.execute(
                "DELETE FROM maintenance WHERE project = ?1 AND environment = ?2 \
                 AND (?3 IS NULL OR service = ?3)",
                params![project, env, service],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_maintenance(&self, project: Option<&str>) -> Result<Vec<Maintenance>> {
        let project = project.map(str::to_string);
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT project, environment, service, since FROM maintenance \
                 WHERE ?1 IS NULL OR project = ?1 ORDER BY project, environment, service",
            )?;
            let rows = st.query_map([&project], |r| {
                let service: String = r.get(2)?;
                Ok(Maintenance {
                    project_name: r.get(0)?,
                    environment_name: r.get(1)?,
                    service_name: (!service.is_empty()).then_some(service),
                    since: parse_ts(&r.get::<_, String>(3)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    // --- copy-store ---
    async fn session_records(&self, now: DateTime<Utc>) -> Result<Vec<SessionRecord>> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id_hash, token, created_at, expires_at FROM console_sessions \
                 WHERE expires_at > ?1 ORDER BY created_at, id_hash",
            )?;
            let rows = st.query_map([ts(&now)], |r| {
                Ok(SessionRecord {
                    id_hash: r.get(0)?,
                    token: r.get(1)?,
                    created_at: parse_ts(&r.get::<_, String>(2)?)?,
                    expires_at: parse_ts(&r.get::<_, String>(3)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    // --- certificates: DNS-01 keys, followers ---
    async fn certificates_stamp(&self) -> Result<String> {
        self.call(|c| {
            let (n, last): (i64, Option<String>) = c.query_row(
                "SELECT COUNT(*), MAX(updated_at) FROM certificates",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(format!("{n}/{}", last.unwrap_or_default()))
        })
        .await
    }

    async fn dns_update_key(&self, server: &str) -> Result<Option<String>> {
        let s = server.to_string();
        let sealed: Option<String> = self
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT key_sealed FROM dns_update_keys WHERE server = ?1",
                    [&s],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        self.sealer
            .open_opt(Secret::DnsUpdateKey(server), sealed.as_deref())
    }

    async fn put_dns_update_key(&self, server: &str, key: &str) -> Result<()> {
        let sealed = self.sealer.seal(Secret::DnsUpdateKey(server), key);
        let s = server.to_string();
        let now = ts(&Utc::now());
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO dns_update_keys (server, key_sealed, created_at) VALUES (?1, ?2, ?3)",
                params![s, sealed, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_dns_update_servers(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT server FROM dns_update_keys ORDER BY server")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    // --- charts: per-minute traffic rollup ---
    async fn put_metric_minutes(&self, rows: &[MetricMinute]) -> Result<()> {
        let rows = rows.to_vec();
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare(
                    "INSERT INTO metric_minutes (deployment_id, project, environment, service, \
                     minute, requests, errors, p95_ms, member, latency) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                     ON CONFLICT (deployment_id, minute, member) DO UPDATE SET \
                     requests = excluded.requests, errors = excluded.errors, \
                     p95_ms = excluded.p95_ms, latency = excluded.latency",
                )?;
                for r in &rows {
                    st.execute(params![
                        r.deployment_id,
                        r.project_name,
                        r.environment_name,
                        r.service_name,
                        r.minute.timestamp(),
                        r.requests as i64,
                        r.errors as i64,
                        r.p95_ms,
                        r.member,
                        crate::rollup::encode_latency(&r.latency),
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_metric_minutes(
        &self,
        project: &str,
        environment: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<MetricMinute>> {
        let (project, env, service) = (
            project.to_string(),
            environment.to_string(),
            service.to_string(),
        );
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT deployment_id, project, environment, service, minute, requests, errors, \
                 p95_ms, member, latency FROM metric_minutes WHERE project = ?1 \
                 AND environment = ?2 AND service = ?3 AND minute >= ?4 \
                 ORDER BY minute, deployment_id, member",
            )?;
            let rows = st.query_map(params![project, env, service, since.timestamp()], |r| {
                Ok(MetricMinute {
                    deployment_id: r.get(0)?,
                    project_name: r.get(1)?,
                    environment_name: r.get(2)?,
                    service_name: r.get(3)?,
                    minute: DateTime::from_timestamp(r.get(4)?, 0).unwrap_or_default(),
                    requests: r.get::<_, i64>(5)?.max(0) as u64,
                    errors: r.get::<_, i64>(6)?.max(0) as u64,
                    p95_ms: r.get(7)?,
                    member: r.get(8)?,
                    latency: crate::rollup::decode_latency(r.get(9)?),
                })
            })?;
            let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(crate::rollup::merge_members(rows))
        })
        .await
    }

    async fn prune_metric_minutes(&self, before: DateTime<Utc>) -> Result<u64> {
        self.call(move |c| {
            let n = c.execute(
                "DELETE FROM metric_minutes WHERE minute < ?1",
                [before.timestamp()],
            )?;
            Ok(n as u64)
        })
        .await
    }

    // --- pushed repositories, cancel requests (cluster) ---
    async fn pushed_repo_version(&self, project: &str) -> Result<u64> {
        let p = project.to_string();
        self.call(move |c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT version FROM pushed_repos WHERE project = ?1",
                    [&p],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(v.unwrap_or(0) as u64)
        })
        .await
    }

    async fn pushed_repo(&self, project: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let p = project.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT version, bundle FROM pushed_repos WHERE project = ?1",
                [&p],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn put_pushed_repo(
        &self,
        project: &str,
        expected: u64,
        bundle: &[u8],
    ) -> Result<Option<u64>> {
        let p = project.to_string();
        let bundle = bundle.to_vec();
        let now = ts(&Utc::now());
        self.call(move |c| {
            let tx = c.transaction()?;
            let known: Option<i64> = tx
                .query_row("SELECT 1 FROM projects WHERE name = ?1", [&p], |r| r.get(0))
                .optional()?;
            if known.is_none() {
                return Err(StoreError::not_found("project", p));
            }
            let cur: i64 = tx
                .query_row(
                    "SELECT version FROM pushed_repos WHERE project = ?1",
                    [&p],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if cur as u64 != expected {
                return Ok(None);
            }
            let next = cur + 1;
            tx.execute(
                "INSERT INTO pushed_repos (project, version, bundle, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (project) DO UPDATE SET version = excluded.version, bundle = excluded.bundle, updated_at = excluded.updated_at",
                params![p, next, bundle, now],
            )?;
            tx.commit()?;
            Ok(Some(next as u64))
        })
        .await
    }

    async fn pushed_repo_projects(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT project FROM pushed_repos ORDER BY project")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn request_cancel(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        let now = ts(&Utc::now());
        self.call(move |c| {
            let known: Option<i64> = c
                .query_row("SELECT 1 FROM deployments WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?;
            if known.is_none() {
                return Err(StoreError::not_found("deployment", id));
            }
            c.execute(
                "INSERT OR IGNORE INTO cancel_requests (deployment_id, requested_at) VALUES (?1, ?2)",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn cancel_requests(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT deployment_id FROM cancel_requests ORDER BY requested_at, deployment_id",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn clear_cancel_request(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute(
                "DELETE FROM cancel_requests WHERE deployment_id = ?1",
                [&id],
            )?;
            Ok(())
        })
        .await
    }
}

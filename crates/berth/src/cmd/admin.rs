//! `berth admin`: operations on the store itself, run where the store is
//! reachable (not through the API).

use anyhow::{bail, Context};
use berth_store::{Cipher, StoreUrl};
use clap::{Args, Subcommand};
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Copy everything (projects, environments, variables and secrets,
    /// deployments and their logs, domains, certificates, routes) from one
    /// store to another, e.g. from SQLite to PostgreSQL. Stop the server
    /// first.
    CopyStore(CopyStoreArgs),
}

#[derive(Args, Debug)]
pub struct CopyStoreArgs {
    /// The store to read: sqlite://<path> or postgres://user:pass@host:port/db.
    #[arg(long)]
    from: String,
    /// The store to write (created or migrated as needed).
    #[arg(long)]
    to: String,
    /// Copy into a target that already holds data (its projects are kept).
    #[arg(long)]
    force: bool,
    /// The master key sealing secrets (base64 of 32 bytes) [default: the
    /// master.key beside a sqlite:// source, else <data-dir>/master.key].
    #[arg(long, env = "BERTH_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
}

pub async fn run(cmd: AdminCmd, data_dir: Option<&Path>, json: bool) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::CopyStore(a) => copy_store(a, data_dir, json).await,
    }
}

async fn copy_store(a: CopyStoreArgs, data_dir: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let from = StoreUrl::parse(&a.from).context("--from")?;
    let to = StoreUrl::parse(&a.to).context("--to")?;
    if from == to {
        bail!("--from and --to are the same store");
    }
    if let StoreUrl::Sqlite(p) = &from {
        if !p.is_file() {
            bail!("--from: no SQLite database at {}", p.display());
        }
    }
    // The key is never created here: a new one would open nothing.
    let cipher = match a.master_key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => Cipher::load(Path::new("."), Some(k))?,
        None => {
            let dir = match (&from, data_dir) {
                (StoreUrl::Sqlite(p), _) => p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
                (_, Some(d)) => d.to_path_buf(),
                (_, None) => bail!("give --master-key (the key the servers use)"),
            };
            if !dir.join("master.key").is_file() {
                bail!(
                    "no master key: {} does not exist; give --master-key",
                    dir.join("master.key").display()
                );
            }
            Cipher::load(&dir, None)?
        }
    };
    let source = from
        .open(cipher.clone())
        .await
        .with_context(|| format!("cannot open {}", from.describe()))?;
    let target = to
        .open(cipher)
        .await
        .with_context(|| format!("cannot open {}", to.describe()))?;
    let report = berth_store::copy::copy_store(&*source, &*target, a.force).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "from": from.describe(),
                "to": to.describe(),
                "projects": report.projects,
                "environments": report.environments,
                "variables": report.variables,
                "deployments": report.deployments,
                "logLines": report.log_lines,
                "domains": report.domains,
                "certificates": report.certificates,
                "acmeAccounts": report.acme_accounts,
                "routes": report.routes,
                "manifests": report.manifests,
                "webhookDeliveries": report.deliveries,
                "tokens": report.tokens,
                "auditEntries": report.audit_entries,
                "runs": report.runs,
                "backups": report.backups,
                "notifications": report.notifications,
                "notificationDeliveries": report.notification_deliveries,
                "sessions": report.sessions,
                "kept": report.kept,
            })
        );
    } else {
        println!("copied {} -> {}: {report}", from.describe(), to.describe());
    }
    Ok(())
}

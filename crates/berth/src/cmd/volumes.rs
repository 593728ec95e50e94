//! `berth volumes list|backup|backups|restore`: persistent volumes of a
//! project and their backups.
//!
//! `backup` exits non-zero when the backup failed (its archive could not be
//! written or read back), printing the reason; `restore` prints the backup
//! that keeps the content it replaced.

use super::Ctx;
use berth_core::volumes::{Backup, BackupStatus};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum VolumesCmd {
    /// List a project's volumes (of one environment with --env).
    List {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Back a volume up: a compressed archive with its sha256 checksum.
    Backup {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env")]
        environment: Option<String>,
        /// The volume's name in berth.toml.
        name: String,
    },
    /// List a volume's backups, newest first.
    Backups {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env")]
        environment: Option<String>,
        name: String,
    },
    /// Put a backup back: stops the instances that mount the volume,
    /// keeps the current content as a new backup, restores, starts them.
    Restore {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env")]
        environment: Option<String>,
        name: String,
        backup_id: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: VolumesCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        VolumesCmd::List {
            project,
            environment,
        } => {
            let reply = c.list_volumes(&project, environment).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let volumes = reply.parse()?;
            let mut out = String::from("NAME  ENVIRONMENT  MOUNTED BY  ENGINE VOLUME");
            for v in volumes {
                let mounts: Vec<String> = v
                    .mounts
                    .iter()
                    .map(|m| format!("{}:{}", m.service_name, m.path))
                    .collect();
                out.push_str(&format!(
                    "\n{}  {}  {}  {}",
                    v.name,
                    v.environment_name,
                    if mounts.is_empty() {
                        "-".to_string()
                    } else {
                        mounts.join(",")
                    },
                    v.engine_name
                ));
            }
            crate::output::emitln(&out);
            Ok(())
        }
        VolumesCmd::Backup {
            project,
            environment,
            name,
        } => {
            let reply = c.backup_volume(&project, environment, &name).await?;
            let b = reply.parse()?;
            if ctx.json {
                ctx.print_json(&reply)?;
            } else if b.status == BackupStatus::Succeeded {
                crate::output::emitln(&format!(
                    "backup {} of volume {}: {} bytes, {}",
                    b.id,
                    b.volume,
                    b.size_bytes.unwrap_or(0),
                    b.checksum.as_deref().unwrap_or("")
                ));
            }
            if b.status != BackupStatus::Succeeded {
                anyhow::bail!(
                    "backup {} of volume {} failed: {}",
                    b.id,
                    b.volume,
                    b.error.as_deref().unwrap_or("unknown reason")
                );
            }
            Ok(())
        }
        VolumesCmd::Backups {
            project,
            environment,
            name,
        } => {
            let reply = c.volume_backups(&project, environment, &name).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            crate::output::emitln(&backup_table(&reply.parse()?));
            Ok(())
        }
        VolumesCmd::Restore {
            project,
            environment,
            name,
            backup_id,
        } => {
            let reply = c
                .restore_volume(&project, environment, &name, &backup_id)
                .await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let v = reply.parse()?;
            crate::output::emitln(&format!(
                "volume {name} restored from backup {backup_id}; its previous content is backup {}",
                v["previous"]["id"].as_str().unwrap_or("?")
            ));
            Ok(())
        }
    }
}

/// `ID  STATUS  SIZE  CHECKSUM  CREATED` lines.
fn backup_table(backups: &[Backup]) -> String {
    let mut out = String::from("ID  STATUS  SIZE  CHECKSUM  CREATED  TRIGGER");
    for b in backups {
        let status = match (&b.status, &b.error) {
            (BackupStatus::Failed, Some(e)) => format!("failed ({e})"),
            (s, _) => s.to_string(),
        };
        out.push_str(&format!(
            "\n{}  {}  {}  {}  {}  {}",
            b.id,
            status,
            b.size_bytes.map(|n| n.to_string()).unwrap_or("-".into()),
            b.checksum.as_deref().unwrap_or("-"),
            b.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            serde_json::to_value(b.trigger)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ));
    }
    out
}

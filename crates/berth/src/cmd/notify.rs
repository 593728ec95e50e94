//! `berth notify add|list|remove`: signed JSON POSTs to a URL on
//! deployment events (succeeded, failed, rolled_back, regressed).

use super::Ctx;
use crate::output::{emit, emitln, timestamp, truncate, Table};
use berth_core::notify::{self, AddNotification, Delivery};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum NotifyCmd {
    /// POST every deployment event of a project to URL (prints the
    /// signing secret once).
    Add {
        #[arg(long)]
        project: String,
        /// http:// or https:// endpoint (a Slack incoming webhook works).
        #[arg(long)]
        url: String,
        /// Comma-separated: succeeded, failed, rolled_back, regressed
        /// (default: all).
        #[arg(long)]
        events: Option<String>,
    },
    /// List a project's endpoints with their latest delivery attempts.
    List {
        #[arg(long)]
        project: String,
    },
    /// Stop notifying an endpoint.
    Remove {
        #[arg(long)]
        project: String,
        /// The id `notify add` or `notify list` printed.
        id: String,
    },
}

/// What the last attempt got: `HTTP 500`, or the error.
fn last_attempt(d: &Delivery) -> String {
    match d.attempts.last() {
        None => "-".into(),
        Some(a) => match (a.status_code, &a.error) {
            (Some(c), _) => format!("HTTP {c}"),
            (None, Some(e)) => truncate(e, 60),
            (None, None) => "no answer".into(),
        },
    }
}

pub async fn run(ctx: &Ctx, cmd: NotifyCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        NotifyCmd::Add {
            project,
            url,
            events,
        } => {
            // Checked here too, so a typo never reaches the server; the
            // message never repeats the URL (its path may be a secret).
            notify::parse_url(url.trim())?;
            let events = events
                .as_deref()
                .map(notify::parse_events)
                .transpose()?
                .map(|es| es.iter().map(|e| e.as_str().to_string()).collect());
            let reply = c
                .add_notification(&project, &AddNotification { url, events })
                .await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let n = reply.parse()?;
            let events: Vec<&str> = n.notification.events.iter().map(|e| e.as_str()).collect();
            emitln(&format!(
                "notifying {} of {} events ({}) as {}",
                n.notification.url,
                n.notification.project_name,
                events.join(", "),
                n.notification.id
            ));
            emitln(&format!("signing secret (shown once): {}", n.secret));
            emitln(
                "each POST carries X-Berth-Signature-256: sha256=<hex HMAC-SHA256 of the body with this secret>",
            );
        }
        NotifyCmd::List { project } => {
            let reply = c.list_notifications(&project).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let list = reply.parse()?;
            if list.is_empty() {
                emitln(&format!("project {project} has no notifications"));
                return Ok(());
            }
            for (i, n) in list.iter().enumerate() {
                if i > 0 {
                    emitln("");
                }
                let events: Vec<&str> = n.notification.events.iter().map(|e| e.as_str()).collect();
                emitln(&format!(
                    "{}  {}  events: {}  added {}",
                    n.notification.id,
                    n.notification.url,
                    events.join(","),
                    timestamp(n.notification.created_at)
                ));
                if n.deliveries.is_empty() {
                    emitln("  no deliveries yet");
                    continue;
                }
                let mut t = Table::new([
                    "  QUEUED",
                    "EVENT",
                    "DEPLOYMENT",
                    "STATUS",
                    "ATTEMPTS",
                    "LAST",
                    "AT",
                    "NEXT RETRY",
                ]);
                for d in &n.deliveries {
                    t.row([
                        format!("  {}", timestamp(d.created_at)),
                        d.event.as_str().to_string(),
                        d.deployment_id.clone(),
                        d.status.as_str().to_string(),
                        d.attempts.len().to_string(),
                        last_attempt(d),
                        d.attempts
                            .last()
                            .map(|a| timestamp(a.at))
                            .unwrap_or_else(|| "-".into()),
                        d.next_attempt_at
                            .map(timestamp)
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                emit(&t.render());
            }
        }
        NotifyCmd::Remove { project, id } => {
            c.remove_notification(&project, &id).await?;
            if ctx.json {
                emitln(&serde_json::json!({ "removed": id }).to_string());
            } else {
                emitln(&format!("removed notification {id} of {project}"));
            }
        }
    }
    Ok(())
}

//! `berth status`: deployments, newest first.

use super::Ctx;
use crate::client::DeploymentQuery;
use crate::output::{emit, emitln, relative_age, truncate, Table};
use berth_core::model::Deployment;
use chrono::{DateTime, Utc};
use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, env = "BERTH_PROJECT")]
    project: Option<String>,
    #[arg(long = "env")]
    environment: Option<String>,
    #[arg(long)]
    service: Option<String>,
    /// At most this many deployments.
    #[arg(long)]
    limit: Option<u32>,
}

/// Width of the commit message in the COMMIT column.
const MESSAGE_WIDTH: usize = 40;

pub async fn run(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<()> {
    let q = DeploymentQuery {
        project: a.project,
        environment: a.environment,
        service: a.service,
        limit: a.limit,
    };
    let reply = ctx.client.list_deployments(&q).await?;
    if ctx.json {
        return ctx.print_json(&reply);
    }
    let deployments = reply.parse()?;
    if deployments.is_empty() {
        emitln("no deployments");
        return Ok(());
    }
    emit(&render(&deployments, Utc::now()));
    Ok(())
}

/// The status table.
pub fn render(deployments: &[Deployment], now: DateTime<Utc>) -> String {
    let mut t = Table::new([
        "ID", "SERVICE", "ENV", "STATUS", "STAGE", "HEALTH", "ACTIVE", "COMMIT", "CREATED",
    ]);
    for d in deployments {
        t.row([
            d.id.clone(),
            d.service_name.clone(),
            d.environment_name.clone(),
            d.status.to_string(),
            stage_cell(d),
            d.health.to_string(),
            if d.is_active { "yes" } else { "" }.to_string(),
            commit_cell(d),
            relative_age(d.created_at, now),
        ]);
    }
    t.render()
}

fn stage_cell(d: &Deployment) -> String {
    match d.canary_weight {
        Some(w) if d.promotion_stage == berth_core::state::Stage::Canary => {
            format!("canary {w}%")
        }
        _ => d.promotion_stage.to_string(),
    }
}

/// `abc1234 first line of the message…`, or the ref when not cloned yet.
pub fn commit_cell(d: &Deployment) -> String {
    match &d.commit {
        Some(c) => {
            let sha: String = c.sha.chars().take(7).collect();
            let first = c.message.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                sha
            } else {
                format!("{sha} {}", truncate(first, MESSAGE_WIDTH))
            }
        }
        None if d.reference.is_empty() => "-".into(),
        None => format!("({})", d.reference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn status_table() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        insta::assert_snapshot!(render(&crate::cmd::fixture_deployments(), now));
    }
}

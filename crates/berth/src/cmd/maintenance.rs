//! `berth maintenance on|off|status`: the edge answers a service's
//! hostnames (or every service's of an environment) with 503,
//! `Retry-After` and berth's maintenance page; health checks unaffected.

use super::Ctx;
use crate::output::{emitln, timestamp};
use berth_core::model::{Maintenance, PRODUCTION};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Answer requests with berth's maintenance page (503).
    On(Target),
    /// Serve the app again.
    Off(Target),
    /// What of a project is in maintenance.
    Status {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
    },
}

#[derive(Args, Debug)]
pub struct Target {
    #[arg(long, env = "BERTH_PROJECT")]
    project: String,
    #[arg(long = "env", default_value = PRODUCTION)]
    environment: String,
    /// One service (default: every service of the environment).
    #[arg(long)]
    service: Option<String>,
}

/// `shop/production` (every service) or `shop/production web`.
fn what(m: &Maintenance) -> String {
    match &m.service_name {
        None => format!("{}/{} (every service)", m.project_name, m.environment_name),
        Some(s) => format!("{}/{} {s}", m.project_name, m.environment_name),
    }
}

fn show(project: &str, list: &[Maintenance]) {
    if list.is_empty() {
        emitln(&format!("nothing of project {project} is in maintenance"));
    }
    for m in list {
        emitln(&format!(
            "in maintenance: {} since {}",
            what(m),
            timestamp(m.since)
        ));
    }
}

pub async fn run(ctx: &Ctx, cmd: MaintenanceCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let (reply, project) = match cmd {
        MaintenanceCmd::On(t) => (
            c.set_maintenance(&t.project, &t.environment, t.service.as_deref(), true)
                .await?,
            t.project,
        ),
        MaintenanceCmd::Off(t) => (
            c.set_maintenance(&t.project, &t.environment, t.service.as_deref(), false)
                .await?,
            t.project,
        ),
        MaintenanceCmd::Status { project } => (c.list_maintenance(&project).await?, project),
    };
    if ctx.json {
        return ctx.print_json(&reply);
    }
    show(&project, &reply.parse()?);
    Ok(())
}

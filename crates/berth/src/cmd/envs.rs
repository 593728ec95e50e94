//! `berth envs create|list|delete`

use super::{or_dash, Ctx};
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::api::CreateEnvironment;
use berth_core::model::EnvironmentKind;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EnvsCmd {
    /// Create an environment (deployed from its own branch).
    Create {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        name: String,
        /// The branch whose pushes deploy this environment.
        #[arg(long)]
        branch: Option<String>,
    },
    /// List a project's environments.
    List {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
    },
    /// Delete an environment and stop its services.
    Delete {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        name: String,
    },
}

pub fn kind_str(k: EnvironmentKind) -> &'static str {
    match k {
        EnvironmentKind::Production => "production",
        EnvironmentKind::Branch => "branch",
        EnvironmentKind::Preview => "preview",
    }
}

pub async fn run(ctx: &Ctx, cmd: EnvsCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        EnvsCmd::Create {
            project,
            name,
            branch,
        } => {
            let reply = c
                .create_environment(&project, &CreateEnvironment { name, branch })
                .await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let e = reply.parse()?;
            emitln(&format!(
                "created environment {} of {} (branch {})",
                e.name,
                e.project_name,
                or_dash(e.branch.as_deref())
            ));
        }
        EnvsCmd::List { project } => {
            let reply = c.list_environments(&project).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["NAME", "KIND", "BRANCH", "CREATED"]);
            for e in reply.parse()? {
                t.row([
                    e.name,
                    kind_str(e.kind).to_string(),
                    or_dash(e.branch.as_deref()),
                    timestamp(e.created_at),
                ]);
            }
            emit(&t.render());
        }
        EnvsCmd::Delete { project, name } => {
            c.delete_environment(&project, &name).await?;
            if ctx.json {
                emitln(&serde_json::json!({ "deleted": name }).to_string());
            } else {
                emitln(&format!("deleted environment {name} of {project}"));
            }
        }
    }
    Ok(())
}

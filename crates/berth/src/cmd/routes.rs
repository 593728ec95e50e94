//! `berth routes add|list|remove`: hostnames the edge proxy sends to an
//! upstream berth does not run.

use super::Ctx;
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::api::AddRoute;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum RoutesCmd {
    /// Serve HOSTNAME from an upstream HOST:PORT.
    Add {
        hostname: String,
        #[arg(long, value_name = "HOST:PORT")]
        upstream: String,
    },
    /// List external routes.
    List,
    /// Stop serving HOSTNAME.
    Remove { hostname: String },
}

pub async fn run(ctx: &Ctx, cmd: RoutesCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        RoutesCmd::Add { hostname, upstream } => {
            let reply = c.add_route(&AddRoute { hostname, upstream }).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let r = reply.parse()?;
            emitln(&format!("routing {} to {}", r.hostname, r.upstream));
        }
        RoutesCmd::List => {
            let reply = c.list_routes().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["HOSTNAME", "UPSTREAM", "CREATED"]);
            for r in reply.parse()? {
                t.row([r.hostname, r.upstream, timestamp(r.created_at)]);
            }
            if t.is_empty() {
                emitln("no external routes");
            } else {
                emit(&t.render());
            }
        }
        RoutesCmd::Remove { hostname } => {
            c.remove_route(&hostname).await?;
            if ctx.json {
                emitln(&serde_json::json!({ "removed": hostname }).to_string());
            } else {
                emitln(&format!("removed route {hostname}"));
            }
        }
    }
    Ok(())
}

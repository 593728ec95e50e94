//! `berth nodes list|drain|activate`: the swarm's nodes (`--runtime swarm`).

use super::Ctx;
use crate::output::{emit, emitln, Table};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List the swarm's nodes and the berth instances on each.
    List,
    /// Move every instance off a node (replacements first, healthy and
    /// routed, then the old ones go), then drain it.
    Drain {
        /// Node id, unique id prefix or hostname.
        node: String,
    },
    /// Let the swarm place instances on a node again.
    Activate {
        /// Node id, unique id prefix or hostname.
        node: String,
    },
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn describe(n: &Value) -> String {
    format!(
        "{} ({}) {}, {}",
        text(n, "hostname"),
        text(n, "id").chars().take(12).collect::<String>(),
        text(n, "status"),
        text(n, "availability")
    )
}

pub async fn run(ctx: &Ctx, cmd: NodesCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        NodesCmd::List => {
            let reply = c.list_nodes().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new([
                "ID",
                "HOSTNAME",
                "ADDRESS",
                "ROLE",
                "STATUS",
                "AVAILABILITY",
                "INSTANCES",
            ]);
            for n in reply.parse()? {
                let mut role = text(&n, "role");
                if n["leader"] == Value::Bool(true) {
                    role.push_str(" (leader)");
                }
                t.row([
                    text(&n, "id").chars().take(12).collect(),
                    text(&n, "hostname"),
                    text(&n, "address"),
                    role,
                    text(&n, "status"),
                    text(&n, "availability"),
                    text(&n, "instances"),
                ]);
            }
            emit(&t.render());
        }
        NodesCmd::Drain { node } => {
            let reply = c.node_action(&node, "drain").await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let v = reply.parse()?;
            let moved = v["moved"].as_array().map_or(0, Vec::len);
            emitln(&format!(
                "{}: moved {moved} instance(s) elsewhere",
                describe(&v["node"])
            ));
        }
        NodesCmd::Activate { node } => {
            let reply = c.node_action(&node, "activate").await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            emitln(&describe(&reply.parse()?));
        }
    }
    Ok(())
}

//! `berth cluster status`: the servers sharing one database, the leader
//! and its epoch.

use super::Ctx;
use crate::output::{emit, Table};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// List the servers: id, API URL, leader, epoch, last seen.
    Status,
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let reply = ctx.client.cluster_status().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["ID", "API URL", "ROLE", "EPOCH", "LAST SEEN"]);
            for m in reply.parse()? {
                let role = if m["isLeader"] == Value::Bool(true) {
                    "leader"
                } else {
                    "follower"
                };
                t.row([
                    text(&m, "id"),
                    text(&m, "apiUrl"),
                    role.to_string(),
                    text(&m, "epoch"),
                    text(&m, "lastSeenAt"),
                ]);
            }
            emit(&t.render());
        }
    }
    Ok(())
}

//! `berth tokens create|list|revoke` and `berth audit`: who may do what,
//! and what was done.

use super::{or_dash, Ctx};
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::access::{CreateToken, Role};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a token; it is printed once (only its hash is kept).
    Create {
        name: String,
        /// admin, deployer or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The one project the token sees (others are 404 to it).
        #[arg(long)]
        project: Option<String>,
        /// How long it works, e.g. 30d or 12h (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens: name, role, project, expiry, last use (never the token).
    List,
    /// Revoke a token: refused from its next request on, open log streams
    /// included.
    Revoke { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this project's changes.
    #[arg(long)]
    project: Option<String>,
    /// At most this many entries, newest first (default 100).
    #[arg(long)]
    limit: Option<u32>,
}

pub async fn run(ctx: &Ctx, cmd: TokensCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        TokensCmd::Create {
            name,
            role,
            project,
            expires,
        } => {
            let reply = c
                .create_token(&CreateToken {
                    name,
                    role,
                    project,
                    expires,
                })
                .await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let t = reply.parse()?;
            emitln(&format!(
                "created token {} ({}{}{})",
                t.info.name,
                t.info.role,
                t.info
                    .project
                    .as_deref()
                    .map(|p| format!(", project {p}"))
                    .unwrap_or_default(),
                t.info
                    .expires_at
                    .map(|e| format!(", expires {}", timestamp(e)))
                    .unwrap_or_default()
            ));
            emitln("it is shown only now; keep it somewhere safe:");
            emitln(&t.token);
        }
        TokensCmd::List => {
            let reply = c.list_tokens().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["NAME", "ROLE", "PROJECT", "EXPIRES", "LAST USED", "STATE"]);
            let now = chrono::Utc::now();
            for tok in reply.parse()? {
                let state = match tok.dead_at(now) {
                    Some(berth_core::access::TokenDead::Revoked) => "revoked",
                    Some(berth_core::access::TokenDead::Expired) => "expired",
                    None => "active",
                };
                t.row([
                    tok.name.clone(),
                    tok.role.to_string(),
                    or_dash(tok.project.as_deref()),
                    tok.expires_at
                        .map(timestamp)
                        .unwrap_or_else(|| "never".into()),
                    tok.last_used_at
                        .map(timestamp)
                        .unwrap_or_else(|| "never".into()),
                    state.to_string(),
                ]);
            }
            if t.is_empty() {
                emitln("no tokens (the server's --token is the admin token)");
            } else {
                emit(&t.render());
            }
        }
        TokensCmd::Revoke { name } => {
            let reply = c.revoke_token(&name).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let t = reply.parse()?;
            emitln(&format!("revoked token {}", t.name));
        }
    }
    Ok(())
}

pub async fn audit(ctx: &Ctx, a: AuditArgs) -> anyhow::Result<()> {
    let reply = ctx.client.audit(a.project, a.limit).await?;
    if ctx.json {
        return ctx.print_json(&reply);
    }
    let mut t = Table::new(["AT", "TOKEN", "ACTION", "TARGET", "SOURCE IP"]);
    for e in reply.parse()? {
        t.row([timestamp(e.at), e.token, e.action, e.target, e.source_ip]);
    }
    if t.is_empty() {
        emitln("no changes recorded");
    } else {
        emit(&t.render());
    }
    Ok(())
}

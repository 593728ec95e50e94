//! `berth domains add|verify|list`: custom domains of a project (004:
//! TXT verification, then CNAME/ALIAS and an automatic certificate).
//!
//! The answers have no type in `berth-core` yet, so the human output is
//! the JSON itself.

use super::Ctx;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum DomainsCmd {
    /// Attach a domain to a service; prints the DNS records to create.
    Add {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        hostname: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Check the domain's TXT record and issue its certificate.
    Verify {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        hostname: String,
    },
    /// List a project's domains.
    List {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: DomainsCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let reply = match cmd {
        DomainsCmd::Add {
            project,
            hostname,
            service,
            environment,
        } => {
            let mut body = serde_json::json!({ "hostname": hostname });
            if let Some(s) = service {
                body["service"] = s.into();
            }
            if let Some(e) = environment {
                body["environment"] = e.into();
            }
            c.add_domain(&project, &body).await?
        }
        DomainsCmd::Verify { project, hostname } => c.verify_domain(&project, &hostname).await?,
        DomainsCmd::List { project } => c.list_domains(&project).await?,
    };
    ctx.print_json(&reply)
}

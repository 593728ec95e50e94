//! `berth domains add|verify|list`: custom domains of a project (004:
//! TXT verification, then CNAME/ALIAS and an automatic certificate).
//!
//! `add` and `verify` print the JSON answer; `list` prints one line per
//! domain with its certificate state (none, pending, issued with notAfter,
//! failed with the reason), or the JSON with `--json`.

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
        DomainsCmd::List { project } => {
            let reply = c.list_domains(&project).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let domains: Vec<berth_core::model::Domain> = serde_json::from_value(reply.parse()?)?;
            crate::output::emitln(&domain_table(&domains));
            return Ok(());
        }
    };
    ctx.print_json(&reply)
}

/// `HOSTNAME  VERIFIED  CERTIFICATE` lines.
fn domain_table(domains: &[berth_core::model::Domain]) -> String {
    use berth_core::model::CertState;
    let width = domains
        .iter()
        .map(|d| d.hostname.len())
        .max()
        .unwrap_or(0)
        .max("HOSTNAME".len());
    let mut out = format!("{:<width$}  VERIFIED  CERTIFICATE", "HOSTNAME");
    for d in domains {
        let c = &d.certificate;
        let cert = match c.state {
            CertState::Issued => match c.not_after {
                Some(t) => format!("issued, valid until {}", t.format("%Y-%m-%d %H:%M UTC")),
                None => "issued".to_string(),
            },
            CertState::Failed => format!(
                "failed: {}{}",
                c.error.as_deref().unwrap_or("unknown reason"),
                c.next_attempt_at
                    .map(|t| format!(
                        " (attempt {}, next at {})",
                        c.attempts,
                        t.format("%H:%M:%S UTC")
                    ))
                    .unwrap_or_default()
            ),
            // An attempt under way after failed ones: say which and why
            // the previous one failed.
            CertState::Pending if c.attempts > 0 => format!(
                "pending (attempt {}, last error: {})",
                c.attempts + 1,
                c.error.as_deref().unwrap_or("unknown reason")
            ),
            other => other.as_str().to_string(),
        };
        out.push_str(&format!(
            "\n{:<width$}  {:<8}  {cert}",
            d.hostname,
            super::yes_no(d.verified)
        ));
    }
    out
}

//! `berth deploy|rollback|promote|redeploy|cancel`, and `--wait`: follow
//! a deployment live (its server-sent event stream) until it is
//! succeeded, failed or cancelled.

use super::logs::SseParser;
use super::Ctx;
use crate::client::{ClientError, Reply};
use crate::output::{changes, emitln, last_lines, live_block, summary_line, LiveRegion};
use anyhow::Context as _;
use berth_core::api::{CreateDeployment, Rollback};
use berth_core::model::{Deployment, StepStatus};
use berth_core::state::Status;
use chrono::Utc;
use clap::Args;
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[arg(long, env = "BERTH_PROJECT")]
    project: String,
    /// The service [default: every service of the project].
    #[arg(long)]
    service: Option<String>,
    /// The environment [default: production].
    #[arg(long = "env")]
    environment: Option<String>,
    /// Branch, tag or commit SHA [default: the environment's branch].
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Follow the deployment until it finishes; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[arg(long, env = "BERTH_PROJECT")]
    project: String,
    #[arg(long)]
    service: Option<String>,
    #[arg(long = "env")]
    environment: Option<String>,
    /// Follow the rollback until it finishes.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct IdWaitArgs {
    /// A deployment id.
    id: String,
    /// Follow the new deployment until it finishes.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// A deployment id.
    id: String,
}

/// How often `--wait` asks for the deployment of a server without the
/// event stream.
const POLL: Duration = Duration::from_millis(250);
/// Pause before opening the event stream again after it broke.
const STREAM_RETRY: Duration = Duration::from_millis(100);
/// Consecutive unreachable polls tolerated (a server restart) before giving up.
const MAX_UNREACHABLE: u32 = 120;
/// Lines of the failing step's log shown on failure.
const FAILURE_LOG_LINES: usize = 20;

pub async fn deploy(ctx: &Ctx, a: DeployArgs) -> anyhow::Result<()> {
    let body = CreateDeployment {
        project: a.project,
        service: a.service,
        environment: a.environment,
        reference: a.reference,
    };
    let reply = ctx.client.create_deployment(&body).await?;
    finish(ctx, reply, a.wait).await
}

pub async fn rollback(ctx: &Ctx, a: RollbackArgs) -> anyhow::Result<()> {
    let body = Rollback {
        project: a.project,
        service: a.service,
        environment: a.environment,
    };
    let reply = ctx.client.rollback(&body).await?;
    finish(ctx, reply, a.wait).await
}

/// `promote` or `redeploy`: both answer with the new deployment.
pub async fn action(ctx: &Ctx, a: IdWaitArgs, verb: &str) -> anyhow::Result<()> {
    let reply = ctx.client.deployment_action(&a.id, verb).await?;
    finish(ctx, reply, a.wait).await
}

pub async fn cancel(ctx: &Ctx, a: IdArgs) -> anyhow::Result<()> {
    let reply = ctx.client.deployment_action(&a.id, "cancel").await?;
    finish(ctx, reply, false).await
}

async fn finish(ctx: &Ctx, reply: Reply<Deployment>, wait: bool) -> anyhow::Result<()> {
    if !wait {
        if ctx.json {
            return ctx.print_json(&reply);
        }
        let d = reply.parse()?;
        emitln(&summary_line(&d));
        return Ok(());
    }
    let first = reply.parse()?;
    let (last, d) = watch(ctx, first).await?;
    report(ctx, &last, &d)
}

/// Where progress goes: stdout, or stderr when stdout carries `--json`.
struct Progress {
    to_stderr: bool,
    tty: bool,
    region: LiveRegion,
    frame: usize,
    prev: Option<Deployment>,
}

impl Progress {
    fn new(json: bool) -> Self {
        let tty = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Progress {
            to_stderr: json,
            tty,
            region: LiveRegion::default(),
            frame: 0,
            prev: None,
        }
    }

    fn write(&self, text: &str) {
        // Progress is best effort: a closed stream must not fail the wait.
        let _ = if self.to_stderr {
            let mut e = std::io::stderr().lock();
            e.write_all(text.as_bytes()).and_then(|_| e.flush())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes()).and_then(|_| o.flush())
        };
    }

    fn show(&mut self, d: &Deployment) {
        let now = Utc::now();
        let text = if self.tty {
            self.frame += 1;
            self.region.redraw(&live_block(d, now, self.frame))
        } else {
            changes(self.prev.as_ref(), d, now)
                .into_iter()
                .map(|l| l + "\n")
                .collect()
        };
        self.write(&text);
        self.prev = Some(d.clone());
    }
}

/// Follow the deployment until it is terminal; the last answer and its
/// parse. It comes over the deployment's event stream, which the server
/// pushes the moment a change is saved; when the stream breaks (a server
/// restart, a proxy cutting it) one poll bridges the gap and the stream is
/// opened again. A server without the stream is polled every [`POLL`].
async fn watch(ctx: &Ctx, first: Deployment) -> anyhow::Result<(Reply<Deployment>, Deployment)> {
    let id = first.id.clone();
    let mut progress = Progress::new(ctx.json);
    progress.show(&first);
    let mut unreachable = 0;
    let mut streaming = true;
    loop {
        if streaming {
            match ctx.client.deployment_events(&id).await {
                Ok(mut resp) => {
                    unreachable = 0;
                    if let Some(done) = follow_events(ctx, &mut resp, &mut progress).await {
                        return Ok(done);
                    }
                    // Ended before a terminal state: poll once, then resume.
                }
                Err(e) if no_stream(&e) => streaming = false,
                Err(e) if e.is_transient() && unreachable < MAX_UNREACHABLE => {
                    unreachable += 1;
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("following deployment {id}")),
            }
        }
        if !streaming {
            tokio::time::sleep(POLL).await;
        }
        let reply = match ctx.client.get_deployment(&id).await {
            Ok(r) => r,
            Err(e) if e.is_transient() && unreachable < MAX_UNREACHABLE => {
                unreachable += 1;
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("following deployment {id}")),
        };
        unreachable = 0;
        let d = reply.parse()?;
        progress.show(&d);
        if d.status.is_terminal() {
            return Ok((reply, d));
        }
        if streaming {
            // not a hot loop when a stream keeps breaking at once
            tokio::time::sleep(STREAM_RETRY).await;
        }
    }
}

/// Read one event stream: each `deployment` event is shown; the first
/// terminal one is the result. `None` when the stream ended or broke first.
async fn follow_events(
    ctx: &Ctx,
    resp: &mut reqwest::Response,
    progress: &mut Progress,
) -> Option<(Reply<Deployment>, Deployment)> {
    let mut parser = SseParser::default();
    while let Ok(Some(chunk)) = ctx.client.next_chunk(resp).await {
        for ev in parser.feed(&chunk) {
            let reply = Reply::from_body(ev.data.into_bytes());
            // another kind of event (a newer server's): not ours to read
            let Ok(d) = reply.parse() else { continue };
            progress.show(&d);
            if d.status.is_terminal() {
                return Some((reply, d));
            }
        }
    }
    None
}

/// A server that has no event stream (older than the CLI): poll it.
fn no_stream(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            status: 404 | 405,
            ..
        } | ClientError::Status {
            status: 404 | 405,
            ..
        }
    )
}

/// Print the outcome; an error unless the deployment succeeded.
fn report(ctx: &Ctx, last: &Reply<Deployment>, d: &Deployment) -> anyhow::Result<()> {
    if ctx.json {
        ctx.print_json(last)?;
    }
    if d.status == Status::Succeeded {
        if !ctx.json {
            match d.route_url.as_deref().or(d.preview_url.as_deref()) {
                Some(url) => emitln(&format!("deployment {} succeeded: {url}", d.id)),
                None => emitln(&format!("deployment {} succeeded (no route)", d.id)),
            }
        }
        return Ok(());
    }
    let failing = d
        .steps
        .iter()
        .find(|s| s.status == StepStatus::Failed)
        .or_else(|| {
            d.steps
                .iter()
                .rev()
                .find(|s| s.status == StepStatus::Running)
        });
    if let Some(step) = failing {
        let lines = last_lines(&step.log, FAILURE_LOG_LINES);
        if !lines.is_empty() {
            eprintln!("--- last lines of step {} ---", step.name.as_str());
            for l in lines {
                eprintln!("  {l}");
            }
        }
    }
    let msg = d
        .failure_message
        .as_deref()
        .map(crate::client::one_line)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "no reason given".into());
    anyhow::bail!("deployment {} {}: {msg}", d.id, d.status)
}

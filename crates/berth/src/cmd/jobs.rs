//! `berth jobs list|run|logs`: scheduled jobs (`[jobs.<name>]` in
//! berth.toml) of a project's environments, and their runs.

use super::Ctx;
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::ops::{Run, RunJob};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List the jobs with their schedule, next firing and last run.
    List {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        /// Only this environment's jobs [default: every environment].
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Run a job now, outside its schedule; its output follows and berth
    /// exits with its exit code.
    Run {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        /// [default: production]
        #[arg(long = "env")]
        environment: Option<String>,
        /// Return at once with the run's id; `berth logs <id>` shows it.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The job (`[jobs.<name>]` in berth.toml).
        name: String,
    },
    /// The job's runs (id, status, exit code, firing, start and end), oldest
    /// first, each with its output.
    Logs {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        /// Only this environment's runs [default: every environment].
        #[arg(long = "env")]
        environment: Option<String>,
        /// How many of the newest runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The job (`[jobs.<name>]` in berth.toml).
        name: String,
    },
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(timestamp).unwrap_or_else(|| "-".into())
}

/// One line about a run: what it came to.
fn describe(r: &Run) -> String {
    let firing = match r.scheduled_for {
        Some(f) => format!("firing {}", timestamp(f)),
        None => format!("run now by {}", r.requested_by),
    };
    format!(
        "run {} ({firing}): {}, started {}, completed {}",
        r.id,
        r.outcome(),
        time(r.started_at),
        time(r.completed_at)
    )
}

/// `berth jobs ...`; returns the exit code to leave with.
pub async fn run(ctx: &Ctx, cmd: JobsCmd) -> anyhow::Result<u8> {
    let c = &ctx.client;
    match cmd {
        JobsCmd::List {
            project,
            environment,
        } => {
            let reply = c.list_jobs(&project, environment).await?;
            if ctx.json {
                ctx.print_json(&reply)?;
                return Ok(0);
            }
            let jobs = reply.parse()?;
            if jobs.is_empty() {
                emitln(&format!(
                    "project {project} has no jobs (add [jobs.<name>] to berth.toml and deploy)"
                ));
                return Ok(0);
            }
            let mut t = Table::new([
                "NAME", "ENV", "SERVICE", "SCHEDULE", "COMMAND", "NEXT", "LAST RUN",
            ]);
            for j in jobs {
                let last = j
                    .last_runs
                    .first()
                    .map(|r| format!("{} {}", r.status, time(r.started_at.or(r.completed_at))))
                    .unwrap_or_else(|| "-".into());
                t.row([
                    j.name,
                    j.environment_name,
                    j.service_name,
                    j.schedule,
                    crate::output::truncate(&j.command, 40),
                    time(j.next_run_at),
                    last,
                ]);
            }
            emit(&t.render());
            Ok(0)
        }
        JobsCmd::Run {
            project,
            environment,
            detach,
            name,
        } => {
            let reply = c.run_job(&project, &name, &RunJob { environment }).await?;
            if ctx.json && detach {
                ctx.print_json(&reply)?;
                return Ok(0);
            }
            let run = reply.parse()?;
            if detach {
                emitln(&format!(
                    "run {} of job {name} started; follow it with: berth logs {} --follow",
                    run.id, run.id
                ));
                return Ok(0);
            }
            super::run::logs(ctx, run.clone(), true).await?;
            let done = c.get_run(&run.id).await?.parse()?;
            super::run::exit_code_of(&done)
        }
        JobsCmd::Logs {
            project,
            environment,
            limit,
            name,
        } => {
            let reply = c
                .job_runs(&project, &name, environment, Some(limit))
                .await?;
            if ctx.json {
                ctx.print_json(&reply)?;
                return Ok(0);
            }
            let mut runs = reply.parse()?;
            if runs.is_empty() {
                emitln(&format!("job {name} of project {project} has no runs yet"));
                return Ok(0);
            }
            runs.reverse();
            for r in runs {
                emitln(&describe(&r));
                if r.dropped_lines > 0 {
                    emitln(&format!("  ... {} earlier lines not kept", r.dropped_lines));
                }
                for l in &r.output {
                    emitln(&format!("  {}", l.line));
                }
            }
            Ok(0)
        }
    }
}

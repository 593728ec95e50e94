//! Scheduled jobs (`[jobs.<name>]` in berth.toml): the scheduler that fires
//! them on the leader, and `berth jobs run`.
//!
//! A job belongs to an environment: it is defined by the berth.toml recorded
//! with the active deployment of its service there, and each run gets that
//! deployment's image, the environment's variables, the service's limits
//! and hardening (the same instance as `berth run`, see [`crate::runs`]).
//!
//! Invariants:
//! - only the leader fires jobs ([`crate::cluster::Leadership::is_leader`]);
//! - a firing's run record (job, `scheduledFor`) is inserted BEFORE its
//!   instance starts, and the store's unique index on (project,
//!   environment, job, scheduled_for) refuses a second one: a firing runs at
//!   most once, across deploys, restarts of berth and several servers;
//! - the firing that may run is the one
//!   [`berth_core::schedule::Schedule::due`] names: the latest
//!   firing, less than one period late, not before the job existed (a
//!   firing missed while berth was down runs once at start, older ones
//!   never; a firing before the active deployment runs only if a run of
//!   the job was made before it — a manual run since proves nothing);
//! - when a run of the job is still going at a firing, that firing is
//!   recorded `skipped` (its own record, under the same unique index); a
//!   run this server left going before it restarted does not block (it is
//!   marked failed by the reconciler);
//! - a run is killed after the job's `timeout` and recorded failed with
//!   the reason.

use crate::deployer::Deployer;
use crate::ids::{new_id, now};
use crate::runs::{JobFiring, RunError, RunEvent, RunRequest};
use berth_core::config::JobConfig;
use berth_core::ops::{Job, Run, RunStatus};
use berth_store::{DeploymentQuery, RunQuery, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Who the scheduler's runs are recorded as requested by.
pub const SCHEDULER: &str = "scheduler";
/// How often the scheduler re-reads which jobs exist (active deployments).
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// A run still marked going this long after its timeout is taken as lost
/// (its server died) and no longer blocks the job's firings.
const LOST_AFTER_TIMEOUT: Duration = Duration::from_secs(300);
/// Runs a job listing carries.
const LAST_RUNS: u32 = 5;

/// A job as the active deployment of its service defines it.
#[derive(Clone, Debug)]
pub struct ActiveJob {
    pub project: String,
    pub environment: String,
    pub config: JobConfig,
    /// The active deployment of the job's service.
    pub deployment_id: String,
    /// When that deployment was created: a job that never ran does not
    /// run firings from before it.
    pub deployed_at: DateTime<Utc>,
}

impl ActiveJob {
    fn key(&self) -> (String, String, String) {
        (
            self.project.clone(),
            self.environment.clone(),
            self.config.name.clone(),
        )
    }
}

/// What one firing of a job came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    /// Recorded and started: the run's id.
    Started(String),
    /// A run of the job was still going: recorded skipped (the record's id).
    Skipped(String),
    /// The firing was recorded already (by this server before a restart,
    /// or by another one): nothing done.
    AlreadyRecorded,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("project {project} has no job {job:?} in environment {environment} (jobs come from the berth.toml of the active deployment of their service)")]
    UnknownJob {
        project: String,
        environment: String,
        job: String,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Fires due jobs; one per berth process. [`Scheduler::tick`] does one
/// round at a given time, so tests drive it with a clock of their own.
pub struct Scheduler {
    deployer: Arc<Deployer>,
    /// When this process started: a run it finds going that this server
    /// started before then was interrupted by the restart.
    started: DateTime<Utc>,
    /// The last firing handled per (project, environment, job), so a round
    /// does not ask the store again about a firing it already settled.
    handled: Mutex<HashMap<(String, String, String), DateTime<Utc>>>,
}

impl Scheduler {
    pub fn new(deployer: Arc<Deployer>, started: DateTime<Utc>) -> Self {
        Scheduler {
            deployer,
            started,
            handled: Mutex::new(HashMap::new()),
        }
    }

    /// One round at `now`: fires each of `jobs` whose due firing this
    /// process has not handled yet. Returns what each firing came to.
    pub async fn tick(&self, now: DateTime<Utc>, jobs: &[ActiveJob]) -> Vec<(String, Fired)> {
        let mut out = Vec::new();
        for job in jobs {
            let Some(firing) = job.config.schedule.due(now, None) else {
                continue;
            };
            if self.handled.lock().unwrap().get(&job.key()) == Some(&firing) {
                continue;
            }
            match self.fire(job, firing).await {
                Ok(Some(fired)) => {
                    self.handled.lock().unwrap().insert(job.key(), firing);
                    out.push((job.config.name.clone(), fired));
                }
                Ok(None) => {
                    self.handled.lock().unwrap().insert(job.key(), firing);
                }
                Err(e) => {
                    // Tried again next round (the unique index keeps it once).
                    tracing::warn!(
                        project = job.project,
                        environment = job.environment,
                        job = job.config.name,
                        error = %e,
                        "cannot fire job"
                    );
                }
            }
        }
        out
    }

    /// Fires `job` for `firing`: records it skipped when a run of the job
    /// is still going, else records and starts a run. `None`: not to run
    /// (the job is newer than the firing).
    async fn fire(
        &self,
        job: &ActiveJob,
        firing: DateTime<Utc>,
    ) -> Result<Option<Fired>, JobError> {
        let d = &self.deployer;
        if firing < job.deployed_at && !self.ran_before(job, firing).await? {
            return Ok(None);
        }
        let going = d
            .store
            .list_runs(&RunQuery {
                project: Some(job.project.clone()),
                environment: Some(job.environment.clone()),
                job: Some(job.config.name.clone()),
                unfinished: true,
                ..Default::default()
            })
            .await?;
        if let Some(blocking) = going.iter().find(|r| self.blocks(r, &job.config, firing)) {
            let at = now();
            let skipped = Run {
                id: new_id(),
                project_name: job.project.clone(),
                environment_name: job.environment.clone(),
                service_name: job.config.service.clone(),
                job: Some(job.config.name.clone()),
                command: berth_runtime::shell_command(&job.config.command),
                requested_by: SCHEDULER.into(),
                deployment_id: Some(job.deployment_id.clone()),
                server: Some(d.instance.clone()),
                scheduled_for: Some(firing),
                status: RunStatus::Skipped,
                exit_code: None,
                oom_killed: false,
                error: Some(format!("previous run {} still going", blocking.id)),
                created_at: at,
                started_at: None,
                completed_at: Some(at),
                output: Vec::new(),
                dropped_lines: 0,
            };
            return match d.store.insert_run(&skipped).await {
                Ok(()) => {
                    tracing::info!(
                        project = job.project,
                        job = job.config.name,
                        firing = %firing,
                        running = blocking.id,
                        "job firing skipped: previous run still going"
                    );
                    Ok(Some(Fired::Skipped(skipped.id)))
                }
                Err(StoreError::Conflict { .. }) => Ok(Some(Fired::AlreadyRecorded)),
                Err(e) => Err(e.into()),
            };
        }
        let firing_of = JobFiring {
            job: job.config.name.clone(),
            scheduled_for: Some(firing),
        };
        match d
            .start_job(
                &job.project,
                &job.environment,
                &job.config,
                firing_of,
                SCHEDULER,
            )
            .await
        {
            Ok((run, _events)) => {
                tracing::info!(
                    project = job.project,
                    job = job.config.name,
                    firing = %firing,
                    run = run.id,
                    "job fired"
                );
                Ok(Some(Fired::Started(run.id)))
            }
            Err(JobError::Run(RunError::Store(StoreError::Conflict { .. }))) => {
                Ok(Some(Fired::AlreadyRecorded))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `run` (going) keeps `job` from running at `firing`.
    fn blocks(&self, run: &Run, job: &JobConfig, firing: DateTime<Utc>) -> bool {
        if run.scheduled_for == Some(firing) {
            // This very firing, started already: not a previous run.
            return false;
        }
        let mine = run.server.as_deref() == Some(self.deployer.instance.as_str());
        if mine && run.created_at < self.started {
            // Left going by this server before it restarted.
            return false;
        }
        let lost = job.timeout + LOST_AFTER_TIMEOUT;
        let since = run.started_at.unwrap_or(run.created_at);
        now() - since < chrono::Duration::from_std(lost).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether `job` has a run created before `firing`: then it existed
    /// at that firing even if its deployment is newer (a redeploy while
    /// berth was down). A run made after the firing (`berth jobs run`)
    /// says nothing about it.
    async fn ran_before(&self, job: &ActiveJob, firing: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(!self
            .deployer
            .store
            .list_runs(&RunQuery {
                project: Some(job.project.clone()),
                environment: Some(job.environment.clone()),
                job: Some(job.config.name.clone()),
                created_before: Some(firing),
                limit: Some(1),
                ..Default::default()
            })
            .await?
            .is_empty())
    }
}

impl Deployer {
    /// The jobs of every environment (`project`: of one project;
    /// `environment`: of one environment), each from the berth.toml
    /// recorded with the active deployment of its service.
    pub async fn active_jobs(
        &self,
        project: Option<&str>,
        environment: Option<&str>,
    ) -> Result<Vec<ActiveJob>, StoreError> {
        let all = self
            .store
            .list_deployments(&DeploymentQuery {
                project: project.map(str::to_string),
                environment: environment.map(str::to_string),
                ..Default::default()
            })
            .await?;
        let mut out = Vec::new();
        for d in all.into_iter().filter(|d| d.is_active && d.image.is_some()) {
            let Some(text) = d.build.config.as_deref() else {
                continue;
            };
            let Ok(app) = crate::pipeline::parse_app_config(text) else {
                continue;
            };
            for job in app.jobs.into_values() {
                if job.service != d.service_name {
                    continue;
                }
                out.push(ActiveJob {
                    project: d.project_name.clone(),
                    environment: d.environment_name.clone(),
                    config: job,
                    deployment_id: d.id.clone(),
                    deployed_at: d.created_at,
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.project, &a.environment, &a.config.name).cmp(&(
                &b.project,
                &b.environment,
                &b.config.name,
            ))
        });
        Ok(out)
    }

    /// Records (before its instance starts) and starts a run of `job` in
    /// `environment`, for `firing`. The active deployment is read again
    /// here, so a deploy between the listing and the firing runs the new
    /// image; a firing recorded already is a store conflict.
    pub(crate) async fn start_job(
        self: &Arc<Self>,
        project: &str,
        environment: &str,
        job: &JobConfig,
        firing: JobFiring,
        requested_by: &str,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), JobError> {
        let req = RunRequest {
            project: project.to_string(),
            service: Some(job.service.clone()),
            environment: Some(environment.to_string()),
            command: berth_runtime::shell_command(&job.command),
            requested_by: requested_by.to_string(),
        };
        let prepared = self.prepare_run(req, Some(firing)).await?;
        Ok(self.launch_run(prepared, None, job.timeout).await?)
    }

    /// `berth jobs run`: runs `name` now, outside its schedule (no firing:
    /// it never collides with one, and a scheduled firing that comes while
    /// it runs is skipped).
    pub async fn run_job_now(
        self: &Arc<Self>,
        project: &str,
        environment: &str,
        name: &str,
        requested_by: &str,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), JobError> {
        self.store.get_project(project).await?;
        self.store.get_environment(project, environment).await?;
        let jobs = self.active_jobs(Some(project), Some(environment)).await?;
        let Some(job) = jobs.into_iter().find(|j| j.config.name == name) else {
            return Err(JobError::UnknownJob {
                project: project.to_string(),
                environment: environment.to_string(),
                job: name.to_string(),
            });
        };
        let firing = JobFiring {
            job: name.to_string(),
            scheduled_for: None,
        };
        self.start_job(project, environment, &job.config, firing, requested_by)
            .await
    }

    /// The jobs of a project as the API lists them, with their last runs.
    pub async fn list_jobs(
        &self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        let at = now();
        let mut out = Vec::new();
        for j in self.active_jobs(Some(project), environment).await? {
            let mut last_runs = self
                .store
                .list_runs(&RunQuery {
                    project: Some(j.project.clone()),
                    environment: Some(j.environment.clone()),
                    job: Some(j.config.name.clone()),
                    limit: Some(LAST_RUNS),
                    ..Default::default()
                })
                .await?;
            for r in &mut last_runs {
                r.output.clear();
            }
            out.push(job_view(&j, at, last_runs));
        }
        Ok(out)
    }
}

fn job_view(j: &ActiveJob, at: DateTime<Utc>, last_runs: Vec<Run>) -> Job {
    let schedule = &j.config.schedule;
    Job {
        name: j.config.name.clone(),
        project_name: j.project.clone(),
        environment_name: j.environment.clone(),
        service_name: j.config.service.clone(),
        schedule: schedule.to_string(),
        command: j.config.command.clone(),
        timeout_seconds: j.config.timeout.as_secs(),
        deployment_id: j.deployment_id.clone(),
        next_run_at: schedule.next_after(at),
        last_runs,
    }
}

/// The scheduler of this process: a round every second while it leads,
/// the list of jobs re-read every [`REFRESH_EVERY`]. The first round runs
/// at once, so a firing missed while berth was down runs at start.
pub async fn run(deployer: Arc<Deployer>) {
    let scheduler = Scheduler::new(deployer.clone(), now());
    let mut jobs: Vec<ActiveJob> = Vec::new();
    let mut refreshed: Option<tokio::time::Instant> = None;
    loop {
        if deployer.leadership.is_leader() {
            if refreshed.is_none_or(|r| r.elapsed() >= REFRESH_EVERY) {
                match deployer.active_jobs(None, None).await {
                    Ok(j) => {
                        jobs = j;
                        refreshed = Some(tokio::time::Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list jobs"),
                }
            }
            let fence = deployer.leadership.fence();
            berth_store::cluster::fenced(fence, scheduler.tick(now(), &jobs)).await;
        } else {
            refreshed = None;
        }
        // Just past the next whole second: firings are on whole minutes.
        let ms = 1000 - u64::from(now().timestamp_subsec_millis()) + 20;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

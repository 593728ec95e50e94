//! One-off runs (`berth run`): the command runs in a new instance of the
//! active deployment's image, with that environment's variables (secrets
//! included), the service's limits and hardening, and nothing published.
//!
//! Invariants:
//! - the run is recorded (who, what, when) before its instance starts, and
//!   ends terminal: its exit code, "out of memory", or why it never ran;
//! - every output line is redacted (the environment's secret values) before
//!   it is streamed or kept, so no run record or stream holds a secret;
//! - the instance carries the run's id as its deployment label, so the
//!   reconciler never takes it for a deployment's instance; a run left
//!   going by a restart of berth is marked failed by that server.

use crate::deployer::Deployer;
use crate::ids::{new_id, now};
use crate::pipeline::INSTANCE_LABEL;
use berth_core::model::{LogStream, PRODUCTION};
use berth_core::ops::{Run, RunLine, RunStatus};
use berth_core::redact::{Redactor, StreamRedactor};
use berth_runtime::{instance_name, Attach, AttachTty, InstanceSpec, RestartPolicy, TtySize};
use berth_store::{RunQuery, Slot, StoreError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest a `berth run` may take before it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How often a going run's record (its output so far) is saved, for
/// `berth logs <run-id>` and `--detach`.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Label marking an instance as a one-off run, with the run's id.
pub const RUN_LABEL: &str = "dev.berth.run";

/// What to run, and for whom.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub project: String,
    /// Default `web`.
    pub service: Option<String>,
    /// Default `production`.
    pub environment: Option<String>,
    /// argv; the image's entrypoint is kept.
    pub command: Vec<String>,
    pub requested_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no command given: put it after --, e.g. berth run --project shop -- ls")]
    EmptyCommand,
    #[error("project {project} has no active deployment of service {service} in environment {environment}: deploy it first")]
    NoActiveDeployment {
        project: String,
        service: String,
        environment: String,
    },
    /// The runtime cannot forward a stdin (Swarm).
    #[error("{0}")]
    StdinUnsupported(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The job a run belongs to, and its firing (`None`: `berth jobs run`).
#[derive(Clone, Debug)]
pub(crate) struct JobFiring {
    pub job: String,
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
}

/// A run ready to be recorded and started.
pub(crate) struct PreparedRun {
    pub run: Run,
    pub spec: InstanceSpec,
    pub redactor: Arc<Redactor>,
}

/// What a run's follower receives: output lines as they come (with a
/// terminal: its redacted bytes instead), then the finished record
/// (without its output).
#[derive(Clone, Debug)]
pub enum RunEvent {
    Line(RunLine),
    Output(Bytes),
    Done(Box<Run>),
}

/// A terminal for a run (`berth run` from a terminal): its size at start
/// and its later sizes.
pub struct RunTty {
    pub size: TtySize,
    pub resize: mpsc::Receiver<TtySize>,
}

/// Why a run with a terminal is refused on `--runtime swarm`.
const TTY_UNSUPPORTED_ON_SWARM: &str = "a terminal cannot be given to a run on --runtime swarm (its task runs on any node, reached only through the swarm's logs): run it with -T --no-stdin, or --detach";

/// How long a terminal's output that could be the start of a secret is
/// held back waiting for the rest.
const TTY_HOLD: Duration = Duration::from_millis(100);

impl Deployer {
    /// Records the run and starts it in the background. Returns the record
    /// and the stream of its events (the last one is [`RunEvent::Done`]);
    /// dropping the receiver does not stop the run. `stdin`, when given, is
    /// the process's stdin.
    pub async fn start_run(
        self: &Arc<Self>,
        req: RunRequest,
        stdin: Option<mpsc::Receiver<Bytes>>,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), RunError> {
        // Refused before anything is recorded or created.
        if stdin.is_some() && self.cfg.runtime == crate::config::RuntimeKind::Swarm {
            return Err(RunError::StdinUnsupported(
                berth_runtime::swarm::STDIN_UNSUPPORTED,
            ));
        }
        let prepared = self.prepare_run(req, None).await?;
        self.launch_run(prepared, stdin, RUN_TIMEOUT).await
    }

    /// [`Deployer::start_run`] with a terminal: the events carry its
    /// bytes ([`RunEvent::Output`], redacted) instead of lines; the record
    /// keeps its lines as stdout.
    pub async fn start_run_tty(
        self: &Arc<Self>,
        req: RunRequest,
        stdin: Option<mpsc::Receiver<Bytes>>,
        tty: RunTty,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), RunError> {
        // Refused before anything is recorded or created.
        if self.cfg.runtime == crate::config::RuntimeKind::Swarm {
            return Err(RunError::StdinUnsupported(TTY_UNSUPPORTED_ON_SWARM));
        }
        let prepared = self.prepare_run(req, None).await?;
        self.launch(prepared, stdin, Some(tty), RUN_TIMEOUT).await
    }

    /// Records `prepared` (before its instance starts) and starts it in the
    /// background; see [`Deployer::start_run`]. A job firing recorded
    /// already is [`StoreError::Conflict`] and nothing starts.
    pub(crate) async fn launch_run(
        self: &Arc<Self>,
        prepared: PreparedRun,
        stdin: Option<mpsc::Receiver<Bytes>>,
        timeout: Duration,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), RunError> {
        self.launch(prepared, stdin, None, timeout).await
    }

    async fn launch(
        self: &Arc<Self>,
        prepared: PreparedRun,
        stdin: Option<mpsc::Receiver<Bytes>>,
        tty: Option<RunTty>,
        timeout: Duration,
    ) -> Result<(Run, mpsc::Receiver<RunEvent>), RunError> {
        let PreparedRun {
            run,
            spec,
            redactor,
        } = prepared;
        // Recorded before the instance starts.
        self.store.insert_run(&run).await?;
        let (events_tx, events) = mpsc::channel(256);
        let this = self.clone();
        let record = run.clone();
        // A job firing's run keeps the leader's fence (a `berth run` has none).
        tokio::spawn(berth_store::cluster::inherit(async move {
            this.execute_run(record, spec, stdin, tty, timeout, redactor, events_tx)
                .await;
        }));
        Ok((run, events))
    }

    /// The record and instance of a run of `req` (of the job firing
    /// `job`, when given), not recorded yet: the active deployment's image
    /// of the service, the environment's variables, the service's limits
    /// and hardening.
    pub(crate) async fn prepare_run(
        &self,
        req: RunRequest,
        job: Option<JobFiring>,
    ) -> Result<PreparedRun, RunError> {
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(RunError::EmptyCommand);
        }
        let environment = req.environment.unwrap_or_else(|| PRODUCTION.into());
        let service = req
            .service
            .unwrap_or_else(|| berth_core::model::DEFAULT_SERVICE.into());
        self.store.get_project(&req.project).await?;
        self.store
            .get_environment(&req.project, &environment)
            .await?;
        let slot = Slot {
            project: req.project.clone(),
            environment: environment.clone(),
            service: service.clone(),
        };
        let no_active = || RunError::NoActiveDeployment {
            project: req.project.clone(),
            service: service.clone(),
            environment: environment.clone(),
        };
        let d = self
            .store
            .active_deployment(&slot)
            .await?
            .ok_or_else(no_active)?;
        let image = d.image.clone().ok_or_else(no_active)?;
        let settings = crate::pipeline::service_from_record(&d);
        let vars = self
            .store
            .resolve_variables(&req.project, &environment)
            .await?;
        let redactor = Arc::new(Redactor::new(
            vars.iter().filter(|v| v.secret).map(|v| v.value.as_str()),
        ));

        let id = new_id();
        let role = if job.is_some() { "job" } else { "run" };
        let mut spec = InstanceSpec::new(
            instance_name(&[role, &req.project, &service], &id),
            image.reference.clone(),
        );
        spec.env = self.env_for(&d, None, &vars);
        spec.env.push(("BERTH_RUN_ID".into(), id.clone()));
        spec.labels = berth_runtime::berth_labels(&req.project, &service, &environment, &id);
        spec.labels
            .insert(INSTANCE_LABEL.into(), self.instance.clone());
        spec.labels.insert("dev.berth.role".into(), role.into());
        spec.labels.insert(RUN_LABEL.into(), id.clone());
        crate::pipeline::isolation_label(&settings, &mut spec.labels);
        spec.limits = crate::pipeline::limits_for(&settings);
        spec.restart = RestartPolicy::Never;
        spec.command = Some(req.command.clone());
        // A run sees the service's volumes, as its instances do.
        spec.mounts = self.volume_mounts(&req.project, &environment, &settings);

        let at = now();
        let run = Run {
            id,
            project_name: req.project.clone(),
            environment_name: environment,
            service_name: service,
            job: job.as_ref().map(|j| j.job.clone()),
            command: req.command.clone(),
            requested_by: req.requested_by,
            deployment_id: Some(d.id.clone()),
            server: Some(self.instance.clone()),
            scheduled_for: job.and_then(|j| j.scheduled_for),
            status: RunStatus::Running,
            exit_code: None,
            oom_killed: false,
            error: None,
            created_at: at,
            started_at: Some(at),
            completed_at: None,
            output: Vec::new(),
            dropped_lines: 0,
        };
        Ok(PreparedRun {
            run,
            spec,
            redactor,
        })
    }

    /// Runs `spec` for the recorded `run` to its end: streams redacted
    /// lines to `events`, saves the output as it grows, and records the
    /// outcome. Never returns an error: a failure to start is the run's
    /// outcome.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn execute_run(
        self: &Arc<Self>,
        mut run: Run,
        spec: InstanceSpec,
        stdin: Option<mpsc::Receiver<Bytes>>,
        tty: Option<RunTty>,
        timeout: Duration,
        redactor: Arc<Redactor>,
        events: mpsc::Sender<RunEvent>,
    ) -> Run {
        let (out_tx, mut out_rx) = mpsc::channel(256);
        let with_tty = tty.is_some();
        let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(256);
        let io = Attach {
            stdin,
            output: out_tx,
            tty: tty.map(|t| AttachTty {
                size: t.size,
                resize: t.resize,
                raw: raw_tx,
            }),
        };
        // The terminal's bytes go to the follower redacted, as they come.
        let raw_pump = with_tty.then(|| {
            tokio::spawn(forward_tty_output(
                raw_rx,
                StreamRedactor::new(&redactor),
                events.clone(),
            ))
        });
        let runtime = self.runtime.clone();
        let task = tokio::spawn(async move { runtime.run_attached(&spec, io, timeout).await });
        let mut last_save = tokio::time::Instant::now();
        while let Some(chunk) = out_rx.recv().await {
            let line = RunLine {
                ts: chunk.ts,
                stream: match chunk.stream {
                    berth_runtime::LogStream::Stdout => LogStream::Stdout,
                    berth_runtime::LogStream::Stderr => LogStream::Stderr,
                },
                line: redactor.redact(&chunk.line),
            };
            run.push_line(line.clone());
            // A follower that went away does not stop the run.
            if !with_tty {
                let _ = events.send(RunEvent::Line(line)).await;
            }
            if last_save.elapsed() >= SAVE_EVERY {
                self.save_run_logged(&run).await;
                last_save = tokio::time::Instant::now();
            }
        }
        let outcome = match task.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("run task failed: {e}")),
        };
        if let Some(pump) = raw_pump {
            // Its sender went with the runtime's task: it ends by itself.
            let _ = pump.await;
        }
        match outcome {
            Ok(out) => {
                run.exit_code = Some(out.exit_code);
                run.oom_killed = out.oom_killed;
                run.status = if out.success() {
                    RunStatus::Succeeded
                } else {
                    RunStatus::Failed
                };
            }
            Err(e) => {
                run.status = RunStatus::Failed;
                run.error = Some(redactor.redact(&e));
            }
        }
        run.completed_at = Some(now());
        self.save_run_logged(&run).await;
        let mut done = run.clone();
        done.output.clear();
        let _ = events.send(RunEvent::Done(Box::new(done))).await;
        run
    }

    async fn save_run_logged(&self, run: &Run) {
        if let Err(e) = self.store.save_run(run).await {
            tracing::error!(run = run.id, error = %e, "could not save run");
        }
    }

    /// At start: runs this server left going when it stopped are failed
    /// (their instances are removed by the reconciler as orphans).
    pub async fn fail_interrupted_runs(&self) {
        let going = match self
            .store
            .list_runs(&RunQuery {
                unfinished: true,
                ..Default::default()
            })
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot list unfinished runs");
                return;
            }
        };
        for mut run in going
            .into_iter()
            .filter(|r| r.server.as_deref() == Some(self.instance.as_str()))
        {
            run.status = RunStatus::Failed;
            run.error = Some("interrupted by a restart of berth".into());
            run.completed_at = Some(now());
            self.save_run_logged(&run).await;
        }
    }
}

/// Sends a terminal's bytes to the follower through `redactor`; bytes it
/// holds back (a possible start of a secret) go out when nothing more
/// comes for [`TTY_HOLD`], or at the end.
async fn forward_tty_output(
    mut raw: mpsc::Receiver<Bytes>,
    mut redactor: StreamRedactor,
    events: mpsc::Sender<RunEvent>,
) {
    loop {
        let next = if redactor.holds() {
            match tokio::time::timeout(TTY_HOLD, raw.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let held = redactor.flush();
                    let _ = events.send(RunEvent::Output(held.into())).await;
                    continue;
                }
            }
        } else {
            raw.recv().await
        };
        let Some(chunk) = next else { break };
        let out = redactor.push(&chunk);
        if !out.is_empty() {
            let _ = events.send(RunEvent::Output(out.into())).await;
        }
    }
    let held = redactor.flush();
    if !held.is_empty() {
        let _ = events.send(RunEvent::Output(held.into())).await;
    }
}

//! The deployer: creates deployments, queues them per service slot, runs
//! one pipeline per slot at a time, and cancels.
//!
//! Invariants:
//! - at most one pipeline runs per slot (project, environment, service);
//!   a newer trigger replaces a queued older one, which ends cancelled
//!   saying by which deployment;
//! - builds run under a global limit (`build_concurrency`);
//! - every deployment created here ends in a terminal state: the pipeline
//!   returns only through `succeed`, `fail` or `cancel`, and a restart
//!   reconciles what a crash interrupted (see `reconcile`).

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::logs::LogHub;
use crate::monitor::Monitors;
use crate::ServerConfig;
use berth_build::Builder;
use berth_core::hosts;
use berth_core::model::{
    BuildInfo, Deployment, Step, StepStatus, Trigger, ALL_STEPS, DEFAULT_SERVICE, PRODUCTION,
};
use berth_core::state::{transition, Event, Health, Stage, Status};
use berth_edge::Edge;
use berth_runtime::{Images, Runtime};
use berth_store::{DeploymentQuery, Slot, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct SlotQueue {
    running: Option<String>,
    queued: VecDeque<String>,
}

pub struct Deployer {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    /// Where the runtime starts images from (the seam beside `runtime`).
    pub images: Arc<dyn Images>,
    pub builder: Arc<dyn Builder>,
    /// Whether the container engine answered at start (for `/health`).
    pub engine_connected: bool,
    pub edge: Edge,
    pub logs: LogHub,
    pub cfg: Arc<ServerConfig>,
    pub monitors: Monitors,
    slots: Mutex<HashMap<Slot, SlotQueue>>,
    pub(crate) build_slots: Arc<Semaphore>,
    /// Builds hold it shared, image removal exclusively: removing an image
    /// also removes its untagged parent layers, which a concurrent legacy
    /// build may have just taken from its cache.
    pub(crate) image_gate: tokio::sync::RwLock<()>,
    /// One push's deployments discover new services one at a time.
    pub(crate) fan_out_lock: tokio::sync::Mutex<()>,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Serialises route switches, so two slots never race on the edge.
    pub(crate) switch_lock: tokio::sync::Mutex<()>,
    /// This berth's identity on the container engine (`dev.berth.instance`
    /// label): it only ever adopts or removes its own containers, even when
    /// several berths share one engine.
    pub instance: String,
    pub metrics: crate::metrics::Metrics,
    /// Every queue runner and pipeline task this process spawned, so a test
    /// can drop them all at once (a crash).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Whether this server leads (always, on a single server): only the
    /// leader runs pipelines; see `cluster`.
    pub leadership: crate::cluster::Leadership,
    /// Set while the control plane is handed to another process (see
    /// [`Deployer::quiesce`]): nothing new starts; queued deployments stay
    /// queued in the store for the next process.
    quiescing: std::sync::atomic::AtomicBool,
    /// Named volumes (`[services.<name>.volumes]`); set only where the
    /// runtime has them (Docker), see `volumes`.
    pub volumes: std::sync::OnceLock<Arc<dyn berth_runtime::Volumes>>,
    /// `--console-host` and the private listener the edge sends it to; set
    /// by the server at start (see `console::host`).
    pub console_host: std::sync::OnceLock<Arc<crate::console::host::ConsoleHost>>,
    /// Bumped after this process saves a deployment record: what wakes the
    /// API's deployment event streams (`api::events`) at once.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The server log's line for a deployment that just ended (one per
/// outcome): id, slot, trigger, result and, when it did not succeed, why.
fn log_outcome(d: &Deployment) {
    let slot = format!(
        "{}/{}/{}",
        d.project_name, d.environment_name, d.service_name
    );
    let result = d.status.as_str();
    match (d.status, d.failure_message.as_deref()) {
        (Status::Succeeded, _) => tracing::info!(
            deployment = %d.id,
            %slot,
            trigger = d.trigger.as_str(),
            result,
            "deployment succeeded"
        ),
        (_, reason) => tracing::warn!(
            deployment = %d.id,
            %slot,
            trigger = d.trigger.as_str(),
            result,
            reason = reason.unwrap_or("none given"),
            "deployment {result}"
        ),
    }
}

/// The first 12 characters of a commit SHA, as berth's log lines show it.
pub(crate) fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The side effects a deployer drives, one seam each.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn Images>,
    pub builder: Arc<dyn Builder>,
    pub engine_connected: bool,
    pub edge: Edge,
}

/// What a new deployment should be.
pub struct NewDeployment {
    pub project: String,
    pub service: Option<String>,
    pub environment: Option<String>,
    pub reference: Option<String>,
    pub trigger: Trigger,
    pub source: Option<Deployment>,
    /// Clone from here instead of the project's repository.
    pub source_repo: Option<String>,
}

impl Deployer {
    pub fn new(
        backends: Backends,
        logs: LogHub,
        cfg: Arc<ServerConfig>,
        instance: String,
    ) -> Arc<Self> {
        Self::with_leadership(backends, logs, cfg, instance, Default::default())
    }

    /// A deployer of one server of a cluster (or of a single server).
    pub fn with_leadership(
        backends: Backends,
        logs: LogHub,
        cfg: Arc<ServerConfig>,
        instance: String,
        leadership: crate::cluster::Leadership,
    ) -> Arc<Self> {
        let monitors = Monitors::default();
        let Backends {
            store,
            runtime,
            images,
            builder,
            engine_connected,
            edge,
        } = backends;
        let metrics = crate::metrics::Metrics::new(logs.dropped_counter());
        Arc::new(Deployer {
            build_slots: Arc::new(Semaphore::new(cfg.build_concurrency.max(1))),
            store,
            runtime,
            images,
            builder,
            engine_connected,
            edge,
            logs,
            cfg,
            monitors,
            slots: Default::default(),
            cancels: Default::default(),
            switch_lock: Default::default(),
            image_gate: Default::default(),
            fan_out_lock: Default::default(),
            instance,
            metrics,
            tasks: Default::default(),
            leadership,
            quiescing: Default::default(),
            volumes: Default::default(),
            console_host: Default::default(),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// Wake the deployment event streams: a record was just saved.
    pub(crate) fn deployment_saved(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every [`Deployer::deployment_saved`] (changes
    /// saved by another server of a cluster are not signalled: readers
    /// also look again every second).
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn is_quiescing(&self) -> bool {
        self.quiescing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops starting deployments and waits up to `grace` for the running
    /// pipelines to end; those still running then are stopped where they
    /// stand (as a crash would: the next process's reconcile ends them),
    /// and so are the log followers and health monitors. Returns the ids of
    /// the deployments interrupted. Queued deployments stay queued in the
    /// store. [`Deployer::resume`] undoes it.
    pub async fn quiesce(&self, grace: std::time::Duration) -> Vec<String> {
        self.quiescing
            .store(true, std::sync::atomic::Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        let running = || {
            self.cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        while !running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let interrupted = running();
        self.drop_leader_work();
        interrupted
    }

    /// Starts deployments again after [`Deployer::quiesce`] (a hand-over
    /// that failed); run [`Deployer::reconcile`] next to pick up what was
    /// queued or interrupted meanwhile.
    pub fn resume(&self) {
        self.quiescing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The one way the server moves a deployment: the state machine's
    /// `transition`. An illegal (state, event) leaves it unchanged, is
    /// logged with the deployment id and the event, and counted in
    /// `/metrics` (`berth_illegal_transitions_total`).
    pub(crate) fn transition(&self, d: &mut Deployment, event: Event) -> bool {
        let was_terminal = d.status.is_terminal();
        match d.apply(event) {
            Ok(_) => {
                if d.status.is_terminal() && !was_terminal {
                    log_outcome(d);
                }
                true
            }
            Err(e) => {
                tracing::error!(deployment = d.id, event = ?event, error = %e, "illegal transition");
                self.metrics.illegal_transition();
                false
            }
        }
    }

    /// The public port of the edge in URLs.
    pub fn http_port(&self) -> u16 {
        self.cfg.http_listen.port()
    }

    pub fn route_url(&self, project: &str, service: &str, env: &str) -> String {
        let host = hosts::route_host(self.cfg.base_domain(), project, service, env);
        hosts::url("http", &host, Some(self.http_port()))
    }

    pub fn preview_url(&self, project: &str, service: &str, env: &str, id: &str) -> String {
        let host = hosts::preview_host(self.cfg.base_domain(), project, service, env, id);
        hosts::url("http", &host, Some(self.http_port()))
    }

    /// Validate, record and queue a new deployment; returns it queued.
    pub async fn create(self: &Arc<Self>, req: NewDeployment) -> ApiResult<Deployment> {
        let d = self.record_new(req).await?;
        self.enqueue(d.clone()).await;
        Ok(d)
    }

    /// Validate and record a new deployment, queued, without queueing it.
    pub(crate) async fn record_new(&self, req: NewDeployment) -> ApiResult<Deployment> {
        let project = self.store.get_project(&req.project).await?;
        let env_name = req.environment.unwrap_or_else(|| PRODUCTION.to_string());
        berth_core::names::environment_name(&env_name)?;
        let env = self.store.get_environment(&project.name, &env_name).await?;
        let service = req.service.unwrap_or_else(|| DEFAULT_SERVICE.to_string());
        berth_core::names::service_name(&service)?;
        let reference = match &req.reference {
            Some(r) if r.trim().is_empty() => {
                return Err(ApiError::bad_request("ref must not be empty"))
            }
            Some(r)
                if r.starts_with('-') || r.contains(char::is_whitespace) || r.contains("..") =>
            {
                return Err(ApiError::bad_request(format!(
                    "ref {r:?} is not a valid git ref"
                )))
            }
            Some(r) => r.clone(),
            None => env
                .branch
                .clone()
                .unwrap_or_else(|| project.default_branch.clone()),
        };
        // What the ref names now, recorded with the request (see `pin_ref`).
        let pinned = match &req.source {
            None => {
                self.pin_ref(&project.name, req.source_repo.as_deref(), &reference)
                    .await
            }
            Some(_) => None,
        };
        let id = new_id();
        let mut d = Deployment {
            id: id.clone(),
            project_name: project.name.clone(),
            service_name: service.clone(),
            environment_name: env.name.clone(),
            status: Status::Queued,
            promotion_stage: Stage::Pending,
            health: Health::Pending,
            is_active: false,
            route_url: Some(self.route_url(&project.name, &service, &env.name)),
            preview_url: Some(self.preview_url(&project.name, &service, &env.name, &id)),
            failure_message: None,
            created_at: now(),
            started_at: None,
            completed_at: None,
            reference,
            commit: pinned,
            trigger: req.trigger,
            source_deployment_id: None,
            image: None,
            build: BuildInfo::default(),
            steps: ALL_STEPS.iter().map(|s| Step::pending(*s)).collect(),
            canary_weight: None,
            replicas: 1,
            instances: Vec::new(),
            bake_until: None,
            runtime: None,
            source_repo: req.source_repo.clone(),
            version: 0,
        };
        if let Some(src) = &req.source {
            d.source_deployment_id = Some(src.id.clone());
            d.commit = src.commit.clone();
            d.image = src.image.clone();
            d.source_repo = src.source_repo.clone();
            d.build = BuildInfo {
                cache_hit: false,
                ..src.build.clone()
            };
            if let Some(c) = &src.commit {
                d.reference = c.sha.clone();
            }
        }
        self.store.insert_deployment(&d).await?;
        self.logs.event(
            &d.id,
            &format!(
                "deployment {} created for service {} in {} ({}, ref {}{})",
                d.id,
                d.service_name,
                d.environment_name,
                d.trigger.as_str(),
                d.reference,
                match &d.commit {
                    Some(c) if c.sha != d.reference => format!(" at {}", short_sha(&c.sha)),
                    _ => String::new(),
                }
            ),
        );
        Ok(d)
    }

    /// Put a recorded, queued deployment in its slot's queue. On a
    /// follower it stays queued in the store, where the leader picks it up
    /// (`pick_up_queued`).
    pub async fn enqueue(self: &Arc<Self>, d: Deployment) {
        if !self.leadership.is_leader() || self.is_quiescing() {
            // the leader (or, after a hand-over, the next process) takes
            // it from the store
            return;
        }
        let slot = Slot::of(&d);
        let (start_now, replaced) = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let q = slots.entry(slot.clone()).or_default();
            if q.running.as_deref() == Some(d.id.as_str()) || q.queued.contains(&d.id) {
                return; // already here (created here and picked up too)
            }
            let replaced: Vec<String> = q.queued.drain(..).collect();
            if q.running.is_none() {
                q.running = Some(d.id.clone());
                (true, replaced)
            } else {
                q.queued.push_back(d.id.clone());
                (false, replaced)
            }
        };
        for old in replaced {
            self.cancel_queued(&old, &format!("replaced by newer deployment {}", d.id))
                .await;
        }
        if start_now {
            self.spawn_slot_runner(slot, d.id);
        } else {
            self.logs.event(
                &d.id,
                "queued: another deployment of this service is in progress",
            );
        }
    }

    /// The leader: queue the deployments other servers recorded queued
    /// (oldest first, so a newer one replaces an older one as usual).
    pub async fn pick_up_queued(self: &Arc<Self>) -> Result<(), berth_store::StoreError> {
        let unfinished = self
            .store
            .list_deployments(&DeploymentQuery {
                unfinished: true,
                ..Default::default()
            })
            .await?;
        for d in unfinished.into_iter().rev() {
            if d.status != Status::Queued || !self.leadership.is_leader() {
                continue;
            }
            let known = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                slots.get(&Slot::of(&d)).is_some_and(|q| {
                    q.running.as_deref() == Some(d.id.as_str()) || q.queued.contains(&d.id)
                })
            };
            if !known {
                self.logs.event(&d.id, "picked up by the leader");
                self.enqueue(d).await;
            }
        }
        Ok(())
    }

    pub(crate) fn track_leader_task(&self, task: tokio::task::AbortHandle) {
        self.track(task);
    }

    /// This server stopped leading: every pipeline, queue runner, monitor
    /// and queue goes at once (the new leader reconciles what they left;
    /// a write they still attempt is refused by the fence).
    pub(crate) fn drop_leader_work(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.monitors.stop_all();
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn spawn_slot_runner(self: &Arc<Self>, slot: Slot, first: String) {
        let this = self.clone();
        let fence = self.leadership.fence();
        let runner = tokio::spawn(berth_store::cluster::fenced(fence, async move {
            let mut next = Some(first);
            while let Some(id) = next {
                this.run_one(&id).await;
                if this.is_quiescing() {
                    return; // the rest stays queued in the store
                }
                next = {
                    let mut slots = this.slots.lock().unwrap_or_else(|p| p.into_inner());
                    let q = slots.entry(slot.clone()).or_default();
                    q.running = q.queued.pop_front();
                    q.running.clone()
                };
            }
        }));
        self.track(runner.abort_handle());
    }

    pub(crate) fn track(&self, task: tokio::task::AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// A crash of this process, for tests: every pipeline, queue runner,
    /// log follower and health monitor is dropped where it stands.
    #[cfg(test)]
    pub(crate) fn abort_all_for_tests(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.monitors.stop_all();
    }

    async fn run_one(self: &Arc<Self>, id: &str) {
        let d = match self.store.get_deployment(id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(deployment = id, error = %e, "cannot load queued deployment");
                return;
            }
        };
        if d.status != Status::Queued {
            return; // cancelled while queued
        }
        let waited = (now() - d.created_at).to_std().unwrap_or_default();
        if waited > self.cfg.queue_timeout {
            let mut d = d;
            let msg = format!(
                "waited {}s in the queue, longer than the {}s limit; deploy again",
                waited.as_secs(),
                self.cfg.queue_timeout.as_secs()
            );
            self.force_fail(&mut d, &msg).await;
            return;
        }
        let token = CancellationToken::new();
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), token.clone());
        let this = self.clone();
        let run_id = id.to_string();
        // The pipeline runs in its own task, so a panic in it fails the
        // deployment instead of leaving it running.
        let fence = self.leadership.fence();
        let pipeline = tokio::spawn(berth_store::cluster::fenced(fence, async move {
            this.execute(d, token).await
        }));
        self.track(pipeline.abort_handle());
        let res = pipeline.await;
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run_id);
        if let Err(e) = res {
            tracing::error!(deployment = run_id, error = %e, "pipeline task panicked");
            if let Ok(mut d) = self.store.get_deployment(&run_id).await {
                if !d.status.is_terminal() {
                    let msg =
                        "internal error: the pipeline stopped unexpectedly; see the server log";
                    self.force_fail(&mut d, msg).await;
                }
            }
        }
    }

    /// Mark a deployment failed without a pipeline (panic, restart).
    pub async fn force_fail(&self, d: &mut Deployment, msg: &str) {
        let fail = |d: &mut Deployment| {
            d.failure_message = Some(msg.to_string());
            d.canary_weight = None;
            self.transition(d, Event::Fail);
            for step in d.steps.iter_mut() {
                if step.status == StepStatus::Running {
                    step.status = StepStatus::Failed;
                    step.completed_at = Some(now());
                }
            }
            d.completed_at = Some(now());
        };
        fail(d);
        self.logs.event(&d.id, &format!("failed: {msg}"));
        let redo = |mine: &mut Deployment, fresh: Deployment| {
            if fresh.status.is_terminal() {
                return false;
            }
            *mine = fresh;
            mine.runtime = None;
            fail(mine);
            true
        };
        if let Err(e) = crate::saving::save_retrying(&*self.store, d, redo).await {
            tracing::error!(deployment = d.id, error = %e, "cannot record failure");
        }
        self.deployment_saved();
    }

    pub(crate) async fn cancel_queued(&self, id: &str, why: &str) {
        let cancel = |d: &mut Deployment| {
            let before = d.failure_message.replace(format!("cancelled: {why}"));
            let done = self.transition(d, Event::Cancel);
            if !done {
                d.failure_message = before;
            }
            done
        };
        let cancel = |d: &mut Deployment| match cancel(d) {
            true => {
                d.completed_at = Some(now());
                for step in d.steps.iter_mut() {
                    step.status = StepStatus::Cancelled;
                }
                true
            }
            false => false,
        };
        if let Ok(mut d) = self.store.get_deployment(id).await {
            if cancel(&mut d) {
                // A pipeline that picked it up in between wins: the record
                // is no longer queued and the cancel is not redone.
                let redo = |mine: &mut Deployment, fresh: Deployment| {
                    *mine = fresh;
                    mine.status == Status::Queued && cancel(mine)
                };
                match crate::saving::save_retrying(&*self.store, &mut d, redo).await {
                    Ok(crate::saving::Saved::Written) => {
                        self.deployment_saved();
                        self.logs.event(id, &format!("cancelled: {why}"))
                    }
                    Ok(crate::saving::Saved::GaveUp) => {}
                    Err(e) => tracing::error!(deployment = id, error = %e, "cannot record cancel"),
                }
            }
        }
    }

    /// `berth cancel`: a queued deployment ends at once; a running one at
    /// its next step boundary (a build is stopped right away).
    pub async fn cancel(&self, id: &str) -> ApiResult<Deployment> {
        let d = self.store.get_deployment(id).await?;
        if d.status.is_terminal() {
            return Err(ApiError::conflict(format!(
                "deployment {id} already ended ({})",
                d.status
            )));
        }
        if d.status == Status::Queued {
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(q) = slots.get_mut(&Slot::of(&d)) {
                    q.queued.retain(|x| x != id);
                }
            }
            self.cancel_queued(id, "cancelled by request").await;
            if self.leadership.is_leader() {
                return Ok(self.store.get_deployment(id).await?);
            }
            // Off the leader, the leader may have picked it up in between:
            // then it is cancelled like a running one, below.
            let d = self.store.get_deployment(id).await?;
            if d.status.is_terminal() {
                return Ok(d);
            }
        }
        let d = self.store.get_deployment(id).await?;
        if transition(d.state(), Event::Cancel).is_err() {
            return Err(ApiError::conflict(format!(
                "deployment {id} is at stage {} and can no longer be cancelled; roll back instead",
                d.promotion_stage
            )));
        }
        let token = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        match token {
            Some(t) => t.cancel(),
            // A follower: the leader runs it; the request goes through the
            // store and the leader carries it out (`carry_out_cancels`).
            None if !self.leadership.is_leader() => self.store.request_cancel(id).await?,
            None => {
                return Err(ApiError::conflict(format!(
                    "deployment {id} is not running"
                )))
            }
        }
        // Wait briefly for the pipeline to record it.
        for _ in 0..100 {
            let d = self.store.get_deployment(id).await?;
            if d.status.is_terminal() {
                return Ok(d);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(self.store.get_deployment(id).await?)
    }

    /// On the leader: the cancels asked of other servers (recorded with
    /// `Store::request_cancel`), done as if asked here. A request stays
    /// until its deployment runs here, is queued here, ended, or passed the
    /// stage where it can be cancelled.
    pub async fn carry_out_cancels(&self) -> Result<(), berth_store::StoreError> {
        for id in self.store.cancel_requests().await? {
            if !self.leadership.is_leader() {
                return Ok(());
            }
            let token = self
                .cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            let done = match token {
                Some(t) => {
                    self.logs.event(&id, "cancel asked of another server");
                    t.cancel();
                    true
                }
                None => match self.store.get_deployment(&id).await {
                    Err(berth_store::StoreError::NotFound { .. }) => true,
                    Err(e) => return Err(e),
                    Ok(d) if d.status.is_terminal() => true,
                    Ok(d) if d.status == Status::Queued => {
                        {
                            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(q) = slots.get_mut(&Slot::of(&d)) {
                                q.queued.retain(|x| x != &id);
                            }
                        }
                        self.cancel_queued(&id, "cancelled by request").await;
                        true
                    }
                    // Past the cancellable stages: the asker was told so
                    // (or sees it still running when its wait ends).
                    Ok(d) => transition(d.state(), Event::Cancel).is_err(),
                },
            };
            if done {
                self.store.clear_cancel_request(&id).await?;
            }
        }
        Ok(())
    }

    /// The deployment that was active before the current one of a slot.
    pub async fn rollback_target(&self, slot: &Slot) -> ApiResult<(Deployment, Deployment)> {
        let active = self.store.active_deployment(slot).await?.ok_or_else(|| {
            ApiError::conflict(format!(
                "service {} in {} of project {} has no active deployment to roll back",
                slot.service, slot.environment, slot.project
            ))
        })?;
        let all = self
            .store
            .list_deployments(&DeploymentQuery {
                project: Some(slot.project.clone()),
                environment: Some(slot.environment.clone()),
                service: Some(slot.service.clone()),
                ..Default::default()
            })
            .await?;
        let target = all
            .into_iter()
            .filter(|d| {
                d.id != active.id
                    && d.status == Status::Succeeded
                    && matches!(d.promotion_stage, Stage::Superseded | Stage::RolledBack)
                    && d.image.is_some()
            })
            .max_by_key(|d| d.completed_at)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "no previous deployment of service {} in {} to roll back to",
                    slot.service, slot.environment
                ))
            })?;
        Ok((active, target))
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

impl Deployer {
    /// Tear an environment down: cancel its pipelines, stop its containers,
    /// remove its routes, then delete it (history is kept).
    pub async fn teardown_environment(&self, project: &str, env: &str) -> ApiResult<()> {
        if env == PRODUCTION {
            return Err(ApiError::bad_request(
                "the production environment cannot be deleted",
            ));
        }
        self.store.get_environment(project, env).await?;
        let ds = self
            .store
            .list_deployments(&DeploymentQuery {
                project: Some(project.to_string()),
                environment: Some(env.to_string()),
                ..Default::default()
            })
            .await?;
        for d in ds.iter().filter(|d| !d.status.is_terminal()) {
            let _ = self.cancel(&d.id).await;
        }
        // Warm deployments in their bake window go first: nothing to flip
        // back to once the environment is gone.
        for d in ds.iter().filter(|d| crate::pipeline::is_warm(d)) {
            let mut d = d.clone();
            self.monitors.stop(&d.id);
            let ids = crate::pipeline::replicas::instance_ids(&d);
            let _ = self.runtime.remove_all(&ids).await;
            d.runtime = None;
            d.instances.clear();
            d.bake_until = None;
            self.store.save_deployments(&mut [&mut d], None).await?;
        }
        for d in ds.iter().filter(|d| d.is_active) {
            let mut d = d.clone();
            self.monitors.stop(&d.id);
            let _ = self.edge.apply(vec![
                berth_edge::RouteChange::Remove {
                    host: self.route_host(&d),
                },
                berth_edge::RouteChange::Remove {
                    host: self.preview_host(&d),
                },
            ]);
            if let Some(rt) = d.runtime.take() {
                let _ = self.runtime.remove(&rt.instance_id).await;
            }
            self.transition(&mut d, Event::Stop);
            self.logs
                .event(&d.id, "stage: stopped — environment torn down");
            self.store
                .save_deployments(
                    &mut [&mut d.clone()],
                    Some(berth_store::Activate {
                        slot: Slot::of(&d),
                        deployment_id: None,
                    }),
                )
                .await?;
        }
        for dom in self.store.list_domains(Some(project)).await? {
            if dom.environment_name == env {
                self.store.remove_domain(&dom.hostname).await?;
            }
        }
        self.store.delete_environment(project, env).await?;
        // Its own volumes go with it (never another environment's).
        self.remove_environment_volumes(project, env).await;
        if let Err(e) = self.sync_routes().await {
            tracing::warn!(error = %e, "route sync after teardown failed");
        }
        // Its images go too (retention keeps none for a gone environment).
        if let Err(e) = self.prune_project_images(project).await {
            tracing::warn!(error = %e, "image pruning after teardown failed");
        }
        Ok(())
    }
}

impl Deployer {
    /// Preview environments (`pr-<n>`) that had no deployment for `ttl`
    /// are torn down with their images, so a missed "closed" webhook never
    /// leaves a preview running forever. Returns `project/env` of each.
    pub async fn reap_idle_previews(
        &self,
        ttl: std::time::Duration,
    ) -> anyhow::Result<Vec<String>> {
        if self.is_quiescing() {
            return Ok(Vec::new()); // handed over: the next process reaps
        }
        let cutoff = now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut reaped = Vec::new();
        for p in self.store.list_projects().await? {
            for e in self.store.list_environments(&p.name).await? {
                if e.kind != berth_core::model::EnvironmentKind::Preview {
                    continue;
                }
                let recent = self
                    .store
                    .list_deployments(&DeploymentQuery {
                        project: Some(p.name.clone()),
                        environment: Some(e.name.clone()),
                        limit: Some(20),
                        ..Default::default()
                    })
                    .await?;
                // A deployment still under way is activity, however long
                // its build takes.
                if recent.iter().any(|d| !d.status.is_terminal()) {
                    continue;
                }
                let last = recent
                    .iter()
                    .map(|d| d.completed_at.unwrap_or(d.created_at))
                    .chain([e.created_at])
                    .max()
                    .unwrap_or(e.created_at);
                if last > cutoff {
                    continue;
                }
                match self.teardown_environment(&p.name, &e.name).await {
                    Ok(()) => {
                        tracing::info!(
                            project = %p.name,
                            environment = %e.name,
                            idle_since = %last,
                            "preview environment idle past --preview-ttl: torn down"
                        );
                        reaped.push(format!("{}/{}", p.name, e.name));
                    }
                    Err(err) => tracing::warn!(
                        project = %p.name,
                        environment = %e.name,
                        error = %err.message,
                        "idle preview environment could not be torn down"
                    ),
                }
            }
        }
        Ok(reaped)
    }

    /// Deploy every service of an environment at `sha` (or its branch
    /// head): the services deployed in the project before, else `web`.
    pub async fn deploy_environment(
        self: &Arc<Self>,
        project: &str,
        env: &str,
        sha: Option<String>,
        trigger: Trigger,
        source_repo: Option<String>,
    ) -> ApiResult<Vec<Deployment>> {
        let past = self
            .store
            .list_deployments(&DeploymentQuery {
                project: Some(project.to_string()),
                limit: Some(500),
                ..Default::default()
            })
            .await?;
        let mut services: Vec<String> = past.iter().map(|d| d.service_name.clone()).collect();
        services.sort();
        services.dedup();
        if services.is_empty() {
            services.push(DEFAULT_SERVICE.to_string());
        }
        let mut out = Vec::new();
        for service in services {
            out.push(
                self.create(NewDeployment {
                    project: project.to_string(),
                    service: Some(service),
                    environment: Some(env.to_string()),
                    reference: sha.clone(),
                    trigger,
                    source: None,
                    source_repo: source_repo.clone(),
                })
                .await?,
            );
        }
        Ok(out)
    }
}

impl Deployer {
    /// `berth rollback`: a new deployment (trigger rollback) of the slot's
    /// previously active deployment.
    pub async fn rollback(self: &Arc<Self>, slot: &Slot) -> ApiResult<Deployment> {
        self.store.get_project(&slot.project).await?;
        self.store
            .get_environment(&slot.project, &slot.environment)
            .await?;
        let (_active, target) = self.rollback_target(slot).await?;
        self.create(NewDeployment {
            project: slot.project.clone(),
            service: Some(slot.service.clone()),
            environment: Some(slot.environment.clone()),
            reference: None,
            trigger: Trigger::Rollback,
            source: Some(target),
            source_repo: None,
        })
        .await
    }

    /// `berth promote`: make a historic deployment that once went live
    /// active again (its image, or a rebuild of its commit when pruned).
    pub async fn promote(self: &Arc<Self>, id: &str) -> ApiResult<Deployment> {
        let src = self.store.get_deployment(id).await?;
        if src.status != Status::Succeeded || src.image.is_none() {
            return Err(ApiError::conflict(format!(
                "deployment {id} never went live ({}); only a deployment that succeeded can be promoted",
                src.status
            )));
        }
        if src.is_active || src.promotion_stage == Stage::Active {
            return Err(ApiError::conflict(format!(
                "deployment {id} is already active"
            )));
        }
        self.create(NewDeployment {
            project: src.project_name.clone(),
            service: Some(src.service_name.clone()),
            environment: Some(src.environment_name.clone()),
            reference: None,
            trigger: Trigger::Promote,
            source: Some(src),
            source_repo: None,
        })
        .await
    }

    /// `berth redeploy`: the same commit again, through the whole pipeline.
    pub async fn redeploy(self: &Arc<Self>, id: &str) -> ApiResult<Deployment> {
        let src = self.store.get_deployment(id).await?;
        let reference = src
            .commit
            .as_ref()
            .map(|c| c.sha.clone())
            .unwrap_or_else(|| src.reference.clone());
        self.create(NewDeployment {
            project: src.project_name.clone(),
            service: Some(src.service_name.clone()),
            environment: Some(src.environment_name.clone()),
            reference: Some(reference),
            trigger: Trigger::Redeploy,
            source: None,
            source_repo: src.source_repo.clone(),
        })
        .await
    }
}

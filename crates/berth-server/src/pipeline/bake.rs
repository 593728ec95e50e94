//! The bake window. After a cutover the replaced deployment of a web
//! service keeps running, unrouted ("warm"), until its `bakeUntil`
//! (`bake` in berth.toml, default 10 min, `"0"` off): it stays `succeeded`
//! at stage `superseded` (or `rolled_back`) with its instance recorded.
//!
//! - A rollback or promote of a warm deployment adopts its running
//!   instance ([`Deployer::flip_to_warm`]): one edge table swap and one
//!   store transaction, no build, no start. The deployment it replaces
//!   becomes warm in turn.
//! - When the window ends (a timer per warm deployment), or when more than
//!   `--max-warm` are warm (oldest first), the instance is stopped with the
//!   service's `stop_timeout` and the record forgets it ([`Deployer::end_bake`]).
//! - While the window is open the new deployment is watched
//!   ([`Deployer::watch_bake`]): an unhealthy health verdict or an edge
//!   error-rate / p95 regression against the previous deployment (the
//!   canary's judge) flips back to the warm one by itself
//!   ([`Deployer::auto_rollback`]) and fails the new one, saying why.
//! - After a restart, a warm deployment whose instance still runs is
//!   adopted with the rest of its window; one whose window passed is
//!   stopped ([`Deployer::adopt_warm`]).
//!
//! Every change of a warm deployment's instance holds `switch_lock`, so a
//! rollback never adopts an instance its window's end is stopping.

use crate::deployer::Deployer;
use crate::ids::now;
use berth_core::canary::{self, Verdict};
use berth_core::config::{Canary, CanaryConfig, ServiceConfig};
use berth_core::model::Trigger;
use berth_core::model::{Deployment, StepName, StepStatus};
use berth_core::state::Event;
use berth_core::state::Health;
use berth_runtime::{Instance, DEPLOYMENT_LABEL};
use berth_store::{DeploymentQuery, Slot};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A replaced deployment still running in its bake window.
pub(crate) fn is_warm(d: &Deployment) -> bool {
    !d.is_active && d.bake_until.is_some() && has_instances(d)
}

/// Whether the record still points at running instances.
pub(crate) fn has_instances(d: &Deployment) -> bool {
    d.runtime.is_some() || !d.instances.is_empty()
}

impl Deployer {
    /// The warm deployment `d` copies, when its window is open and its
    /// instance runs.
    async fn warm_source(&self, d: &Deployment) -> Option<Deployment> {
        let src = self
            .store
            .get_deployment(d.source_deployment_id.as_deref()?)
            .await
            .ok()?;
        if !is_warm(&src) || src.bake_until? <= now() {
            return None;
        }
        let rt = src.runtime.as_ref()?;
        match self.runtime.inspect(&rt.instance_id).await {
            Ok(st) if st.is_running() => Some(src),
            _ => None,
        }
    }

    /// A rollback or promote of a warm deployment: `d` takes its running
    /// instance over and goes live in one edge table swap and one store
    /// transaction. Returns false (nothing done) when the deployment `d`
    /// copies is not warm: the pipeline then runs as usual.
    /// With `regressed` (the id of the active deployment and why), this is
    /// berth's own rollback of that deployment: nothing is done unless it
    /// is still the active one.
    pub(crate) async fn flip_to_warm(
        self: &Arc<Self>,
        d: &mut Deployment,
        regressed: Option<(&str, &str)>,
    ) -> bool {
        if d.source_deployment_id.is_none() {
            return false;
        }
        let switch = self.switch_lock.lock().await;
        if let Some((bad, _)) = regressed {
            let active = self.store.active_deployment(&Slot::of(d)).await;
            if !matches!(active, Ok(Some(a)) if a.id == bad) {
                return false;
            }
        }
        let Some(mut warm) = self.warm_source(d).await else {
            return false;
        };
        let Some(rt) = warm.runtime.clone() else {
            return false;
        };
        let service = super::service_from_record(&warm);
        d.started_at = Some(now());
        for ev in [
            Event::Start,
            Event::CandidateStarting,
            Event::CandidateStarted,
            Event::Ready,
        ] {
            self.transition(d, ev);
        }
        let why = format!(
            "instance {} of deployment {} is warm (bake window): adopted, no build, no start",
            rt.instance_name, warm.id
        );
        for s in [
            StepName::Clone,
            StepName::Analyze,
            StepName::Build,
            StepName::Push,
            StepName::Release,
        ] {
            self.finish_step(d, s, StepStatus::Skipped, Some(&why));
        }
        self.finish_step(d, StepName::Deploy, StepStatus::Succeeded, Some(&why));
        self.finish_step(
            d,
            StepName::HealthCheck,
            StepStatus::Succeeded,
            Some("running: it served until the cutover"),
        );
        self.finish_step(d, StepName::Finalize, StepStatus::Succeeded, None);
        d.runtime = Some(rt.clone());
        d.instances = warm.instances.clone();
        d.replicas = warm.replicas;
        let ids = super::replicas::instance_ids(d);
        let prev = self
            .switch_locked(d, &service, Some(&mut warm), regressed.map(|(_, why)| why))
            .await;
        drop(switch);
        self.logs.event(
            &warm.id,
            &format!(
                "bake: instance {} handed to deployment {}",
                rt.instance_name, d.id
            ),
        );
        self.monitors.stop(&warm.id);
        for id in &ids {
            self.monitors.follow_logs(self, &d.id, id, Some(now()));
        }
        self.monitors.watch(self, d, &service);
        if let Some(mut p) = prev {
            self.after_cutover(&mut p).await;
        }
        true
    }

    /// Stop a warm deployment when its window ends.
    pub(crate) fn schedule_bake_end(self: &Arc<Self>, id: &str, until: DateTime<Utc>) {
        let this = self.clone();
        let id = id.to_string();
        let timer = tokio::spawn(berth_store::cluster::inherit(async move {
            let wait = (until - now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            this.end_bake(&id, "bake window over").await;
        }));
        self.track(timer.abort_handle());
    }

    /// End a warm deployment's bake: the record forgets its instance (one
    /// transaction, under `switch_lock`), then the instance is stopped in
    /// the background with its `stop_timeout`. Nothing when it is no
    /// longer warm (adopted by a rollback, or ended already).
    pub(crate) async fn end_bake(self: &Arc<Self>, id: &str, why: &str) {
        let switch = self.switch_lock.lock().await;
        let Ok(mut p) = self.store.get_deployment(id).await else {
            return;
        };
        if !is_warm(&p) {
            return;
        }
        let ids = super::replicas::instance_ids(&p);
        let release = |p: &mut Deployment| {
            p.runtime = None;
            p.instances.clear();
            p.bake_until = None;
        };
        release(&mut p);
        let redo = |mine: &mut Deployment, fresh: Deployment| {
            *mine = fresh;
            if !is_warm(mine) {
                return false;
            }
            release(mine);
            true
        };
        let saved = crate::saving::save_retrying(&*self.store, &mut p, redo).await;
        drop(switch);
        match saved {
            Ok(crate::saving::Saved::Written) => {}
            Ok(crate::saving::Saved::GaveUp) => return,
            Err(e) => {
                tracing::error!(deployment = id, error = %e, "cannot record the end of a bake");
                return;
            }
        }
        if ids.is_empty() {
            return;
        }
        self.logs.event(id, &format!("bake: {why}; stopping"));
        self.monitors.stop_health(id);
        let grace = super::service_from_record(&p).stop_timeout;
        let this = self.clone();
        let id = id.to_string();
        let what = format!("warm instance(s) {}", ids.join(", "));
        let stopping = tokio::spawn(berth_store::cluster::inherit(async move {
            this.stop_instances(&id, &ids, &what, grace).await;
        }));
        self.track(stopping.abort_handle());
    }

    /// `--max-warm`: when more deployments are warm than that, the oldest
    /// (the earliest end of window) are stopped first.
    pub(crate) async fn limit_warm(self: &Arc<Self>) {
        let Ok(all) = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await
        else {
            return;
        };
        let mut warm: Vec<Deployment> = all.into_iter().filter(is_warm).collect();
        if warm.len() <= self.cfg.max_warm {
            return;
        }
        warm.sort_by_key(|d| d.bake_until);
        let excess = warm.len() - self.cfg.max_warm;
        let why = format!(
            "more than --max-warm {} deployments are warm: the oldest is stopped",
            self.cfg.max_warm
        );
        for d in warm.into_iter().take(excess) {
            self.end_bake(&d.id, &why).await;
        }
    }

    /// After a restart: a warm deployment whose instance still runs is
    /// adopted (kept, not restarted) with the rest of its window; one whose
    /// window passed, or whose instance is gone, forgets it (the instance is
    /// then removed as an orphan). Adopted instance ids go into `keep`.
    pub(crate) async fn adopt_warm(
        self: &Arc<Self>,
        owned: &[Instance],
        keep: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let all = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await?;
        for mut d in all.into_iter().filter(is_warm) {
            let Some(until) = d.bake_until else {
                continue;
            };
            let recorded = super::replicas::instance_ids(&d);
            let found: Vec<&Instance> = owned
                .iter()
                .filter(|i| {
                    i.running
                        && (recorded.contains(&i.id)
                            || i.labels.get(DEPLOYMENT_LABEL) == Some(&d.id))
                })
                .collect();
            match found.is_empty() {
                false if until > now() => {
                    for inst in found {
                        keep.insert(inst.id.clone());
                        self.monitors
                            .follow_logs(self, &d.id, &inst.id, Some(now()));
                    }
                    self.logs.event(
                        &d.id,
                        "berth restarted: warm instance adopted for the rest of its bake window",
                    );
                    self.schedule_bake_end(&d.id, until);
                }
                _ => {
                    d.runtime = None;
                    d.instances.clear();
                    d.bake_until = None;
                    self.logs.event(
                        &d.id,
                        "berth restarted: bake window over (or instance gone); stopped",
                    );
                    self.save(&mut d).await;
                }
            }
        }
        self.limit_warm().await;
        Ok(())
    }
}

/// How often a deployment in its bake window is judged.
const BAKE_TICK: Duration = Duration::from_secs(1);

impl Deployer {
    /// Watch `d`, just cut over from the warm `prev`, for its bake window:
    /// an unhealthy verdict of the steady health probe (000's rule:
    /// `failure_threshold` consecutive failures), or an edge error-rate or
    /// p95 regression against `prev`'s last window (the canary's judge,
    /// `berth_core::canary::judge`, with the service's canary thresholds or
    /// their defaults, on every `min_requests` requests) flips traffic back
    /// to `prev`'s warm instances at once ([`Deployer::auto_rollback`]).
    pub(crate) fn watch_bake(
        self: &Arc<Self>,
        d: &Deployment,
        prev: &Deployment,
        service: &ServiceConfig,
    ) {
        let cfg = match &service.canary {
            Canary::Staged(c) => c.clone(),
            _ => CanaryConfig::default(),
        };
        // The previous deployment's last window: what it served until the
        // cutover.
        let baseline = self.window_of(prev);
        let mut start = self.window_of(d);
        let (id, prev_id) = (d.id.clone(), prev.id.clone());
        let cut_at = tokio::time::Instant::now();
        let this = self.clone();
        let watcher = tokio::spawn(berth_store::cluster::inherit(async move {
            loop {
                tokio::time::sleep(BAKE_TICK).await;
                let (Ok(cur), Ok(warm)) = (
                    this.store.get_deployment(&id).await,
                    this.store.get_deployment(&prev_id).await,
                ) else {
                    return;
                };
                if !cur.is_active || !is_warm(&warm) || warm.bake_until.is_none_or(|u| u <= now()) {
                    return;
                }
                // A warm instance that is gone (removed, crashed) ends the
                // bake now: the record stops pointing at it.
                let runtime = &this.runtime;
                let states = futures::future::join_all(
                    super::replicas::instance_ids(&warm)
                        .into_iter()
                        .map(|i| async move { runtime.inspect(&i).await }),
                )
                .await;
                if states
                    .iter()
                    .all(|s| !matches!(s, Ok(st) if st.is_running()))
                {
                    this.end_bake(&prev_id, "its instance is gone").await;
                    return;
                }
                let secs = cut_at.elapsed().as_secs();
                if cur.health == Health::Unhealthy {
                    let why = format!(
                        "rolled back automatically in its bake window: health check unhealthy ({} consecutive failures of GET {}) {secs}s after the cutover",
                        service_threshold(&cur),
                        super::service_from_record(&cur).readiness.path
                    );
                    this.auto_rollback(&cur, &warm, why).await;
                    return;
                }
                let c = this.window_of(&cur).since(&start);
                if c.requests < cfg.min_requests {
                    continue;
                }
                let verdict = canary::judge(&baseline, &c, &cfg, 0);
                this.logs.event(
                    &id,
                    &format!(
                        "bake judge: {} requests, {} errors since the last window; verdict: {}",
                        c.requests,
                        c.errors,
                        verdict.describe()
                    ),
                );
                if let Verdict::Regressed(why) = verdict {
                    let why = format!(
                        "rolled back automatically in its bake window: {why}, over {} requests ({} errors) within {secs}s after the cutover",
                        c.requests, c.errors
                    );
                    this.auto_rollback(&cur, &warm, why).await;
                    return;
                }
                start = this.window_of(&cur);
            }
        }));
        self.track(watcher.abort_handle());
    }

    /// berth's own rollback of `bad` to the warm `warm`: a rollback
    /// deployment that adopts `warm`'s instances (one edge table swap, one
    /// store transaction), `bad` ending failed (rolled_back) with `why`.
    /// It bypasses the slot's queue (the switch lock orders it against a
    /// running pipeline), so a queued deploy of the slot still runs
    /// afterwards; never two active (one active pointer per slot).
    pub(crate) async fn auto_rollback(
        self: &Arc<Self>,
        bad: &Deployment,
        warm: &Deployment,
        why: String,
    ) -> bool {
        let req = crate::deployer::NewDeployment {
            project: bad.project_name.clone(),
            service: Some(bad.service_name.clone()),
            environment: Some(bad.environment_name.clone()),
            reference: None,
            trigger: Trigger::Rollback,
            source: Some(warm.clone()),
            source_repo: None,
        };
        let mut r = match self.record_new(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(deployment = bad.id, error = %e.message, "cannot record an automatic rollback");
                return false;
            }
        };
        self.logs.event(&bad.id, &why);
        self.logs.event(
            &r.id,
            &format!("automatic rollback of deployment {}: {why}", bad.id),
        );
        if self.flip_to_warm(&mut r, Some((&bad.id, &why))).await {
            tracing::warn!(
                deployment = bad.id,
                rollback = r.id,
                reason = why,
                "automatic rollback"
            );
            self.metrics.record_pipeline(&r);
            true
        } else {
            self.cancel_queued(
                &r.id,
                "automatic rollback not needed: the deployment is no longer active or the previous one no longer warm",
            )
            .await;
            false
        }
    }
}

fn service_threshold(d: &Deployment) -> u32 {
    super::service_from_record(d).readiness.failure_threshold
}

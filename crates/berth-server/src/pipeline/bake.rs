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
//! - After a restart, a warm deployment whose instance still runs is
//!   adopted with the rest of its window; one whose window passed is
//!   stopped ([`Deployer::adopt_warm`]).
//!
//! Every change of a warm deployment's instance holds `switch_lock`, so a
//! rollback never adopts an instance its window's end is stopping.

use crate::deployer::Deployer;
use crate::ids::now;
use berth_core::model::{Deployment, StepName, StepStatus};
use berth_core::state::Event;
use berth_runtime::{Instance, DEPLOYMENT_LABEL};
use berth_store::DeploymentQuery;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;

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
    pub(crate) async fn flip_to_warm(self: &Arc<Self>, d: &mut Deployment) -> bool {
        if d.source_deployment_id.is_none() {
            return false;
        }
        let switch = self.switch_lock.lock().await;
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
        let prev = self.switch_locked(d, &service, Some(&mut warm)).await;
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
        let timer = tokio::spawn(async move {
            let wait = (until - now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            this.end_bake(&id, "bake window over").await;
        });
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
        let stopping = tokio::spawn(async move {
            this.stop_instances(&id, &ids, &what, grace).await;
        });
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

//! Steps 8-10: switch the route and the slot's active pointer, drain and
//! stop the previous deployment, finalize; and the hostnames a slot serves.

use crate::deployer::Deployer;
use crate::ids::now;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::hosts;
use berth_core::model::{Deployment, StepName, StepStatus, Trigger};
use berth_core::state::Event;
use berth_edge::{RouteChange, RouteSpec};
use berth_store::{Activate, Slot};
use std::sync::Arc;

impl Deployer {
    /// Steps 8-10: switch the route, keep the previous deployment warm for
    /// the bake window (or drain and stop it), finalize. Nothing here can
    /// fail the candidate: it is healthy.
    pub(crate) async fn promote_candidate(
        self: &Arc<Self>,
        d: &mut Deployment,
        service: &ServiceConfig,
    ) {
        let slot = Slot::of(d);
        let switch = self.switch_lock.lock().await;
        let prev = self.switch_locked(d, service, None, None).await;
        drop(switch);
        self.monitors.watch(self, d, service);

        // The previous deployment: warm for the bake window (while this one
        // is watched, and rolled back by itself when it regresses), or
        // drained and stopped.
        if let Some(mut p) = prev {
            self.after_cutover(&mut p).await;
            // (`p` as read before the switch still says active.)
            let warm = p.bake_until.is_some() && super::bake::has_instances(&p);
            if warm && !matches!(d.trigger, Trigger::Rollback | Trigger::Promote) {
                self.watch_bake(d, &p, service);
            }
        }

        // Finalize.
        self.start_step(d, StepName::Finalize);
        let pruned = self.prune_images(&slot).await;
        self.finish_step(d, StepName::Finalize, StepStatus::Succeeded, Some(&pruned));
        self.apply(d, Event::Drained).await;
    }

    /// After a restart: `d`'s switch was recorded (the slot's active
    /// pointer names it, stage draining_previous) but a crash interrupted
    /// the drain, the stop or finalize. Finalize runs now (retention) and
    /// `d` ends active, succeeded; reconcile stops the previous
    /// deployment's instances (`Deployer::release_retired`).
    pub(crate) async fn finish_interrupted_promotion(&self, d: &mut Deployment) {
        self.logs.event(
            &d.id,
            "berth restarted while draining the previous deployment: finishing (finalize)",
        );
        d.canary_weight = None;
        self.start_step(d, StepName::Finalize);
        let pruned = self.prune_images(&Slot::of(d)).await;
        self.finish_step(d, StepName::Finalize, StepStatus::Succeeded, Some(&pruned));
        self.apply(d, Event::Drained).await;
    }

    /// What happens to the deployment a cutover replaced: it stays warm
    /// until its `bakeUntil` (set by the switch), or is drained and stopped.
    pub(crate) async fn after_cutover(self: &Arc<Self>, p: &mut Deployment) {
        match p.bake_until {
            Some(until) if super::bake::has_instances(p) => {
                self.monitors.stop_health(&p.id);
                self.logs.event(
                    &p.id,
                    &format!(
                        "bake: kept running, unrouted, until {}; a rollback until then is a route flip",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                );
                self.schedule_bake_end(&p.id, until);
                self.limit_warm().await;
            }
            _ => self.retire(p).await,
        }
    }

    /// The switch itself, with `switch_lock` held: one swap of the edge's
    /// table, then one store transaction that flips the slot's active
    /// pointer, records the previous deployment as superseded (or
    /// rolled_back) — warm until `now + bake` when the service bakes — and,
    /// when `adopted` is the warm deployment whose instance `d` took over,
    /// clears that one's instance. With `adopted`, `d` ends active in the
    /// same transaction (no drain: the previous deployment stays warm).
    /// With `regressed`, the previous deployment is the one that regressed
    /// in its bake window: it ends failed (rolled_back) with that message
    /// and is not kept warm. Returns the previous deployment as recorded.
    pub(crate) async fn switch_locked(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        mut adopted: Option<&mut Deployment>,
        regressed: Option<&str>,
    ) -> Option<Deployment> {
        let slot = Slot::of(d);
        let previous = self.store.active_deployment(&slot).await.ok().flatten();
        // The route: one swap of the edge's table.
        let mut edge_ms = None;
        if service.kind == ServiceKind::Web {
            let targets = super::replicas::targets(d, 100);
            if !targets.is_empty() {
                // the policies of the deployment switch with its targets
                let policy = self.route_policy(d).await;
                let preview_policy = self.preview_policy(d).await;
                let mut changes: Vec<RouteChange> = self
                    .slot_hosts(d)
                    .await
                    .into_iter()
                    .map(|host| RouteChange::Upsert {
                        host,
                        route: RouteSpec {
                            targets: targets.clone(),
                            policy: policy.clone(),
                        },
                    })
                    .collect();
                changes.extend([RouteChange::Upsert {
                    host: self.preview_host(d),
                    route: RouteSpec {
                        targets,
                        policy: preview_policy,
                    },
                }]);
                if let Some(p) = &previous {
                    changes.push(RouteChange::Remove {
                        host: self.preview_host(p),
                    });
                }
                let swap = std::time::Instant::now();
                let applied = self.edge.apply(changes);
                edge_ms = Some(swap.elapsed().as_secs_f64() * 1000.0);
                if let Err(e) = applied {
                    tracing::error!(deployment = d.id, error = %e, "route change refused");
                    self.logs
                        .event(&d.id, &format!("route change refused: {e}"));
                }
            }
        }
        // The record: one transaction flips the slot's active pointer.
        let mut prev = previous.clone();
        let finish = adopted.is_some();
        let end = |d: &mut Deployment| {
            self.transition(d, Event::RouteSwitched);
            // it takes all the traffic: a canary's weight is over
            d.canary_weight = None;
            if finish && self.transition(d, Event::Drained) {
                d.completed_at = Some(now());
            }
        };
        end(d);
        if finish {
            self.logs
                .event(&d.id, "stage: active — deployment succeeded");
        } else {
            self.logs.event(&d.id, "stage: draining_previous");
        }
        let ev = if matches!(d.trigger, Trigger::Rollback | Trigger::Promote) {
            Event::RollBack
        } else {
            Event::Supersede
        };
        let bake =
            (service.kind == ServiceKind::Web && !service.bake.is_zero() && self.cfg.max_warm > 0)
                .then(|| chrono::Duration::from_std(service.bake).ok())
                .flatten();
        let replace = |p: &mut Deployment| {
            if let Some(why) = regressed {
                self.transition(p, Event::Regress);
                p.failure_message = Some(why.to_string());
                p.bake_until = None;
                return;
            }
            self.transition(p, ev);
            p.bake_until = match bake {
                Some(b) if super::bake::has_instances(p) => Some(now() + b),
                _ => None,
            };
        };
        let release = |a: &mut Deployment| {
            a.runtime = None;
            a.instances.clear();
            a.bake_until = None;
        };
        if let Some(p) = prev.as_mut() {
            replace(p);
            self.logs.event(
                &p.id,
                &format!(
                    "stage: {} — replaced by deployment {}",
                    p.promotion_stage, d.id
                ),
            );
        }
        if let Some(a) = adopted.as_deref_mut() {
            release(a);
        }
        // Compare-and-set: when a health monitor saved either record since
        // it was read, the change is redone on the fresh record.
        let activate = Activate {
            slot: slot.clone(),
            deployment_id: Some(d.id.clone()),
        };
        let recording = std::time::Instant::now();
        for _ in 0..5 {
            let mut batch: Vec<&mut Deployment> = vec![&mut *d];
            if let Some(p) = prev.as_mut() {
                batch.push(p);
            }
            if let Some(a) = adopted.as_deref_mut() {
                batch.push(a);
            }
            match self
                .store
                .save_deployments(&mut batch, Some(activate.clone()))
                .await
            {
                Ok(()) => {
                    self.deployment_saved();
                    break;
                }
                Err(berth_store::StoreError::Stale { id, .. }) => {
                    let Ok(fresh) = self.store.get_deployment(&id).await else {
                        break;
                    };
                    if id == d.id {
                        if !crate::saving::rebase_pipeline(d, fresh) {
                            break;
                        }
                    } else if prev.as_ref().is_some_and(|p| p.id == id) {
                        if let Some(p) = prev.as_mut() {
                            *p = fresh;
                            replace(p);
                        }
                    } else if let Some(a) = adopted.as_deref_mut() {
                        *a = fresh;
                        release(a);
                    }
                }
                Err(e) => {
                    tracing::error!(deployment = d.id, error = %e, "cannot record the switch");
                    break;
                }
            }
        }
        // Where the time of a cutover goes (bench/deploy.sh prints it).
        let store_ms = recording.elapsed().as_secs_f64() * 1000.0;
        let edge = edge_ms.map_or("no route".to_string(), |ms| {
            format!("edge table swapped in {ms:.1} ms")
        });
        self.logs.event(
            &d.id,
            &format!("switch: {edge}, store transaction {store_ms:.1} ms"),
        );
        prev
    }

    /// Drain a replaced deployment's in-flight requests on every target,
    /// then stop all its instances in the background with the service's
    /// `stop_timeout`: the caller (a deploy's result) does not wait for an
    /// app that ignores SIGTERM. The stop is recorded on the replaced
    /// deployment's log.
    pub(crate) async fn retire(self: &Arc<Self>, p: &mut Deployment) {
        self.monitors.stop_health(&p.id);
        if self.leadership.is_clustered() {
            // The other servers' edges still route to it until they read
            // the switch (and finish what they sent it).
            tokio::time::sleep(crate::cluster::FOLLOWER_GRACE).await;
        }
        let reports = futures::future::join_all(
            super::replicas::target_ids(p)
                .into_iter()
                .map(|t| async move { self.edge.drain(&t, self.cfg.drain_timeout).await }),
        )
        .await;
        let report = if reports.len() == 1 {
            format!("{:?}", reports[0])
        } else {
            format!("{reports:?}")
        };
        self.logs.event(&p.id, &format!("drained: {report}"));
        let ids = super::replicas::instance_ids(p);
        let names: Vec<String> = match p.instances.is_empty() {
            true => p.runtime.iter().map(|r| r.instance_name.clone()).collect(),
            false => p.instances.iter().map(|i| i.name.clone()).collect(),
        };
        p.runtime = None;
        p.instances.clear();
        self.save(p).await;
        if ids.is_empty() {
            return;
        }
        let grace = super::service_from_record(p).stop_timeout;
        let what = format!(
            "{} {}",
            if names.len() == 1 {
                "container"
            } else {
                "containers"
            },
            names.join(", ")
        );
        self.logs.event(
            &p.id,
            &format!("stopping {what} (grace {}s)", grace.as_secs_f64()),
        );
        let this = self.clone();
        let id = p.id.clone();
        let stopping = tokio::spawn(berth_store::cluster::inherit(async move {
            this.stop_instances(&id, &ids, &what, grace).await;
        }));
        self.track(stopping.abort_handle());
    }

    /// Stop and remove a retired deployment's instances; recorded on its log.
    pub(crate) async fn stop_instances(
        &self,
        id: &str,
        ids: &[String],
        what: &str,
        grace: std::time::Duration,
    ) {
        if let Err(e) = self.runtime.stop_all(ids, grace).await {
            tracing::warn!(deployment = id, error = %e, "cannot stop previous container");
        }
        if let Err(e) = self.runtime.remove_all(ids).await {
            tracing::warn!(deployment = id, error = %e, "cannot remove previous container");
        }
        self.monitors.stop(id);
        self.logs.event(id, &format!("{what} stopped"));
    }

    /// Every hostname that follows a slot's active deployment: its route
    /// hostname and its verified custom domains.
    pub(crate) async fn slot_hosts(&self, d: &Deployment) -> Vec<String> {
        let domains = self
            .store
            .list_domains(Some(&d.project_name))
            .await
            .unwrap_or_default();
        self.slot_hosts_in(d, &domains)
    }

    /// [`Deployer::slot_hosts`] over an already-read list of domains.
    pub(crate) fn slot_hosts_in(
        &self,
        d: &Deployment,
        domains: &[berth_core::model::Domain],
    ) -> Vec<String> {
        let mut hosts = vec![self.route_host(d)];
        hosts.extend(
            domains
                .iter()
                .filter(|x| {
                    x.verified
                        && x.project_name == d.project_name
                        && x.service_name == d.service_name
                        && x.environment_name == d.environment_name
                })
                .map(|x| x.hostname.clone()),
        );
        hosts
    }

    pub(crate) fn route_host(&self, d: &Deployment) -> String {
        hosts::route_host(
            self.cfg.base_domain(),
            &d.project_name,
            &d.service_name,
            &d.environment_name,
        )
    }

    pub(crate) fn preview_host(&self, d: &Deployment) -> String {
        hosts::preview_host(
            self.cfg.base_domain(),
            &d.project_name,
            &d.service_name,
            &d.environment_name,
            &d.id,
        )
    }

    pub(super) async fn edge_remove_preview(&self, d: &Deployment) {
        let _ = self.edge.apply(vec![RouteChange::Remove {
            host: self.preview_host(d),
        }]);
    }
}

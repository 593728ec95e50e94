//! Step 7b: a staged canary (004) between readiness and the switch.

use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, StepName, Trigger};
use berth_core::state::Event;
use berth_edge::{RouteChange, RouteSpec, TargetSpec};
use berth_store::Slot;
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// A staged canary (004): the candidate gets each stage's share of the
    /// service's traffic for an observation window and is judged against
    /// the previous deployment (`berth_core::canary::judge`); a regression
    /// puts all traffic back on the previous deployment and fails the
    /// candidate. Runs only with `[services.<name>.canary]` in berth.toml,
    /// for web services that replace a running deployment, never for a
    /// rollback or promote (those are instant).
    pub(super) async fn canary(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        cancel: &CancellationToken,
    ) -> Flow<()> {
        let berth_core::config::Canary::Staged(cfg) = &service.canary else {
            return Ok(());
        };
        if service.kind != ServiceKind::Web
            || matches!(d.trigger, Trigger::Rollback | Trigger::Promote)
        {
            return Ok(());
        }
        let prev = self
            .store
            .active_deployment(&Slot::of(d))
            .await
            .ok()
            .flatten();
        let (Some(prev), Some(cand_addr)) =
            (prev, d.runtime.as_ref().and_then(|r| r.address.clone()))
        else {
            self.logs.event(
                &d.id,
                "canary skipped: no previous deployment to compare with",
            );
            return Ok(());
        };
        let Some(prev_addr) = prev.runtime.as_ref().and_then(|r| r.address.clone()) else {
            self.logs.event(
                &d.id,
                "canary skipped: the previous deployment has no running container",
            );
            return Ok(());
        };
        self.apply(d, Event::CanaryStarted).await;
        let slot_hosts = self.slot_hosts(d).await;
        let cand_id = d.id.clone();
        let cand_sha = d.commit.as_ref().map(|c| c.sha.clone());
        let split_one = |host: &String, w: u32| {
            let mut targets = vec![TargetSpec {
                id: cand_id.clone(),
                upstream: cand_addr.clone(),
                weight: w,
                deployment_id: Some(cand_id.clone()),
                sha: cand_sha.clone(),
            }];
            if w < 100 {
                targets.push(TargetSpec {
                    id: prev.id.clone(),
                    upstream: prev_addr.clone(),
                    weight: 100 - w,
                    deployment_id: Some(prev.id.clone()),
                    sha: prev.commit.as_ref().map(|c| c.sha.clone()),
                });
            }
            RouteChange::Upsert {
                host: host.clone(),
                route: RouteSpec { targets },
            }
        };
        let split =
            |w: u32| -> Vec<RouteChange> { slot_hosts.iter().map(|h| split_one(h, w)).collect() };
        let restore = || -> Vec<RouteChange> {
            slot_hosts
                .iter()
                .map(|h| RouteChange::Upsert {
                    host: h.clone(),
                    route: RouteSpec {
                        targets: vec![TargetSpec {
                            id: prev.id.clone(),
                            upstream: prev_addr.clone(),
                            weight: 100,
                            deployment_id: Some(prev.id.clone()),
                            sha: prev.commit.as_ref().map(|c| c.sha.clone()),
                        }],
                    },
                })
                .collect()
        };
        for &stage in cfg.stages.iter().filter(|w| **w < 100) {
            let w = u32::from(stage);
            if let Err(e) = self.edge.apply(split(w)) {
                return fail(
                    StepName::HealthCheck,
                    format!("canary: route change refused: {e}"),
                );
            }
            d.canary_weight = Some(w);
            self.save(d).await;
            self.logs.event(
                &d.id,
                &format!(
                    "canary: {w}% of traffic to this deployment for {}s",
                    cfg.observation_window.as_secs()
                ),
            );
            let (b0, c0) = (self.window_of(&prev.id), self.window_of(&d.id));
            let interrupted = tokio::select! {
                _ = tokio::time::sleep(cfg.observation_window) => None,
                _ = cancel.cancelled() => Some(Stop::Cancelled),
            };
            let verdict = match interrupted {
                Some(stop) => Err(stop),
                None => {
                    let alive = self
                        .runtime
                        .inspect(
                            &d.runtime
                                .as_ref()
                                .map(|r| r.instance_id.clone())
                                .unwrap_or_default(),
                        )
                        .await
                        .map(|st| st.is_running())
                        .unwrap_or(false);
                    if !alive {
                        Ok(berth_core::canary::Verdict::Regressed(
                            "the container stopped".into(),
                        ))
                    } else {
                        let b = self.window_of(&prev.id).since(&b0);
                        let c = self.window_of(&d.id).since(&c0);
                        Ok(berth_core::canary::judge(&b, &c, cfg))
                    }
                }
            };
            match verdict {
                Ok(berth_core::canary::Verdict::Healthy) => {
                    self.logs
                        .event(&d.id, &format!("canary: {w}% stage healthy"));
                }
                Ok(berth_core::canary::Verdict::NotEnoughTraffic { requests }) => {
                    self.logs.event(
                        &d.id,
                        &format!("canary: {w}% stage saw {requests} request(s), too few to judge; continuing"),
                    );
                }
                other => {
                    let _ = self.edge.apply(restore());
                    d.canary_weight = None;
                    let report = self.edge.drain(&d.id, self.cfg.drain_timeout).await;
                    self.logs.event(
                        &d.id,
                        &format!("canary: traffic back on {}; drained: {report:?}", prev.id),
                    );
                    return match other {
                        Ok(berth_core::canary::Verdict::Regressed(why)) => fail(
                            StepName::HealthCheck,
                            format!("canary at {w}% regressed: {why}; rolled back automatically, the previous deployment serves"),
                        ),
                        Err(stop) => Err(stop),
                        Ok(_) => Ok(()),
                    };
                }
            }
        }
        d.canary_weight = Some(100);
        Ok(())
    }

    fn window_of(&self, target: &str) -> berth_core::canary::Window {
        let s = self.edge.target_stats(target);
        berth_core::canary::Window {
            requests: s.requests,
            errors: s.errors,
            latency: s.latency,
        }
    }
}

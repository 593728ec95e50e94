//! Step 7b: a staged canary (004) between readiness and the switch.

use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use berth_core::canary;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, StepName, Trigger};
use berth_core::state::Event;
use berth_edge::{RouteChange, RouteSpec};
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
        let (Some(prev), false) = (prev, super::replicas::targets(d, 1).is_empty()) else {
            self.logs.event(
                &d.id,
                "canary skipped: no previous deployment to compare with",
            );
            return Ok(());
        };
        if super::replicas::targets(&prev, 1).is_empty() {
            self.logs.event(
                &d.id,
                "canary skipped: the previous deployment has no running container",
            );
            return Ok(());
        }
        self.apply(d, Event::CanaryStarted).await;
        // The console's canary section shows this beside each stage.
        self.logs.event(
            &d.id,
            &format!(
                "{}error rate at most +{:.1} points over the previous deployment, p95 at most {:.2}x of it, at least {} request(s) per window",
                crate::charts::THRESHOLDS_PREFIX,
                cfg.error_rate_threshold * 100.0,
                cfg.latency_p95_threshold,
                cfg.min_requests
            ),
        );
        let slot_hosts = self.slot_hosts(d).await;
        // The share is the deployment's, whatever its replica count: each
        // of the candidate's n_c targets weighs w·n_p, each of the previous
        // deployment's n_p targets (100−w)·n_c.
        let (n_c, n_p) = (
            super::replicas::target_count(d),
            super::replicas::target_count(&prev),
        );
        let cand = d.clone();
        // the active deployment's policies hold until the cutover swaps in
        // the candidate's
        let prev_policy = self.route_policy(&prev).await;
        let split_one = |host: &String, w: u32| {
            let mut targets = super::replicas::targets(&cand, w * n_p);
            if w < 100 {
                targets.extend(super::replicas::targets(&prev, (100 - w) * n_c));
            }
            RouteChange::Upsert {
                host: host.clone(),
                route: RouteSpec {
                    targets,
                    policy: prev_policy.clone(),
                },
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
                        targets: super::replicas::targets(&prev, 100),
                        policy: prev_policy.clone(),
                    },
                })
                .collect()
        };
        for &stage in cfg.stages.iter().filter(|w| **w < 100) {
            let w = u32::from(stage);
            if let Err(e) = self.edge.apply(split(w)) {
                // A later stage's refusal leaves the previous split
                // serving: put all traffic back like any failed stage.
                let _ = self.edge.apply(restore());
                d.canary_weight = None;
                return fail(
                    StepName::HealthCheck,
                    format!(
                        "canary at {w}%: route change refused: {e}; the previous deployment serves"
                    ),
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
            // Counters at the start of the stage: an extended window is
            // judged on everything seen since.
            let (b0, c0) = (self.window_of(&prev), self.window_of(d));
            let mut extensions = 0;
            let outcome = loop {
                let interrupted = tokio::select! {
                    _ = tokio::time::sleep(cfg.observation_window) => None,
                    _ = cancel.cancelled() => Some(Stop::Cancelled),
                };
                if let Some(stop) = interrupted {
                    break Err(stop);
                }
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
                let b = self.window_of(&prev).since(&b0);
                let c = self.window_of(d).since(&c0);
                let verdict = if alive {
                    canary::judge(&b, &c, cfg, extensions)
                } else {
                    canary::Verdict::Regressed("the container stopped".into())
                };
                self.logs.event(
                    &d.id,
                    &canary::decision_line(stage, extensions + 1, &b, &c, &verdict),
                );
                match verdict {
                    canary::Verdict::Extend { extension, .. } => extensions = extension,
                    other => break Ok(other),
                }
            };
            let why = match outcome {
                Ok(canary::Verdict::Healthy) => {
                    self.logs
                        .event(&d.id, &format!("canary: {w}% stage healthy"));
                    continue;
                }
                Ok(canary::Verdict::PromotedOnHealth { requests }) => {
                    self.logs.event(
                        &d.id,
                        &format!(
                            "canary: {w}% stage promoted on health alone: it saw {requests} request(s), fewer than min_requests = {} (on_low_traffic = \"promote\")",
                            cfg.min_requests
                        ),
                    );
                    continue;
                }
                Ok(canary::Verdict::Regressed(why)) => Ok(format!(
                    "canary at {w}% regressed: {why}; rolled back automatically, the previous deployment serves"
                )),
                Ok(canary::Verdict::TooLittleTraffic(why)) => Ok(format!(
                    "canary at {w}% {why}; rolled back automatically, the previous deployment serves"
                )),
                // The loop above never ends on an extension.
                Ok(v @ canary::Verdict::Extend { .. }) => Ok(format!(
                    "canary at {w}%: {}; rolled back automatically, the previous deployment serves",
                    v.describe()
                )),
                Err(stop) => Err(stop),
            };
            let _ = self.edge.apply(restore());
            d.canary_weight = None;
            let report = futures::future::join_all(
                super::replicas::target_ids(d)
                    .into_iter()
                    .map(|t| async move { self.edge.drain(&t, self.cfg.drain_timeout).await }),
            )
            .await;
            let report = if report.len() == 1 {
                format!("{:?}", report[0])
            } else {
                format!("{report:?}")
            };
            self.logs.event(
                &d.id,
                &format!("canary: traffic back on {}; drained: {report}", prev.id),
            );
            return match why {
                Ok(msg) => fail(StepName::HealthCheck, msg),
                Err(stop) => Err(stop),
            };
        }
        // The split holds until the switch, which clears the weight.
        Ok(())
    }

    /// The edge's counters of a deployment: every instance's target summed
    /// (the latency buckets share their bounds).
    pub(crate) fn window_of(&self, d: &Deployment) -> canary::Window {
        let mut w = canary::Window {
            requests: 0,
            errors: 0,
            latency: Vec::new(),
        };
        for target in super::replicas::target_ids(d) {
            let s = self.edge.target_stats(&target);
            w.requests += s.requests;
            w.errors += s.errors;
            if w.latency.is_empty() {
                w.latency = s.latency;
            } else {
                for (acc, (_, c)) in w.latency.iter_mut().zip(s.latency) {
                    acc.1 += c;
                }
            }
        }
        w
    }
}

//! The deploy algorithm, in one place, top to bottom: [`Deployer::pipeline`].
//!
//! ```text
//! start ─ clone ─ analyze ─ build ─ push ─ release ─ deploy ─ health_check ─ switch ─ drain ─ finalize
//!         (skipped when the image of the copied deployment is retained)
//! ```
//!
//! 1. **clone** the repository at the ref (exact SHA recorded) — `source.rs`;
//! 2. **analyze**: read `berth.toml`, pick the service, make the build plan —
//!    `source.rs`;
//! 3. **build** the image — or reuse it when the same tree was built before —
//!    `build.rs`;
//! 4. **push** it to the registry when one is configured — `build.rs`;
//! 5. **release**: run `release_command` once in a one-off container —
//!    `release.rs`;
//! 6. **deploy**: start the candidate beside the active deployment —
//!    `candidate.rs`;
//! 7. **health_check**: probe fast until healthy, or fail by the deadline —
//!    `readiness.rs`; then an optional staged canary — `canary.rs`;
//! 8. **switch** the route (one edge table swap) and flip the slot's active
//!    pointer in the store (one transaction, previous → superseded) —
//!    `switch.rs`;
//! 9. **bake** the previous deployment: it keeps running, unrouted, for the
//!    service's `bake` window (a rollback in it is a route flip) — `bake.rs`;
//!    or, without a window, **drain** its in-flight requests and stop it —
//!    `switch.rs`;
//! 10. **finalize**: active, succeeded; prune old images — `retention.rs`.
//!
//! Any failure before step 8 removes the candidate and leaves the previous
//! deployment serving, untouched. Step bookkeeping (status, timing, log
//! tails) is in `steps.rs`.

mod bake;
mod build;
mod canary;
mod candidate;
mod readiness;
mod release;
pub(crate) mod replicas;
mod retention;
mod source;
mod steps;
mod switch;
#[cfg(test)]
mod tests;

pub(crate) use bake::{has_instances, is_warm};
pub(crate) use candidate::{isolation_label, limits_for, runtime_info};
pub(crate) use source::{parse_app_config, service_from_record};

use crate::deployer::Deployer;
use crate::ids::now;
use berth_core::model::{Deployment, LogStream, StepName, StepStatus};
use berth_core::redact::Redactor;
use berth_core::state::Event;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a pipeline stopped early.
pub(crate) enum Stop {
    Failed { step: StepName, message: String },
    Cancelled,
}

type Flow<T> = Result<T, Stop>;

fn fail<T>(step: StepName, message: impl Into<String>) -> Flow<T> {
    Err(Stop::Failed {
        step,
        message: message.into(),
    })
}

/// Label naming the berth instance that owns a container.
pub const INSTANCE_LABEL: &str = "dev.berth.instance";

impl Deployer {
    /// The deploy algorithm. Each step records itself on `d`; a `Stop`
    /// returns to [`Deployer::execute`], which removes the candidate.
    async fn pipeline(
        self: &Arc<Self>,
        d: &mut Deployment,
        vars: &[berth_store::ResolvedVar],
        cancel: &CancellationToken,
    ) -> Flow<()> {
        let project = self
            .store
            .get_project(&d.project_name)
            .await
            .or_else(|e| fail(StepName::Clone, e.to_string()))?;

        // 1-4: the image: the copied deployment's when it is retained,
        // else clone, analyze, build (or reuse) and push.
        let service = match self.retained_image(d).await? {
            Some(service) => service,
            None => {
                self.image_from_source(d, &project.name, vars, cancel)
                    .await?
            }
        };
        Self::check_cancel(cancel)?;
        let image = d.image.clone().unwrap_or_default();

        // 5: the release command, once.
        self.release(d, &service, &image, vars, cancel).await?;
        Self::check_cancel(cancel)?;

        // 6: the candidate, beside the active deployment.
        self.start_candidate(d, &service, &image, vars).await?;

        // 7: readiness.
        self.readiness(d, &service, cancel).await?;
        Self::check_cancel(cancel)?;

        // 7b: a canary rollout when berth.toml asks for one.
        self.canary(d, &service, cancel).await?;

        // 8-10: switch, drain, finalize (cannot fail: the candidate is healthy).
        self.promote_candidate(d, &service).await;
        Ok(())
    }

    pub(crate) async fn execute(self: &Arc<Self>, mut d: Deployment, cancel: CancellationToken) {
        let vars = match self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.force_fail(&mut d, &format!("cannot read variables: {e}"))
                    .await;
                return;
            }
        };
        self.logs.set_redactor(
            &d.id,
            Redactor::new(vars.iter().filter(|v| v.secret).map(|v| v.value.as_str())),
        );
        // A rollback or promote of a deployment still warm in its bake
        // window: a route flip, no pipeline.
        if self.flip_to_warm(&mut d, None).await {
            self.metrics.record_pipeline(&d);
            return;
        }
        d.started_at = Some(now());
        self.apply(&mut d, Event::Start).await;
        let result = self.pipeline(&mut d, &vars, &cancel).await;
        match result {
            Ok(()) => {}
            Err(stop) => {
                let candidate = replicas::instance_ids(&d);
                d.runtime = None;
                d.instances.clear();
                d.canary_weight = None;
                if !candidate.is_empty() {
                    self.monitors.stop(&d.id);
                    self.edge_remove_preview(&d).await;
                    if let Err(e) = self.runtime.remove_all(&candidate).await {
                        tracing::warn!(deployment = d.id, error = %e, "cannot remove candidate");
                    }
                }
                match stop {
                    Stop::Failed { step, message } => {
                        let message = match self.logs.redactor(&d.id) {
                            Some(r) => r.redact(&message),
                            None => message,
                        };
                        self.finish_step(&mut d, step, StepStatus::Failed, None);
                        // the error report names the build that failed
                        let msg = match d.commit.as_ref().filter(|c| !c.sha.is_empty()) {
                            Some(c) => format!(
                                "{}: {message} (commit {})",
                                step.as_str(),
                                c.sha.get(..7).unwrap_or(&c.sha)
                            ),
                            None => format!("{}: {message}", step.as_str()),
                        };
                        self.logs.line(
                            &d.id,
                            LogStream::Berth,
                            Some(step),
                            &format!("failed: {msg}"),
                        );
                        d.failure_message = Some(msg);
                        self.apply(&mut d, Event::Fail).await;
                    }
                    Stop::Cancelled => {
                        for s in d.steps.iter_mut() {
                            if !s.status.is_finished() {
                                s.status = StepStatus::Cancelled;
                            }
                        }
                        d.failure_message = Some("cancelled by request".into());
                        self.logs.event(&d.id, "cancelled by request");
                        self.apply(&mut d, Event::Cancel).await;
                    }
                }
            }
        }
        if d.status != berth_core::state::Status::Succeeded {
            self.logs.forget(&d.id);
        }
        self.metrics.record_pipeline(&d);
    }

    /// Apply a state-machine event, record it, and log the stage change.
    pub(crate) async fn apply(&self, d: &mut Deployment, event: Event) {
        let before = d.promotion_stage;
        if !self.transition(d, event) {
            return;
        }
        if d.status.is_terminal() && d.completed_at.is_none() {
            d.completed_at = Some(now());
        }
        if d.promotion_stage != before {
            let extra = if event == Event::Drained {
                " — deployment succeeded"
            } else {
                ""
            };
            self.logs
                .event(&d.id, &format!("stage: {}{extra}", d.promotion_stage));
        }
        self.save(d).await;
    }

    /// Save the pipeline's record; a save that lost a race is redone on the
    /// fresh record ([`crate::saving::rebase_pipeline`]).
    pub(crate) async fn save(&self, d: &mut Deployment) {
        match crate::saving::save_retrying(&*self.store, d, crate::saving::rebase_pipeline).await {
            Ok(crate::saving::Saved::Written) => self.deployment_saved(),
            Ok(crate::saving::Saved::GaveUp) => {
                tracing::warn!(
                    deployment = d.id,
                    "not saved: the deployment ended elsewhere"
                )
            }
            Err(e) => tracing::error!(deployment = d.id, error = %e, "cannot save deployment"),
        }
    }
}

//! Swarm nodes (`--runtime swarm`): list them, drain one without a failed
//! request, activate it again.
//!
//! Swarm's own drain stops a node's tasks before their replacements run.
//! berth's drain ([`Deployer::drain_node`]) instead:
//! 1. pauses the node (Swarm places nothing new there; what runs stays);
//! 2. for every active deployment whose instance runs there: starts a
//!    replacement (a new service with the same spec, so Swarm places it on
//!    another node), waits until it passes the service's readiness probe,
//!    switches the route to it (one edge table swap), waits for the
//!    requests still in flight on the old one, then removes the old one;
//! 3. sets the node to drain (anything left there, e.g. not berth's, is
//!    stopped by Swarm).
//!
//! A replacement that never gets healthy is removed and the drain stops
//! there with the reason; the old instance keeps serving and the node stays
//! paused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::config::ServiceKind;
use berth_core::model::Deployment;
use berth_runtime::swarm::{Availability, NodeInfo};
use berth_runtime::SwarmRuntime;
use berth_store::DeploymentQuery;

use crate::deployer::Deployer;

/// What a drain did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    /// Deployments whose instance moved off the node.
    pub moved: Vec<String>,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Runtime(#[from] berth_runtime::RuntimeError),
    #[error("no other active, ready node to move instances to")]
    NowhereToGo,
    #[error(
        "deployment {deployment}: {reason}; the node stays paused and the instance keeps serving"
    )]
    Replacement { deployment: String, reason: String },
    #[error("store: {0}")]
    Store(String),
}

impl Deployer {
    /// Moves every active deployment's instance off `node` with no failed
    /// request, then drains it (see the module doc).
    pub async fn drain_node(
        self: &Arc<Self>,
        swarm: &SwarmRuntime,
        node: &NodeInfo,
    ) -> Result<DrainReport, NodeError> {
        let others = swarm
            .nodes()
            .await?
            .into_iter()
            .filter(|n| {
                n.id != node.id && n.status == "ready" && n.availability == Availability::Active
            })
            .count();
        if others == 0 {
            return Err(NodeError::NowhereToGo);
        }
        swarm
            .set_availability(&node.id, Availability::Pause)
            .await?;
        let on_node: Vec<String> = swarm
            .placements()
            .await?
            .into_iter()
            .filter(|(_, n)| n.as_deref() == Some(node.id.as_str()))
            .map(|(instance, _)| instance.id)
            .collect();
        let active = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await
            .map_err(|e| NodeError::Store(e.to_string()))?
            .into_iter()
            .filter(|d| d.is_active)
            .filter(|d| {
                crate::pipeline::replicas::instance_ids(d)
                    .iter()
                    .any(|id| on_node.contains(id))
            });
        let mut report = DrainReport::default();
        for d in active.collect::<Vec<_>>() {
            self.move_instance(d.clone()).await?;
            report.moved.push(d.id);
        }
        swarm
            .set_availability(&node.id, Availability::Drain)
            .await?;
        Ok(report)
    }

    /// Starts a replacement of `d`'s instances (all `replicas` of them:
    /// one Swarm service), waits for each to be healthy, routes to them,
    /// drains and removes the old ones.
    async fn move_instance(self: &Arc<Self>, mut d: Deployment) -> Result<(), NodeError> {
        let id = d.id.clone();
        let fail = |reason: String| NodeError::Replacement {
            deployment: id.clone(),
            reason,
        };
        let old = crate::pipeline::replicas::instance_ids(&d);
        if old.is_empty() {
            return Err(fail("no instance".into()));
        }
        let old_names: Vec<String> = match d.instances.is_empty() {
            true => d.runtime.iter().map(|r| r.instance_name.clone()).collect(),
            false => d.instances.iter().map(|i| i.name.clone()).collect(),
        };
        let image = d.image.clone().ok_or_else(|| fail("no image".into()))?;
        let service = crate::pipeline::service_from_record(&d);
        let vars = self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
            .map_err(|e| fail(format!("variables: {e}")))?;
        let mut spec = self.instance_spec(&d, &service, &image, &vars);
        spec.name = berth_runtime::instance_name(
            &[&d.project_name, &d.service_name, &d.environment_name],
            &format!("{}-m{}", d.id, &crate::ids::new_id()[10..]),
        );
        self.logs.event(
            &d.id,
            &format!(
                "node drain: starting a replacement of {}",
                old_names.join(", ")
            ),
        );
        let started = self
            .runtime
            .start_replicas(&spec, d.replicas.max(1))
            .await
            .map_err(|e| fail(format!("cannot start a replacement: {e}")))?;
        let new_ids: Vec<String> = started.iter().map(|i| i.id.clone()).collect();
        let mut ready_instances = Vec::new();
        for inst in &started {
            let mut inst = inst.clone();
            if service.kind == ServiceKind::Web {
                match self.wait_healthy(&inst.id, &service).await {
                    Ok(endpoint) => inst.endpoint = Some(endpoint),
                    Err(reason) => {
                        let _ = self.runtime.remove_all(&new_ids).await;
                        return Err(fail(reason));
                    }
                }
            }
            ready_instances.push(inst);
        }
        crate::pipeline::replicas::record_instances(
            &mut d,
            self.cfg.runtime,
            &service,
            &ready_instances,
            berth_core::state::Health::Healthy,
        );
        let (runtime, instances) = (d.runtime.clone(), d.instances.clone());
        // Only the instances change; anything else another writer saved
        // meanwhile stays. A deployment no longer active keeps its record.
        let saved = crate::saving::save_retrying(&*self.store, &mut d, |mine, fresh| {
            *mine = fresh;
            mine.runtime = runtime.clone();
            mine.instances = instances.clone();
            mine.is_active
        })
        .await;
        if !matches!(saved, Ok(crate::saving::Saved::Written)) {
            let _ = self.runtime.remove_all(&new_ids).await;
            return Err(fail(match saved {
                Err(e) => format!("cannot record the replacement: {e}"),
                _ => "it stopped being active during the move".to_owned(),
            }));
        }
        {
            let _switch = self.switch_lock.lock().await;
            self.sync_routes()
                .await
                .map_err(|e| fail(format!("cannot switch the route: {e}")))?;
        }
        // Requests already sent to the old instances finish there (the edge
        // counts in-flight requests per target, old and new together).
        let drain_until = Instant::now() + self.cfg.drain_timeout;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let targets = crate::pipeline::replicas::target_ids(&d);
        while targets.iter().any(|t| self.edge.inflight(t) > 0) && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for inst in &started {
            let tag = (started.len() > 1).then_some(inst.name.as_str());
            self.monitors
                .follow_replica_logs(self, &d.id, &inst.id, None, tag);
        }
        self.monitors.watch(self, &d, &service);
        if let Err(e) = self.runtime.remove_all(&old).await {
            tracing::warn!(deployment = d.id, error = %e, "could not remove the drained instances");
        }
        for o in &old {
            self.monitors.stop_logs(&d.id, o);
        }
        let to: Vec<String> = ready_instances
            .iter()
            .map(|i| {
                format!(
                    "{} ({})",
                    i.name,
                    i.endpoint
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                )
            })
            .collect();
        self.logs.event(
            &d.id,
            &format!(
                "node drain: moved from {} to {}",
                old_names.join(", "),
                to.join(", ")
            ),
        );
        Ok(())
    }

    /// Probes instance `id` with the service's readiness settings until it
    /// answers healthy (its endpoint), or says why not by the deadline.
    pub(crate) async fn wait_healthy(
        &self,
        id: &str,
        service: &berth_core::config::ServiceConfig,
    ) -> Result<berth_runtime::Endpoint, String> {
        let deadline = Instant::now() + service.readiness.deadline;
        loop {
            if let Ok(st) = self.runtime.inspect(id).await {
                if let (true, Some(endpoint)) = (st.is_running(), &st.endpoint) {
                    let r = berth_runtime::probe(
                        endpoint,
                        &service.readiness.path,
                        service.readiness.timeout,
                    )
                    .await;
                    if r.is_healthy() {
                        return Ok(endpoint.clone());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the replacement was not healthy within {}s",
                    service.readiness.deadline.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

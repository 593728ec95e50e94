//! Crash safety: on start, make what runs match what is recorded.
//!
//! The edge already serves the routes it persisted (so apps answer within
//! a second of a restart); then, with the store as the source of truth:
//! 1. every deployment that was mid-pipeline is finished (when it had
//!    already switched the route: finalize runs) or failed ("interrupted by
//!    restart"); queued ones are queued again — none stays queued or
//!    running forever;
//! 2. the containers berth owns are adopted when they belong to an active
//!    deployment (healthy ones are not restarted), re-created when the
//!    active deployment's container is gone, kept for a warm deployment
//!    with the rest of its bake window, stopped with grace when a retired
//!    deployment's record still names them (an interrupted drain; the
//!    record then forgets them, said in its log), and removed otherwise
//!    (orphaned candidates, warm ones whose window passed); volume helper
//!    containers a berth killed mid-way through a backup or restore left
//!    behind are removed (those of a live process are kept);
//! 3. the route table is rebuilt from the active deployments and external
//!    routes, and only the differences are applied.

use crate::deployer::Deployer;
use crate::ids::now;
use crate::pipeline::INSTANCE_LABEL;
use berth_core::config::ServiceConfig;
use berth_core::model::Deployment;
use berth_core::state::{Stage, Status};
use berth_edge::{RouteChange, RouteSpec, TargetSpec};
use berth_runtime::DEPLOYMENT_LABEL;
use berth_store::{DeploymentQuery, Slot};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

impl Deployer {
    pub async fn reconcile(self: &Arc<Self>) -> anyhow::Result<()> {
        self.fail_interrupted_runs().await;
        self.remove_leaked_volume_helpers().await;
        let unfinished = self
            .store
            .list_deployments(&DeploymentQuery {
                unfinished: true,
                ..Default::default()
            })
            .await?;
        let owned = match self.runtime.list_owned().await {
            Ok(o) => Some(
                o.into_iter()
                    .filter(|i| i.labels.get(INSTANCE_LABEL) == Some(&self.instance))
                    // Volume helpers are handled above, by their process.
                    .filter(|i| {
                        i.labels
                            .get(berth_runtime::volumes::ROLE_LABEL)
                            .map(String::as_str)
                            != Some("volume-helper")
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot list containers; adoption skipped");
                None
            }
        };
        let mut requeue = Vec::new();
        for mut d in unfinished.into_iter().rev() {
            if d.status == Status::Queued {
                requeue.push(d);
                continue;
            }
            if d.promotion_stage == Stage::DrainingPrevious && d.is_active {
                // The switch was recorded: finish the promotion (finalize;
                // the previous deployment's instances are stopped below).
                self.finish_interrupted_promotion(&mut d).await;
                continue;
            }
            let stage = d.promotion_stage;
            let ids = crate::pipeline::replicas::instance_ids(&d);
            d.runtime = None;
            d.instances.clear();
            if !ids.is_empty() {
                let _ = self.runtime.remove_all(&ids).await;
            }
            self.force_fail(
                &mut d,
                &match self.leadership.is_clustered() {
                    false => format!(
                        "interrupted by restart at stage {stage}; deploy again to retry"
                    ),
                    true => format!(
                        "interrupted: the leader running it stopped at stage {stage}; deploy again to retry"
                    ),
                },
            )
            .await;
        }

        // Active deployments: adopt, or re-create what is gone.
        let all = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await?;
        let active: Vec<Deployment> = all.into_iter().filter(|d| d.is_active).collect();
        let mut keep: HashSet<String> = HashSet::new();
        if let Some(owned) = &owned {
            for mut d in active.clone() {
                // Every running instance of it, in the order recorded: by
                // label, or by the recorded id (a rollback in the bake
                // window adopts instances labelled with another deployment).
                let recorded = crate::pipeline::replicas::instance_ids(&d);
                let mut found: Vec<&berth_runtime::Instance> = owned
                    .iter()
                    .filter(|i| {
                        i.running
                            && (i.labels.get(DEPLOYMENT_LABEL) == Some(&d.id)
                                || recorded.contains(&i.id))
                    })
                    .collect();
                found.sort_by_key(|i| {
                    recorded
                        .iter()
                        .position(|r| *r == i.id)
                        .unwrap_or(usize::MAX)
                });
                let service = crate::pipeline::service_from_record(&d);
                match found.is_empty() {
                    false => {
                        let mut adopted = Vec::new();
                        for inst in &found {
                            keep.insert(inst.id.clone());
                            let mut inst = (*inst).clone();
                            if let Ok(st) = self.runtime.inspect(&inst.id).await {
                                inst.endpoint = st.endpoint.or(inst.endpoint);
                            }
                            self.monitors.follow_replica_logs(
                                self,
                                &d.id,
                                &inst.id,
                                Some(now()),
                                (found.len() > 1).then_some(inst.name.as_str()),
                            );
                            adopted.push(inst);
                        }
                        crate::pipeline::replicas::record_instances(
                            &mut d,
                            self.cfg.runtime,
                            &service,
                            &adopted,
                            berth_core::state::Health::Healthy,
                        );
                        self.save(&mut d).await;
                        self.logs.event(
                            &d.id,
                            if adopted.len() == 1 {
                                "berth restarted: container adopted".to_owned()
                            } else {
                                format!("berth restarted: {} containers adopted", adopted.len())
                            }
                            .as_str(),
                        );
                        self.monitors.watch(self, &d, &service);
                    }
                    true => {
                        keep.extend(self.recreate(&mut d, &service).await);
                    }
                }
            }
            // Warm deployments: adopted with the rest of their bake window.
            if let Err(e) = self.adopt_warm(owned, &mut keep).await {
                tracing::error!(error = %e, "cannot adopt warm deployments");
            }
            // Retired deployments still recording instances (a drain or a
            // stop the crash interrupted): stopped, and forgotten.
            if let Err(e) = self.release_retired(owned, &mut keep).await {
                tracing::error!(error = %e, "cannot release retired deployments");
            }
            for inst in owned {
                if !keep.contains(&inst.id) {
                    tracing::info!(container = inst.name, "removing orphaned container");
                    let _ = self.runtime.remove(&inst.id).await;
                }
            }
        }

        self.sync_routes().await?;
        for d in requeue {
            self.logs.event(&d.id, "berth restarted: queued again");
            self.enqueue(d).await;
        }
        Ok(())
    }

    /// After a restart: a deployment neither active nor warm (superseded,
    /// rolled back, stopped, failed) whose record still points at
    /// instances — a crash came between the switch and the end of its
    /// drain, or before its stop was recorded. Its instances that still run
    /// are stopped in the background with its `stop_timeout` (their ids go
    /// into `keep`, so they are not removed as orphans without grace); the
    /// record forgets them either way, with a line in its own log saying
    /// which.
    async fn release_retired(
        self: &Arc<Self>,
        owned: &[berth_runtime::Instance],
        keep: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let all = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await?;
        let retired = all.into_iter().filter(|d| {
            !d.is_active
                && d.status.is_terminal()
                && !crate::pipeline::is_warm(d)
                && crate::pipeline::has_instances(d)
        });
        for mut d in retired {
            let recorded = crate::pipeline::replicas::instance_ids(&d);
            let names: Vec<String> = match d.instances.is_empty() {
                true => d.runtime.iter().map(|r| r.instance_name.clone()).collect(),
                false => d.instances.iter().map(|i| i.name.clone()).collect(),
            };
            let running: Vec<String> = owned
                .iter()
                .filter(|i| {
                    i.running
                        && !keep.contains(&i.id)
                        && (recorded.contains(&i.id)
                            || i.labels.get(DEPLOYMENT_LABEL) == Some(&d.id))
                })
                .map(|i| i.id.clone())
                .collect();
            d.runtime = None;
            d.instances.clear();
            d.bake_until = None;
            let forget = |mine: &mut Deployment, fresh: Deployment| {
                *mine = fresh;
                mine.runtime = None;
                mine.instances.clear();
                mine.bake_until = None;
                !mine.is_active
            };
            match crate::saving::save_retrying(&*self.store, &mut d, forget).await {
                Ok(crate::saving::Saved::Written) => {}
                Ok(crate::saving::Saved::GaveUp) => continue,
                Err(e) => {
                    tracing::error!(deployment = d.id, error = %e, "cannot release a retired deployment");
                    continue;
                }
            }
            let what = format!(
                "{} {}",
                if names.len() == 1 {
                    "container"
                } else {
                    "containers"
                },
                names.join(", ")
            );
            if running.is_empty() {
                self.logs.event(
                    &d.id,
                    &format!("berth restarted: {what} gone; the record no longer points at it"),
                );
                continue;
            }
            keep.extend(running.iter().cloned());
            let grace = crate::pipeline::service_from_record(&d).stop_timeout;
            self.logs.event(
                &d.id,
                &format!(
                    "berth restarted: {what} left running by an interrupted drain; stopping (grace {}s)",
                    grace.as_secs_f64()
                ),
            );
            let this = self.clone();
            let id = d.id.clone();
            let stopping = tokio::spawn(async move {
                this.stop_instances(&id, &running, &what, grace).await;
            });
            self.track(stopping.abort_handle());
        }
        Ok(())
    }

    /// Start a fresh container for an active deployment whose container is
    /// gone (the host rebooted, someone removed it).
    async fn recreate(
        self: &Arc<Self>,
        d: &mut Deployment,
        service: &ServiceConfig,
    ) -> Vec<String> {
        let Some(image) = d.image.clone() else {
            return Vec::new();
        };
        let Ok(vars) = self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
        else {
            return Vec::new();
        };
        let spec = self.instance_spec(d, service, &image, &vars);
        let old = crate::pipeline::replicas::instance_ids(d);
        if !old.is_empty() {
            let _ = self.runtime.remove_all(&old).await;
        }
        match self.runtime.start_replicas(&spec, d.replicas.max(1)).await {
            Ok(started) => {
                let names: Vec<&str> = started.iter().map(|i| i.name.as_str()).collect();
                self.logs.event(
                    &d.id,
                    &format!(
                        "berth restarted: container was gone; started {} again",
                        names.join(", ")
                    ),
                );
                crate::pipeline::replicas::record_instances(
                    d,
                    self.cfg.runtime,
                    service,
                    &started,
                    berth_core::state::Health::Pending,
                );
                self.save(d).await;
                for inst in &started {
                    let tag = (started.len() > 1).then_some(inst.name.as_str());
                    self.monitors
                        .follow_replica_logs(self, &d.id, &inst.id, None, tag);
                }
                self.monitors.watch(self, d, service);
                started.into_iter().map(|i| i.id).collect()
            }
            Err(e) => {
                self.logs.event(
                    &d.id,
                    &format!("berth restarted: cannot start container again: {e}"),
                );
                Vec::new()
            }
        }
    }

    /// The routes berth should serve, from the store.
    /// Removes the volume helper containers of this server (its instance
    /// label) that a berth process killed mid-way through a backup or
    /// restore left behind (`berth_runtime::volumes::helper_owner_alive`):
    /// they would keep the volume "in use" and block restores and teardowns.
    pub(crate) async fn remove_leaked_volume_helpers(&self) {
        let Some(seam) = self.volumes.get() else {
            return;
        };
        let labels = BTreeMap::from([(INSTANCE_LABEL.to_owned(), self.instance.clone())]);
        match seam.remove_leaked_helpers(&labels).await {
            Ok(removed) => {
                for name in removed {
                    tracing::info!(container = %name, "removed a volume helper left by a berth that stopped mid-way");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for leaked volume helpers");
            }
        }
    }

    pub(crate) async fn desired_routes(&self) -> anyhow::Result<BTreeMap<String, RouteSpec>> {
        let mut out = BTreeMap::new();
        let all = self
            .store
            .list_deployments(&DeploymentQuery::default())
            .await?;
        let domains = self.store.list_domains(None).await?;
        let maintenance = self.store.list_maintenance(None).await?;
        let mut seen_slots = HashSet::new();
        for d in &all {
            if !d.is_active || d.route_url.is_none() {
                continue;
            }
            if !seen_slots.insert(Slot::of(d)) {
                continue;
            }
            let targets = crate::pipeline::replicas::targets(d, 100);
            if targets.is_empty() {
                out.insert(self.route_host(d), RouteSpec::default());
                continue;
            }
            let mut policy = crate::pipeline::replicas::policy(d, None);
            policy.maintenance = crate::maintenance::covers(&maintenance, d);
            for host in self.slot_hosts_in(d, &domains) {
                out.insert(
                    host,
                    RouteSpec {
                        targets: targets.clone(),
                        policy: policy.clone(),
                    },
                );
            }
            out.insert(
                self.preview_host(d),
                RouteSpec {
                    targets,
                    policy: self.preview_policy(d).await,
                },
            );
        }
        // A canary in progress splits its slot's hosts the way the
        // pipeline's edge does (so every server's edge serves the split).
        for c in &all {
            let (Stage::Canary, Some(w @ 0..=99)) = (c.promotion_stage, c.canary_weight) else {
                continue;
            };
            let Some(prev) = all
                .iter()
                .find(|p| p.is_active && Slot::of(p) == Slot::of(c))
            else {
                continue;
            };
            let (n_c, n_p) = (
                crate::pipeline::replicas::target_count(c),
                crate::pipeline::replicas::target_count(prev),
            );
            let mut targets = crate::pipeline::replicas::targets(c, w * n_p);
            targets.extend(crate::pipeline::replicas::targets(prev, (100 - w) * n_c));
            if targets.is_empty() {
                continue;
            }
            let mut policy = crate::pipeline::replicas::policy(prev, None);
            policy.maintenance = crate::maintenance::covers(&maintenance, prev);
            for host in self.slot_hosts_in(c, &domains) {
                out.insert(
                    host,
                    RouteSpec {
                        targets: targets.clone(),
                        policy: policy.clone(),
                    },
                );
            }
        }
        for r in self.store.list_external_routes().await? {
            out.insert(
                r.hostname.clone(),
                RouteSpec {
                    targets: vec![TargetSpec {
                        id: format!("ext:{}", r.hostname),
                        upstream: r.upstream.clone(),
                        weight: 100,
                        deployment_id: None,
                        sha: None,
                    }],
                    ..Default::default()
                },
            );
        }
        // The console's hostname, unless an app routes it already (that
        // app keeps it).
        if let Some(c) = self.console_host.get() {
            if out.contains_key(&c.host) {
                c.warn_taken();
            } else {
                out.insert(c.host.clone(), c.route());
            }
        }
        Ok(out)
    }

    /// Make the edge's table equal the desired routes, changing only what
    /// differs.
    pub async fn sync_routes(&self) -> anyhow::Result<()> {
        let desired = self.desired_routes().await?;
        let current: BTreeMap<String, RouteSpec> = self.edge.routes().into_iter().collect();
        let mut changes = Vec::new();
        for (host, spec) in &desired {
            if current.get(host) != Some(spec) {
                changes.push(RouteChange::Upsert {
                    host: host.clone(),
                    route: spec.clone(),
                });
            }
        }
        for host in current.keys() {
            if !desired.contains_key(host) {
                changes.push(RouteChange::Remove { host: host.clone() });
            }
        }
        if !changes.is_empty() {
            tracing::info!(changes = changes.len(), "route table reconciled");
            self.edge.apply(changes)?;
        }
        Ok(())
    }
}

//! Background work attached to a running deployment: following its
//! container's stdout/stderr into the log hub, and probing its health after
//! cutover (000: every `interval`, `failure_threshold` consecutive failures
//! mark it unhealthy — recorded, logged and visible, never silent).

use crate::deployer::Deployer;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, LogStream};
use berth_core::state::{Health, Stage};
use berth_runtime::{LogOptions, ProbeSchedule};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Monitors {
    logs: Mutex<HashMap<String, CancellationToken>>,
    health: Mutex<HashMap<String, CancellationToken>>,
}

fn replace(map: &Mutex<HashMap<String, CancellationToken>>, id: &str) -> CancellationToken {
    let token = CancellationToken::new();
    if let Some(old) = map
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), token.clone())
    {
        old.cancel();
    }
    token
}

fn cancel(map: &Mutex<HashMap<String, CancellationToken>>, id: &str) {
    if let Some(t) = map.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
        t.cancel();
    }
}

impl Monitors {
    /// Stops every follower and monitor (a crash in tests, this server no
    /// longer leads, or a hand-over to another process: see `takeover`).
    pub(crate) fn stop_all(&self) {
        for map in [&self.logs, &self.health] {
            for (_, t) in map.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                t.cancel();
            }
        }
    }

    /// Stop everything attached to a deployment.
    pub fn stop(&self, id: &str) {
        let prefix = format!("{id}/");
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, token| {
                let mine = key.starts_with(&prefix);
                if mine {
                    token.cancel();
                }
                !mine
            });
        cancel(&self.health, id);
    }

    /// Stops following one instance's output.
    pub fn stop_logs(&self, deployment_id: &str, instance_id: &str) {
        cancel(&self.logs, &format!("{deployment_id}/{instance_id}"));
    }

    pub fn stop_health(&self, id: &str) {
        cancel(&self.health, id);
    }

    /// Follow the container's output into the deployment's log, resuming
    /// after `since` (lines at or before it are not stored twice).
    pub fn follow_logs(
        &self,
        deployer: &Arc<Deployer>,
        deployment_id: &str,
        instance_id: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        self.follow_replica_logs(deployer, deployment_id, instance_id, since, None);
    }

    /// [`Monitors::follow_logs`] for one replica of several: each line is
    /// tagged `[<instance name>] ` so the deployment's streams tell the
    /// replicas apart.
    pub fn follow_replica_logs(
        &self,
        deployer: &Arc<Deployer>,
        deployment_id: &str,
        instance_id: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        tag: Option<&str>,
    ) {
        let tag = tag.map(|t| format!("[{t}] "));
        // One follower per instance: a deployment with replicas has several.
        let token = replace(&self.logs, &format!("{deployment_id}/{instance_id}"));
        let d = deployer.clone();
        let (dep, inst) = (deployment_id.to_string(), instance_id.to_string());
        // Its lines are leader writes: they keep the caller's fence.
        tokio::spawn(berth_store::cluster::inherit(async move {
            d.ensure_redactor(&dep).await;
            let mut last = since;
            loop {
                let mut stream = d.runtime.logs(
                    &inst,
                    LogOptions {
                        follow: true,
                        since: last,
                        tail: None,
                    },
                );
                loop {
                    let item = tokio::select! {
                        i = stream.next() => i,
                        _ = token.cancelled() => return,
                    };
                    match item {
                        Some(Ok(chunk)) => {
                            if last.is_some_and(|l| chunk.ts <= l) {
                                continue;
                            }
                            last = Some(chunk.ts);
                            let stream = match chunk.stream {
                                berth_runtime::LogStream::Stdout => LogStream::Stdout,
                                berth_runtime::LogStream::Stderr => LogStream::Stderr,
                            };
                            match &tag {
                                Some(t) => {
                                    let line = format!("{t}{}", chunk.line);
                                    d.logs.line_wait(&dep, chunk.ts, stream, &line).await;
                                }
                                None => d.logs.line_wait(&dep, chunk.ts, stream, &chunk.line).await,
                            }
                        }
                        Some(Err(e)) => {
                            if e.is_not_found() {
                                return;
                            }
                            tracing::debug!(deployment = dep, error = %e, "log stream error");
                            break;
                        }
                        None => break,
                    }
                }
                // The stream ended: the container stopped, restarts, or is gone.
                match d.runtime.inspect(&inst).await {
                    Err(e) if e.is_not_found() => return,
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = token.cancelled() => return,
                }
            }
        }));
    }

    /// Probe an active deployment on its steady schedule: every instance
    /// each round. An instance that fails a probe is recorded unhealthy and
    /// leaves the edge's rotation at once (while another one serves); it is
    /// back at its next good probe. An instance that is gone or stopped for
    /// good (not restarting) is replaced by a new one, except on Swarm,
    /// which reschedules a slot itself (its new address is followed). The
    /// deployment is healthy while one instance is, unhealthy after
    /// `failure_threshold` rounds without any.
    pub fn watch(&self, deployer: &Arc<Deployer>, d: &Deployment, service: &ServiceConfig) {
        let token = replace(&self.health, &d.id);
        let dep = deployer.clone();
        let id = d.id.clone();
        let service = service.clone();
        let fence = deployer.leadership.fence();
        tokio::spawn(berth_store::cluster::fenced(fence, async move {
            let readiness = &service.readiness;
            let schedule = ProbeSchedule::every(readiness.interval);
            let mut failures = 0u32;
            // Rounds each instance has been seen stopped (not restarting).
            let mut stopped: HashMap<String, u32> = HashMap::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(schedule.interval_at(Duration::MAX)) => {}
                    _ = token.cancelled() => return,
                }
                let Ok(current) = dep.store.get_deployment(&id).await else {
                    return;
                };
                if !matches!(
                    current.promotion_stage,
                    Stage::Active | Stage::DrainingPrevious
                ) {
                    return;
                }
                if current.runtime.is_none() && current.instances.is_empty() {
                    return;
                }
                let mut instances = current.instances.clone();
                if instances.is_empty() {
                    let rt = current.runtime.clone().unwrap_or_default();
                    instances.push(berth_core::model::InstanceInfo {
                        id: rt.instance_id,
                        name: rt.instance_name,
                        node: None,
                        address: rt.address,
                        health: current.health,
                    });
                }
                let mut changed = false;
                let mut any_healthy = false;
                let mut whys = Vec::new();
                for (index, inst) in instances.iter_mut().enumerate() {
                    let state = dep.runtime.inspect(&inst.id).await;
                    let (healthy, why, gone) = match &state {
                        Ok(st) if st.is_running() => {
                            stopped.remove(&inst.id);
                            if let Some(node) = st.labels.get(berth_runtime::NODE_LABEL) {
                                if inst.node.as_ref() != Some(node) {
                                    inst.node = Some(node.clone());
                                    changed = true;
                                }
                            }
                            if let (Some(addr), ServiceKind::Web) = (&st.endpoint, service.kind) {
                                if inst.address.as_deref() != Some(addr.to_string().as_str()) {
                                    dep.logs.event(
                                        &id,
                                        &format!(
                                            "container {} restarted; now reached at {addr}",
                                            inst.name
                                        ),
                                    );
                                    inst.address = Some(addr.to_string());
                                    changed = true;
                                }
                                let r =
                                    berth_runtime::probe(addr, &readiness.path, readiness.timeout)
                                        .await;
                                (r.is_healthy(), r.describe(&readiness.path), false)
                            } else {
                                (true, "running".to_string(), false)
                            }
                        }
                        Ok(st) => {
                            let restarting = matches!(
                                st.status,
                                berth_runtime::InstanceStatus::Restarting
                                    | berth_runtime::InstanceStatus::Pending
                            );
                            let n = stopped.entry(inst.id.clone()).or_default();
                            if !restarting {
                                *n += 1;
                            }
                            (
                                false,
                                match st.exit_code() {
                                    Some(c) => format!("container exited with code {c}"),
                                    None => format!("container is {:?}", st.status).to_lowercase(),
                                },
                                // Stopped twice in a row and not coming back.
                                *n >= 2,
                            )
                        }
                        Err(e) if e.is_not_found() => {
                            (false, "container is gone".to_string(), true)
                        }
                        Err(e) => (false, format!("cannot inspect container: {e}"), false),
                    };
                    let want = if healthy {
                        Health::Healthy
                    } else {
                        Health::Unhealthy
                    };
                    if inst.health != want {
                        inst.health = want;
                        changed = true;
                        if instances_len_gt_one(&current) {
                            dep.logs
                                .event(&id, &format!("instance {}: {want} ({why})", inst.name));
                        }
                    }
                    // the edge's passive marks follow the probe (a replica a
                    // refused request took out comes back when it answers)
                    if let (Some(_), ServiceKind::Web) = (&inst.address, service.kind) {
                        let target = crate::pipeline::replicas::target_id(&id, index);
                        dep.edge.report_health(&target, healthy);
                    }
                    any_healthy |= healthy;
                    if !healthy {
                        whys.push(if instances_len_gt_one(&current) {
                            format!("{}: {why}", inst.name)
                        } else {
                            why.clone()
                        });
                    }
                    let swarm = dep.cfg.runtime == crate::config::RuntimeKind::Swarm;
                    if gone && !swarm {
                        if let Some(new) =
                            dep.replace_instance(&current, &service, index, inst).await
                        {
                            stopped.remove(&inst.id);
                            *inst = new;
                            changed = true;
                        }
                    }
                }
                if changed {
                    dep.record_instances(&current, instances).await;
                }
                let why = whys.join("; ");
                if any_healthy {
                    failures = 0;
                } else {
                    failures += 1;
                    dep.logs.event(
                        &id,
                        &format!(
                            "health check failed ({failures}/{}): {why}",
                            readiness.failure_threshold
                        ),
                    );
                }
                let want = if any_healthy {
                    Some(Health::Healthy)
                } else if failures >= readiness.failure_threshold {
                    Some(Health::Unhealthy)
                } else {
                    None
                };
                let Ok(current) = dep.store.get_deployment(&id).await else {
                    return;
                };
                if let Some(h) = want.filter(|h| *h != current.health) {
                    // Compare-and-set: a supersede saved since `current`
                    // was read is never undone (see saving.rs).
                    match crate::saving::record_health(&*dep.store, &current, h).await {
                        Ok(Some(_)) => dep.logs.event(&id, &format!("health: {h} ({why})")),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(deployment = id, error = %e, "cannot record health")
                        }
                    }
                }
            }
        }));
    }
}

fn instances_len_gt_one(d: &Deployment) -> bool {
    d.instances.len() > 1
}

impl Deployer {
    /// Make sure the deployment's lines are redacted with its environment's
    /// secrets (after a restart the pipeline that set them is gone).
    pub(crate) async fn ensure_redactor(&self, id: &str) {
        if self.logs.redactor(id).is_some() {
            return;
        }
        let Ok(d) = self.store.get_deployment(id).await else {
            return;
        };
        if let Ok(vars) = self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
        {
            self.logs.set_redactor(
                id,
                berth_core::redact::Redactor::new(
                    vars.iter().filter(|v| v.secret).map(|v| v.value.as_str()),
                ),
            );
        }
    }

    /// Records the monitor's view of `d`'s instances (addresses, health,
    /// replacements) while it is live, then recomputes the routes.
    pub(crate) async fn record_instances(
        &self,
        d: &Deployment,
        instances: Vec<berth_core::model::InstanceInfo>,
    ) {
        let mut updated = d.clone();
        let apply = |mine: &mut Deployment| -> bool {
            if !crate::saving::is_live(mine) {
                return false;
            }
            if mine.instances.is_empty() && instances.len() == 1 {
                // A record from before instances: the one instance is `runtime`.
                if let Some(r) = mine.runtime.as_mut() {
                    r.address = instances[0].address.clone();
                }
                return true;
            }
            if let (Some(r), Some(first)) = (mine.runtime.as_mut(), instances.first()) {
                r.instance_id = first.id.clone();
                r.instance_name = first.name.clone();
                r.address = first.address.clone();
            }
            mine.instances = instances.clone();
            true
        };
        if !apply(&mut updated) {
            return;
        }
        let redo = |mine: &mut Deployment, fresh: Deployment| {
            *mine = fresh;
            apply(mine)
        };
        if let Err(e) = crate::saving::save_retrying(&*self.store, &mut updated, redo).await {
            tracing::error!(deployment = d.id, error = %e, "cannot record instances");
        }
        // The store now holds the instances: recompute the routes.
        let _switch = self.switch_lock.lock().await;
        if let Err(e) = self.sync_routes().await {
            tracing::error!(deployment = d.id, error = %e, "cannot follow the instances");
        }
    }

    /// Starts a new instance in place of `old` (number `index` of `d`),
    /// which stopped for good or is gone; `None` when it cannot.
    pub(crate) async fn replace_instance(
        self: &Arc<Self>,
        d: &Deployment,
        service: &ServiceConfig,
        index: usize,
        old: &berth_core::model::InstanceInfo,
    ) -> Option<berth_core::model::InstanceInfo> {
        let image = d.image.clone()?;
        let vars = self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
            .ok()?;
        let mut spec = self.instance_spec(d, service, &image, &vars);
        spec.name = berth_runtime::replica_name(&spec.name, index as u32 + 1);
        self.monitors.stop_logs(&d.id, &old.id);
        let _ = self.runtime.remove(&old.id).await;
        match self.runtime.start(&spec).await {
            Ok(inst) => {
                self.logs.event(
                    &d.id,
                    &format!(
                        "instance {} stopped for good; replaced by {}",
                        old.name, inst.name
                    ),
                );
                let tag = (d.instances.len() > 1).then_some(inst.name.as_str());
                self.monitors
                    .follow_replica_logs(self, &d.id, &inst.id, None, tag);
                Some(crate::pipeline::replicas::instance_info(
                    &inst,
                    Health::Pending,
                ))
            }
            Err(e) => {
                self.logs.event(
                    &d.id,
                    &format!(
                        "instance {} stopped for good; cannot replace it: {e}",
                        old.name
                    ),
                );
                None
            }
        }
    }
}

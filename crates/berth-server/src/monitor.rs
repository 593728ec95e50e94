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
    /// Stop everything attached to a deployment.
    /// Stops every follower and monitor (a crash, in tests).
    #[cfg(test)]
    pub(crate) fn stop_all(&self) {
        for map in [&self.logs, &self.health] {
            for (_, t) in map.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                t.cancel();
            }
        }
    }

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
        // One follower per instance: a deployment with replicas has several.
        let token = replace(&self.logs, &format!("{deployment_id}/{instance_id}"));
        let d = deployer.clone();
        let (dep, inst) = (deployment_id.to_string(), instance_id.to_string());
        tokio::spawn(async move {
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
                            d.logs.line_wait(&dep, chunk.ts, stream, &chunk.line).await;
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
        });
    }

    /// Probe an active deployment on its steady schedule.
    pub fn watch(&self, deployer: &Arc<Deployer>, d: &Deployment, service: &ServiceConfig) {
        let token = replace(&self.health, &d.id);
        let dep = deployer.clone();
        let id = d.id.clone();
        let readiness = service.readiness.clone();
        let kind = service.kind;
        tokio::spawn(async move {
            let schedule = ProbeSchedule::every(readiness.interval);
            let mut failures = 0u32;
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
                let Some(rt) = current.runtime.clone() else {
                    return;
                };
                let (healthy, why) = match dep.runtime.inspect(&rt.instance_id).await {
                    Ok(st) if st.is_running() => {
                        if let (Some(addr), ServiceKind::Web) = (st.endpoint, kind) {
                            dep.follow_address(&current, &addr).await;
                            let r = berth_runtime::probe(&addr, &readiness.path, readiness.timeout)
                                .await;
                            (r.is_healthy(), r.describe(&readiness.path))
                        } else {
                            (true, "running".to_string())
                        }
                    }
                    Ok(st) => (
                        false,
                        match st.exit_code() {
                            Some(c) => format!("container exited with code {c}"),
                            None => format!("container is {:?}", st.status).to_lowercase(),
                        },
                    ),
                    Err(e) => (false, format!("cannot inspect container: {e}")),
                };
                if healthy {
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
                let want = if healthy {
                    Some(Health::Healthy)
                } else if failures >= readiness.failure_threshold {
                    Some(Health::Unhealthy)
                } else {
                    None
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
        });
    }
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

    /// A restarted container may come back on another published port:
    /// point the routes and the record at it.
    pub(crate) async fn follow_address(&self, d: &Deployment, addr: &berth_runtime::Endpoint) {
        let addr = addr.to_string();
        let recorded = d.runtime.as_ref().and_then(|r| r.address.clone());
        if recorded.as_deref() == Some(addr.as_str()) {
            return;
        }
        let mut updated = d.clone();
        if let Some(r) = updated.runtime.as_mut() {
            r.address = Some(addr.clone());
        }
        self.logs.event(
            &d.id,
            &format!("container restarted; now reached at {addr}"),
        );
        let redo = |mine: &mut Deployment, fresh: Deployment| {
            *mine = fresh;
            match mine.runtime.as_mut() {
                Some(r) => {
                    r.address = Some(addr.clone());
                    true
                }
                None => false,
            }
        };
        if let Err(e) = crate::saving::save_retrying(&*self.store, &mut updated, redo).await {
            tracing::error!(deployment = d.id, error = %e, "cannot record new address");
        }
        // The store now holds the new address: recompute the routes.
        if let Err(e) = self.sync_routes().await {
            tracing::error!(deployment = d.id, error = %e, "cannot follow new address");
        }
    }
}

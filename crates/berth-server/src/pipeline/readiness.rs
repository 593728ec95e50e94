//! Step 7: readiness: probe the candidate on a fast schedule
//! ([`berth_runtime::ProbeSchedule::STARTUP`]) until it answers, or fail
//! naming the cause. Each round asks the engine how the instance is (exit,
//! restarts) and probes its published address at the same time.

use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, LogStream, StepName, StepStatus};
use berth_core::state::Event;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// Step 7: wait until the candidate is ready.
    pub(super) async fn readiness(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        cancel: &CancellationToken,
    ) -> Flow<()> {
        // Saved running only when the first probe did not pass: an app
        // that answers at once costs no store write before its switch.
        self.start_step(d, StepName::HealthCheck);
        let mut saved = false;
        // Every instance must be ready; they started together, so the
        // waits overlap and share the deadline.
        let started = Instant::now();
        let count = d.instances.len().max(1);
        let mut ready = String::new();
        for index in 0..count {
            ready = self
                .wait_ready(d, service, cancel, index, started, &mut saved)
                .await?;
            if let Some(i) = d.instances.get_mut(index) {
                i.health = berth_core::state::Health::Healthy;
            }
        }
        if count > 1 {
            ready = format!("{count} instances ready; the last: {ready}");
        }
        self.finish_step(
            d,
            StepName::HealthCheck,
            StepStatus::Succeeded,
            Some(&ready),
        );
        self.apply(d, Event::Ready).await;
        Ok(())
    }

    /// Probe the candidate on a fast schedule until it is ready, or fail
    /// naming the cause (exit code, crash, last probe result, deadline).
    async fn wait_ready(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        cancel: &CancellationToken,
        index: usize,
        started: Instant,
        saved: &mut bool,
    ) -> Flow<String> {
        let mut rt = d.runtime.clone().unwrap_or_default();
        if let Some(i) = d.instances.get(index) {
            rt.instance_id = i.id.clone();
            rt.instance_name = i.name.clone();
            rt.address = i.address.clone();
        }
        let which = if d.instances.len() > 1 {
            format!("container {}", rt.instance_name)
        } else {
            "container".to_owned()
        };
        let readiness = &service.readiness;
        let deadline = readiness.deadline;
        let schedule = berth_runtime::ProbeSchedule::default();
        let mut last_probe = String::from("no probe answered yet");
        let mut probes = 0u32;
        // The published address, known from the start with Docker: the probe
        // then runs beside the engine's inspect, not after it.
        let mut known: Option<berth_runtime::Endpoint> = match service.kind {
            ServiceKind::Web => rt.address.as_deref().and_then(|a| a.parse().ok()),
            ServiceKind::Worker => None,
        };
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let (state, early) = match &known {
                Some(addr) => {
                    let (state, res) = tokio::join!(
                        self.runtime.inspect(&rt.instance_id),
                        berth_runtime::probe(addr, &readiness.path, readiness.timeout)
                    );
                    probes += 1;
                    (state, Some((addr.clone(), res)))
                }
                None => (self.runtime.inspect(&rt.instance_id).await, None),
            };
            match state {
                Ok(st) => {
                    if let Some(code) = st.exit_code() {
                        let oom = if st.oom_killed {
                            " (killed: out of memory)"
                        } else {
                            ""
                        };
                        return fail(
                            StepName::HealthCheck,
                            format!(
                                "{which} exited with code {code}{oom} before it became healthy; last output: {}",
                                self.last_output(&d.id).await
                            ),
                        );
                    }
                    if st.restart_count > 0 {
                        return fail(
                            StepName::HealthCheck,
                            format!(
                                "{which} crashed and was restarted {} time(s) before it became healthy; last output: {}",
                                st.restart_count,
                                self.last_output(&d.id).await
                            ),
                        );
                    }
                    if let Some(err) = st.error.clone().filter(|e| !e.is_empty()) {
                        return fail(StepName::HealthCheck, format!("{which} failed: {err}"));
                    }
                    if st.is_running() {
                        match service.kind {
                            ServiceKind::Worker => {
                                if started.elapsed() >= Duration::from_secs(2).min(deadline) {
                                    return Ok("worker is running".into());
                                }
                            }
                            ServiceKind::Web => {
                                let addr = st.endpoint.clone().or_else(|| known.clone());
                                if let Some(addr) = addr {
                                    if index == 0 {
                                        if let Some(r) = d.runtime.as_mut() {
                                            r.address = Some(addr.to_string());
                                        }
                                    }
                                    if let Some(i) = d.instances.get_mut(index) {
                                        i.address = Some(addr.to_string());
                                    }
                                    // the probe that ran beside the inspect, if
                                    // it asked this address; else one now
                                    let res = match early.filter(|(a, _)| *a == addr) {
                                        Some((_, res)) => res,
                                        None => {
                                            probes += 1;
                                            berth_runtime::probe(
                                                &addr,
                                                &readiness.path,
                                                readiness.timeout,
                                            )
                                            .await
                                        }
                                    };
                                    known = Some(addr);
                                    last_probe = res.describe(&readiness.path);
                                    if res.is_healthy() {
                                        let msg = format!(
                                            "{last_probe} after {} ms ({probes} {})",
                                            started.elapsed().as_millis(),
                                            if probes == 1 { "probe" } else { "probes" }
                                        );
                                        self.logs.line(
                                            &d.id,
                                            LogStream::Berth,
                                            Some(StepName::HealthCheck),
                                            &last_probe,
                                        );
                                        return Ok(msg);
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() => {
                    return fail(
                        StepName::HealthCheck,
                        format!("{which} disappeared before it became healthy"),
                    );
                }
                Err(e) => last_probe = format!("cannot inspect container: {e}"),
            }
            if started.elapsed() >= deadline {
                let port_hint = if last_probe.contains("refused") || last_probe.contains("reset") {
                    format!(
                        " (is the app listening on 0.0.0.0:{}? berth sets PORT={})",
                        service.port, service.port
                    )
                } else {
                    String::new()
                };
                return fail(
                    StepName::HealthCheck,
                    format!(
                        "not healthy within the {}s deadline; last probe: {last_probe}{port_hint}",
                        deadline.as_secs()
                    ),
                );
            }
            if !*saved {
                self.save(d).await;
                *saved = true;
            }
            tokio::time::sleep(schedule.interval_at(started.elapsed())).await;
        }
    }

    async fn last_output(&self, id: &str) -> String {
        // Give the log follower a moment to store the last lines.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = self
            .store
            .read_logs(&berth_store::LogQuery {
                deployment_id: Some(id.to_string()),
                streams: vec![LogStream::Stdout, LogStream::Stderr],
                limit: Some(5),
                tail: true,
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        if lines.is_empty() {
            "(none)".into()
        } else {
            lines
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        }
    }
}

//! Step bookkeeping shared by every step: status, timing, log tails.

use super::{Flow, Stop};
use crate::deployer::Deployer;
use crate::ids::now;
use berth_build::LogSink;
use berth_core::model::{Deployment, LogStream, StepName, StepStatus};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Deployer {
    pub(super) fn start_step(&self, d: &mut Deployment, name: StepName) {
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == name) {
            s.status = StepStatus::Running;
            s.started_at = Some(now());
        }
    }

    pub(super) fn finish_step(
        &self,
        d: &mut Deployment,
        name: StepName,
        status: StepStatus,
        note: Option<&str>,
    ) {
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == name) {
            let end = now();
            if s.started_at.is_none() {
                s.started_at = Some(end);
            }
            s.status = status;
            s.completed_at = Some(end);
            s.duration_ms = s.started_at.map(|t| (end - t).num_milliseconds());
            if let Some(n) = note {
                if !s.log.is_empty() {
                    s.log.push('\n');
                }
                s.log.push_str(n);
            }
        }
        if let Some(n) = note {
            self.logs.line(&d.id, LogStream::Berth, Some(name), n);
        }
    }

    pub(super) async fn skip(&self, d: &mut Deployment, name: StepName, why: &str) {
        self.finish_step(d, name, StepStatus::Skipped, Some(why));
        self.save(d).await;
    }

    /// A log sink for a step: lines go to the log hub and to the step's
    /// `log` (last lines kept).
    pub(super) fn sink(
        &self,
        d: &Deployment,
        step: StepName,
    ) -> (LogSink, Arc<std::sync::Mutex<Vec<String>>>) {
        let tail = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let hub = self.logs.clone();
        let id = d.id.clone();
        let t = tail.clone();
        let sink: LogSink = Arc::new(move |line: &str| {
            hub.line(&id, LogStream::Build, Some(step), line);
            let redacted = match hub.redactor(&id) {
                Some(r) => r.redact(line),
                None => line.to_string(),
            };
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            t.push(redacted);
            if t.len() > 200 {
                t.drain(..100);
            }
        });
        (sink, tail)
    }

    pub(super) fn keep_tail(
        d: &mut Deployment,
        step: StepName,
        tail: &std::sync::Mutex<Vec<String>>,
    ) {
        let lines = tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == step) {
            let start = lines.len().saturating_sub(50);
            s.log = lines[start..].join("\n");
        }
    }

    pub(super) fn check_cancel(cancel: &CancellationToken) -> Flow<()> {
        if cancel.is_cancelled() {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }
}

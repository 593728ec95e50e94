//! The log hub: every line berth keeps (its own events, build output,
//! container stdout/stderr) goes through here to the store.
//!
//! Invariants: a producer never waits for the store — lines go into a
//! bounded queue and, when it is full, are dropped and counted (the count is
//! written as a line of its own once there is room), so a chatty app or a
//! slow disk never blocks a pipeline or an app. Secret values are redacted
//! before a line is queued, so no stored or streamed line holds one. A
//! line queued by leader work keeps that work's fence
//! (`berth_store::cluster`): the writer stores it under it, so a deposed
//! leader's late lines are refused, not written.

use berth_core::model::{LogStream, StepName};
use berth_core::redact::Redactor;
use berth_store::cluster::{current_fence, fenced, Fence};
use berth_store::{NewLogLine, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// One append under `fence`; a failure is logged (the producer never waits).
async fn store_lines(store: &dyn Store, fence: Option<Fence>, lines: &[NewLogLine]) {
    match fenced(fence, store.append_logs(lines)).await {
        Ok(()) => {}
        Err(e @ StoreError::Fenced { .. }) => {
            tracing::warn!(error = %e, lines = lines.len(), "log lines of a deposed leader dropped");
        }
        Err(e) => tracing::error!(error = %e, lines = lines.len(), "could not store log lines"),
    }
}

/// Lines waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Lines written per transaction, at most.
const BATCH: usize = 2_000;
/// Longest stored line; longer ones are cut and marked.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone)]
pub struct LogHub {
    tx: mpsc::Sender<(NewLogLine, Option<Fence>)>,
    dropped: Arc<Mutex<HashMap<String, u64>>>,
    /// Shared with `/metrics` (`berth_log_lines_dropped_total`).
    dropped_total: prometheus_client::metrics::counter::Counter,
    redactors: Arc<Mutex<HashMap<String, Arc<Redactor>>>>,
    written: watch::Receiver<u64>,
}

impl LogHub {
    /// Start the writer task.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(NewLogLine, Option<Fence>)>(QUEUE);
        let (written_tx, written) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                let n = rx.recv_many(&mut buf, BATCH).await;
                if n == 0 {
                    break;
                }
                // One write per run of lines queued under the same fence.
                let mut lines = Vec::with_capacity(buf.len());
                let mut fence = None;
                for (line, f) in buf.drain(..) {
                    if !lines.is_empty() && f != fence {
                        store_lines(&*store, fence, &lines).await;
                        lines.clear();
                    }
                    fence = f;
                    lines.push(line);
                }
                store_lines(&*store, fence, &lines).await;
                written_tx.send_modify(|g| *g += 1);
            }
        });
        LogHub {
            tx,
            dropped: Default::default(),
            dropped_total: Default::default(),
            redactors: Default::default(),
            written,
        }
    }

    /// Secrets of a deployment's environment, masked in its lines from now on.
    pub fn set_redactor(&self, deployment_id: &str, r: Redactor) {
        self.redactors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(deployment_id.to_string(), Arc::new(r));
    }

    pub fn redactor(&self, deployment_id: &str) -> Option<Arc<Redactor>> {
        self.redactors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment_id)
            .cloned()
    }

    pub fn forget(&self, deployment_id: &str) {
        self.redactors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(deployment_id);
    }

    /// A receiver that changes after every batch is stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// Lines dropped since start because the queue was full.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.get()
    }

    /// The counter `/metrics` renders (the same, not a copy).
    pub fn dropped_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.dropped_total.clone()
    }

    pub fn line(&self, deployment_id: &str, stream: LogStream, step: Option<StepName>, text: &str) {
        self.line_at(deployment_id, chrono::Utc::now(), stream, step, text)
    }

    pub fn line_at(
        &self,
        deployment_id: &str,
        ts: chrono::DateTime<chrono::Utc>,
        stream: LogStream,
        step: Option<StepName>,
        text: &str,
    ) {
        let text = self.prepare(deployment_id, text);
        // Report lines dropped earlier, once there is room again.
        let pending_drop = {
            let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
            d.remove(deployment_id)
        };
        if let Some(n) = pending_drop {
            let note = NewLogLine {
                deployment_id: deployment_id.to_string(),
                ts,
                stream: LogStream::Berth,
                step: None,
                text: format!("{n} log lines dropped: the log store could not keep up"),
            };
            if self.tx.try_send((note, current_fence())).is_err() {
                self.count_drop(deployment_id, n);
            }
        }
        let line = NewLogLine {
            deployment_id: deployment_id.to_string(),
            ts,
            stream,
            step,
            text,
        };
        if self.tx.try_send((line, current_fence())).is_err() {
            self.count_drop(deployment_id, 1);
        }
    }

    /// Like [`LogHub::line_at`], but waits for room instead of dropping:
    /// for container output, which the engine already buffers on disk, so
    /// waiting slows nobody down.
    pub async fn line_wait(
        &self,
        deployment_id: &str,
        ts: chrono::DateTime<chrono::Utc>,
        stream: LogStream,
        text: &str,
    ) {
        let text = self.prepare(deployment_id, text);
        let line = NewLogLine {
            deployment_id: deployment_id.to_string(),
            ts,
            stream,
            step: None,
            text,
        };
        if self.tx.send((line, current_fence())).await.is_err() {
            self.count_drop(deployment_id, 1);
        }
    }

    /// Redact secrets and cut overlong lines.
    fn prepare(&self, deployment_id: &str, text: &str) -> String {
        let mut text = match self.redactor(deployment_id) {
            Some(r) => r.redact(text),
            None => text.to_string(),
        };
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" …[line cut]");
        }
        text
    }

    fn count_drop(&self, deployment_id: &str, n: u64) {
        self.dropped_total.inc_by(n);
        *self
            .dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(deployment_id.to_string())
            .or_default() += n;
    }

    /// berth's own event line.
    pub fn event(&self, deployment_id: &str, text: &str) {
        self.line(deployment_id, LogStream::Berth, None, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::cluster::fenced;
    use berth_store::{testpg, Cipher, LogQuery, NewProject, PgStore};

    /// Lines queued by a deposed leader's work are refused; lines of the
    /// current leader and of API requests are stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_keep_the_fence_of_the_work_that_queued_them() {
        let Some(base) = testpg::require() else {
            return;
        };
        let url = testpg::fresh_database(&base).await;
        let store: Arc<dyn Store> = Arc::new(
            PgStore::connect(&url, Cipher::from_key([4; 32]))
                .await
                .unwrap(),
        );
        let t0 = chrono::Utc::now();
        store
            .create_project(NewProject {
                name: "shop".into(),
                repo: "/srv/repo".into(),
                default_branch: "main".into(),
                retain_images: 3,
                webhook_secret: None,
                deploy_key: None,
                created_at: t0,
            })
            .await
            .unwrap();
        use berth_core::model::{BuildInfo, Deployment, Trigger};
        use berth_core::state::{Health, Stage, Status};
        let d = Deployment {
            id: "d1".into(),
            project_name: "shop".into(),
            service_name: "web".into(),
            environment_name: "production".into(),
            status: Status::Queued,
            promotion_stage: Stage::Pending,
            health: Health::Pending,
            is_active: false,
            route_url: None,
            preview_url: None,
            failure_message: None,
            created_at: t0,
            started_at: None,
            completed_at: None,
            reference: "main".into(),
            commit: None,
            trigger: Trigger::Manual,
            source_deployment_id: None,
            image: None,
            build: BuildInfo::default(),
            steps: Vec::new(),
            canary_weight: None,
            replicas: 1,
            instances: Vec::new(),
            bake_until: None,
            runtime: None,
            source_repo: None,
            version: 0,
        };
        store.insert_deployment(&d).await.unwrap();
        let ttl = std::time::Duration::from_millis(300);
        let old = store.heartbeat("a", "http://a", ttl).await.unwrap();
        tokio::time::sleep(ttl * 2).await;
        let new = store.heartbeat("b", "http://b", ttl * 50).await.unwrap();
        assert!(new.mine, "{new:?}");
        let fence = |m: &str, epoch| {
            Some(Fence {
                member: m.into(),
                epoch,
            })
        };

        let hub = LogHub::start(store.clone());
        let mut written = hub.subscribe();
        fenced(fence("a", old.epoch), async { hub.event("d1", "late") }).await;
        fenced(fence("b", new.epoch), async { hub.event("d1", "leader") }).await;
        hub.event("d1", "api");
        let lines = loop {
            let lines = store
                .read_logs(&LogQuery {
                    deployment_id: Some("d1".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            if lines.len() >= 2 {
                break lines;
            }
            tokio::time::timeout(std::time::Duration::from_secs(10), written.changed())
                .await
                .expect("the writer stores the lines")
                .unwrap();
        };
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["leader", "api"]);
    }
}

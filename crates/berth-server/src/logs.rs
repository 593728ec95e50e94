//! The log hub: every line berth keeps (its own events, build output,
//! container stdout/stderr) goes through here to the store.
//!
//! Invariants: a producer never waits for the store — lines go into a
//! bounded queue and, when it is full, are dropped and counted (the count is
//! written as a line of its own once there is room), so a chatty app or a
//! slow disk never blocks a pipeline or an app. Secret values are redacted
//! before a line is queued, so no stored or streamed line holds one.

use berth_core::model::{LogStream, StepName};
use berth_core::redact::Redactor;
use berth_store::{NewLogLine, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Lines waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Lines written per transaction, at most.
const BATCH: usize = 2_000;
/// Longest stored line; longer ones are cut and marked.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone)]
pub struct LogHub {
    tx: mpsc::Sender<NewLogLine>,
    dropped: Arc<Mutex<HashMap<String, u64>>>,
    dropped_total: Arc<AtomicU64>,
    redactors: Arc<Mutex<HashMap<String, Arc<Redactor>>>>,
    written: watch::Receiver<u64>,
}

impl LogHub {
    /// Start the writer task.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<NewLogLine>(QUEUE);
        let (written_tx, written) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                let n = rx.recv_many(&mut buf, BATCH).await;
                if n == 0 {
                    break;
                }
                if let Err(e) = store.append_logs(&buf).await {
                    tracing::error!(error = %e, lines = buf.len(), "could not store log lines");
                }
                buf.clear();
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
        self.dropped_total.load(Ordering::Relaxed)
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
            if self.tx.try_send(note).is_err() {
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
        if self.tx.try_send(line).is_err() {
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
        if self.tx.send(line).await.is_err() {
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
        self.dropped_total.fetch_add(n, Ordering::Relaxed);
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

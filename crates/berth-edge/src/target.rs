//! Live state of a target (keyed by its id): in-flight requests, upgraded
//! connections, and the tokens that abort them when a drain times out.
//!
//! A [`TargetState`] is shared by every route table that names the id and by
//! every request running on it; the [`Registry`] only keeps weak references,
//! so the state disappears once no table references it and it is idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Series;
use crate::observe::Record;

#[derive(Debug)]
pub(crate) struct TargetState {
    pub(crate) id: Box<str>,
    inflight: AtomicUsize,
    upgraded: AtomicUsize,
    idle: Notify,
    /// Bumped when a drain deadline passes: a request aborts when it differs
    /// from the value it read at its start, so only the requests that were
    /// running then are aborted. Reading it costs no lock nor shared write.
    abort_gen: AtomicU64,
    /// Cancelled when the target is drained: closes upgraded connections.
    close_upgraded: Mutex<CancellationToken>,
    /// What its error pages name (from the last table that had it).
    info: Mutex<Option<Arc<TargetInfo>>>,
    /// Passive health: when a request found the target refusing
    /// connections, in milliseconds since [`epoch`] (plus one, so 0 means
    /// up). Cleared by a healthy probe ([`crate::Edge::report_health`]) or
    /// after [`PASSIVE_DOWN_MAX`].
    down_at: AtomicU64,
}

/// How long a passive mark holds without a probe report: an edge whose
/// control plane never reports probes still tries the target again then
/// (a request that finds it still refusing is sent elsewhere again).
pub(crate) const PASSIVE_DOWN_MAX: Duration = Duration::from_secs(30);

/// The process's reference instant for passive marks.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_mark() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The deployment a target runs, as the edge's error pages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetInfo {
    pub(crate) deployment_id: Option<String>,
    /// The first 7 characters of the commit SHA.
    pub(crate) short_sha: Option<String>,
    /// The full commit SHA (`service.version` of the edge's spans).
    pub(crate) sha: Option<String>,
}

impl TargetInfo {
    pub(crate) fn of(deployment_id: Option<&str>, sha: Option<&str>) -> Option<TargetInfo> {
        let sha = sha.filter(|s| !s.is_empty());
        let short_sha = sha.map(|s| s.chars().take(7).collect());
        let deployment_id = deployment_id.filter(|s| !s.is_empty()).map(str::to_string);
        (deployment_id.is_some() || short_sha.is_some()).then_some(TargetInfo {
            deployment_id,
            short_sha,
            sha: sha.map(str::to_string),
        })
    }
}

impl TargetState {
    fn new(id: &str) -> TargetState {
        TargetState {
            id: id.into(),
            inflight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            idle: Notify::new(),
            abort_gen: AtomicU64::new(0),
            close_upgraded: Mutex::new(CancellationToken::new()),
            info: Mutex::new(None),
            down_at: AtomicU64::new(0),
        }
    }

    /// True while a passive mark holds (see `down_at`): pickers skip the
    /// target when a sibling replica is up. One relaxed load when up.
    pub(crate) fn is_down(&self) -> bool {
        let at = self.down_at.load(Ordering::Relaxed);
        at != 0 && Self::holds(at, now_mark())
    }

    /// A mark made at `at` still holds at `now`.
    fn holds(at: u64, now: u64) -> bool {
        now.saturating_sub(at) < PASSIVE_DOWN_MAX.as_millis() as u64
    }

    /// A request found the target refusing connections (or closing them
    /// before answering): out of rotation at once. True if it was up.
    pub(crate) fn mark_down(&self) -> bool {
        let was = self.is_down();
        self.down_at.store(now_mark(), Ordering::Relaxed);
        !was
    }

    /// A probe found the target healthy: back in rotation.
    pub(crate) fn mark_up(&self) {
        if self.down_at.load(Ordering::Relaxed) != 0 {
            self.down_at.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn info(&self) -> Option<Arc<TargetInfo>> {
        self.info.lock().ok().and_then(|i| i.clone())
    }

    pub(crate) fn set_info(&self, info: Option<TargetInfo>) {
        if let Ok(mut i) = self.info.lock() {
            if i.as_deref() != info.as_ref() {
                *i = info.map(Arc::new);
            }
        }
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub(crate) fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::Acquire)
    }

    /// The abort generation a starting request records.
    pub(crate) fn abort_gen(&self) -> u64 {
        self.abort_gen.load(Ordering::Acquire)
    }

    pub(crate) fn is_aborted(&self, gen: u64) -> bool {
        self.abort_gen() != gen
    }

    pub(crate) fn upgraded_token(&self) -> CancellationToken {
        lock(&self.close_upgraded).clone()
    }

    fn rotate(slot: &Mutex<CancellationToken>) {
        let old = std::mem::take(&mut *lock(slot));
        old.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts one in-flight request from creation until drop (response body
/// finished or dropped, or error response produced).
#[derive(Debug)]
pub(crate) struct InflightGuard {
    pub(crate) target: Arc<TargetState>,
    /// The request's access log line and span, handed over at drop (see
    /// `observe.rs`); `None` when both are off.
    pub(crate) record: Option<Box<Record>>,
}

impl InflightGuard {
    pub(crate) fn new(target: Arc<TargetState>) -> InflightGuard {
        target.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard {
            target,
            record: None,
        }
    }

    /// The response head arrived (or the proxy answered for the app):
    /// counts it in the target's metrics and notes it in the record.
    pub(crate) fn answered(&mut self, series: &Series, status: u16, elapsed: Duration) {
        series.record(status, elapsed);
        if let Some(r) = &mut self.record {
            r.answered(status, elapsed);
        }
    }

    /// Response body bytes passed to the client.
    pub(crate) fn add_bytes(&mut self, n: usize) {
        if let Some(r) = &mut self.record {
            r.bytes += n as u64;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.target.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.target.idle.notify_waiters();
        }
        if let Some(r) = self.record.take() {
            r.finish();
        }
    }
}

/// Counts one spliced (upgraded) connection.
#[derive(Debug)]
pub(crate) struct UpgradedGuard {
    target: Arc<TargetState>,
}

impl UpgradedGuard {
    pub(crate) fn new(target: Arc<TargetState>) -> UpgradedGuard {
        target.upgraded.fetch_add(1, Ordering::AcqRel);
        UpgradedGuard { target }
    }
}

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.target.upgraded.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`crate::Edge::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Requests in flight on the target when the drain started.
    pub inflight_at_start: usize,
    /// Requests still running at the deadline, aborted (504 to their client
    /// if no response had started, otherwise the response is cut short).
    pub aborted: usize,
    /// Upgraded (WebSocket) connections closed.
    pub upgraded_closed: usize,
}

/// Why a request waiting for its upstream stops waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Aborted,
    TimedOut,
}

/// Resolves when the request that recorded `gen` on `target` is aborted or
/// `deadline` has passed. Checked each time the worker's `bell` rings (drain
/// aborts, and the worker's coarse tick), so no timer is armed per request;
/// the timeout fires at most one tick late.
pub(crate) async fn wait_stop(
    target: &TargetState,
    gen: u64,
    bell: &Notify,
    deadline: std::time::Instant,
) -> Stop {
    loop {
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        if target.is_aborted(gen) {
            return Stop::Aborted;
        }
        if std::time::Instant::now() >= deadline {
            return Stop::TimedOut;
        }
        rung.await;
    }
}

/// `(host, target id)`.
type SeriesKey = (Box<str>, Box<str>);

/// Weak index of live targets and metric series, so identity survives swaps.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    targets: Mutex<HashMap<Box<str>, Weak<TargetState>>>,
    series: Mutex<HashMap<SeriesKey, Weak<Series>>>,
    /// One bell per `serve` loop, rung when a drain aborts requests.
    bells: Mutex<Vec<Weak<Notify>>>,
    /// Upstream `host:port` -> small id, the key of the upstream pools.
    /// Never shrinks: one entry per distinct upstream ever routed.
    upstreams: Mutex<HashMap<Box<str>, u64>>,
}

impl Registry {
    pub(crate) fn target(&self, id: &str) -> Arc<TargetState> {
        let mut map = lock(&self.targets);
        if let Some(t) = map.get(id).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(TargetState::new(id));
        map.insert(id.into(), Arc::downgrade(&t));
        t
    }

    pub(crate) fn find_target(&self, id: &str) -> Option<Arc<TargetState>> {
        lock(&self.targets).get(id).and_then(Weak::upgrade)
    }

    pub(crate) fn series(&self, host: &str, target: &str) -> Arc<Series> {
        let mut map = lock(&self.series);
        let key: SeriesKey = (host.into(), target.into());
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(Series::new(host, target));
        map.insert(key, Arc::downgrade(&s));
        s
    }

    /// The pool key of an upstream `host:port`; stable for the process.
    pub(crate) fn upstream_id(&self, upstream: &str) -> u64 {
        let mut map = lock(&self.upstreams);
        if let Some(id) = map.get(upstream) {
            return *id;
        }
        let id = map.len() as u64;
        map.insert(upstream.into(), id);
        id
    }

    /// A bell for a new `serve` loop.
    pub(crate) fn new_bell(&self) -> Arc<Notify> {
        let bell = Arc::new(Notify::new());
        let mut bells = lock(&self.bells);
        bells.retain(|b| b.strong_count() > 0);
        bells.push(Arc::downgrade(&bell));
        bell
    }

    /// Wakes every request waiting for an abort, so each checks its target.
    pub(crate) fn ring(&self) {
        for b in lock(&self.bells).iter().filter_map(Weak::upgrade) {
            b.notify_waiters();
        }
    }

    /// Forgets entries whose state is gone.
    pub(crate) fn prune(&self) {
        lock(&self.targets).retain(|_, w| w.strong_count() > 0);
        lock(&self.series).retain(|_, w| w.strong_count() > 0);
    }

    pub(crate) fn live_targets(&self) -> Vec<Arc<TargetState>> {
        let mut v: Vec<_> = lock(&self.targets)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub(crate) fn live_series(&self) -> Vec<Arc<Series>> {
        let mut v: Vec<_> = lock(&self.series)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        v.sort_by(|a, b| (&a.host, &a.target).cmp(&(&b.host, &b.target)));
        v
    }
}

/// Drains one target: closes its upgraded connections at once, waits for its
/// in-flight requests until `timeout`, then aborts those still running.
pub(crate) async fn drain(
    target: &TargetState,
    timeout: Duration,
    registry: &Registry,
) -> DrainReport {
    let mut report = DrainReport {
        inflight_at_start: target.inflight(),
        upgraded_closed: target.upgraded(),
        aborted: 0,
    };
    // Long-lived by nature: waiting for them would always hit the deadline.
    TargetState::rotate(&target.close_upgraded);

    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = target.idle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if target.inflight() == 0 {
            return report;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    report.aborted = target.inflight();
    target.abort_gen.fetch_add(1, Ordering::AcqRel);
    registry.ring();
    // Give the aborted requests a moment to unwind so the caller sees 0.
    let grace = tokio::time::Instant::now() + Duration::from_secs(1);
    while target.inflight() > 0 && tokio::time::Instant::now() < grace {
        let notified = target.idle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if target.inflight() == 0 {
            break;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(grace) => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_while_referenced() {
        let reg = Registry::default();
        let a = reg.target("dep-1");
        let b = reg.target("dep-1");
        assert!(Arc::ptr_eq(&a, &b));
        let g = InflightGuard::new(a.clone());
        drop(a);
        drop(b);
        // still referenced by the request
        assert_eq!(reg.find_target("dep-1").unwrap().inflight(), 1);
        drop(g);
        reg.prune();
        assert!(reg.find_target("dep-1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_then_aborts_at_deadline() {
        let reg = Registry::default();
        let t = reg.target("d");
        let g1 = InflightGuard::new(t.clone());
        let g2 = InflightGuard::new(t.clone());
        let gen = t.abort_gen();
        let reg = Arc::new(reg);
        let bell = reg.new_bell();
        let (t2, reg2) = (t.clone(), reg.clone());
        let h = tokio::spawn(async move { drain(&t2, Duration::from_secs(10), &reg2).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(g1);
        // g2 is released only when aborted
        let t3 = t.clone();
        let aborted = tokio::spawn(async move {
            let far = std::time::Instant::now() + Duration::from_secs(3600);
            assert_eq!(wait_stop(&t3, gen, &bell, far).await, Stop::Aborted);
            drop(g2);
        });
        let report = h.await.unwrap();
        assert_eq!(report.inflight_at_start, 2);
        assert_eq!(report.aborted, 1);
        aborted.await.unwrap();
        assert!(t.is_aborted(gen));
        assert!(!t.is_aborted(t.abort_gen()), "new requests are not aborted");
        assert_eq!(t.inflight(), 0);
    }

    #[test]
    fn passive_marks_hold_until_a_probe_clears_them() {
        let reg = Registry::default();
        let t = reg.target("d~2");
        assert!(!t.is_down());
        assert!(t.mark_down(), "first mark reports the change");
        assert!(t.is_down());
        assert!(!t.mark_down(), "a second mark is not a change");
        t.mark_up();
        assert!(!t.is_down());
        // a mark older than PASSIVE_DOWN_MAX lapses on its own
        let max = PASSIVE_DOWN_MAX.as_millis() as u64;
        assert!(TargetState::holds(1000, 1000 + max - 1));
        assert!(!TargetState::holds(1000, 1000 + max));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_of_idle_target_is_immediate() {
        let reg = Registry::default();
        let t = reg.target("d");
        let r = drain(&t, Duration::from_secs(30), &reg).await;
        assert_eq!(r, DrainReport::default());
    }
}

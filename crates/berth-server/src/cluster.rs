//! Several servers on one PostgreSQL store: one leader, the rest followers.
//!
//! Every server serves the API, the console, webhooks and its edge. Only the
//! leader runs what must run once: pipelines (and so builds, cutovers,
//! canaries), reconcile, health monitors, the preview reaper, log retention
//! and certificate orders. The lease (see `berth_store::cluster`) is a row
//! with a fencing epoch, renewed every [`RENEW_EVERY`] for [`LEASE_TTL`]:
//! - a server that takes it runs `Deployer::reconcile` under its fence
//!   (what the old leader left running fails "interrupted", queued
//!   deployments are queued again, containers are adopted), then picks up
//!   queued deployments from the store every [`PICK_UP_EVERY`], and
//!   carries out the cancels asked of other servers
//!   (`Deployer::carry_out_cancels`, `Store::cancel_requests`);
//! - a server that loses it (the lease moved, or it could not renew within
//!   the TTL) drops its pipelines, monitors and queues at once; what they
//!   still try to write is refused by the fence;
//! - a follower's `Deployer::create` only records the deployment queued;
//!   the leader picks it up. A follower's edge follows the store's route
//!   table by polling every [`FOLLOW_EVERY`] (a cheap read of the active
//!   deployments; LISTEN/NOTIFY would need a dedicated connection per server
//!   and a re-subscribe after every database loss for a sub-second gain).
//!
//! `Leadership` is the one question "am I the leader now": with one server
//! (SQLite) it is always yes, except in a process that is handing over to
//! a `--takeover` ([`Leadership::retire`]).
//!
//! `--takeover` of a clustered server: the new process has the same member
//! id (same data dir). The old one retires before it hands the sockets
//! over (no more heartbeats, no leader work); the new one's lease loop
//! first releases a lease its member id holds, so it leads under a new
//! epoch and whatever the old process still tries to write is fenced.

use crate::deployer::Deployer;
use berth_store::cluster::Fence;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often every server renews (or tries to take) the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long a lease lasts without renewal (database clock): a dead
/// leader's work moves within this plus one [`RENEW_EVERY`].
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a follower's edge re-reads the route table.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(300);
/// How long the leader waits after a switch before draining the previous
/// deployment: the followers' edges read the switch within
/// [`FOLLOW_EVERY`] and finish the requests they already sent it.
pub const FOLLOWER_GRACE: Duration = Duration::from_secs(2);
/// How often the leader looks for deployments queued by other servers.
pub const PICK_UP_EVERY: Duration = Duration::from_millis(300);

/// Whether this server leads, under which epoch. Cheap to clone and ask.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    clustered: bool,
    leader: AtomicBool,
    epoch: AtomicU64,
    member: String,
    api_url: String,
    changed: tokio::sync::watch::Sender<bool>,
    /// Handing over to a `--takeover`: never the leader, no heartbeats.
    retired: AtomicBool,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::single("local", "")
    }
}

impl Leadership {
    /// One server on its own store: always the leader, nothing fenced.
    pub fn single(member: &str, api_url: &str) -> Self {
        Self::build(false, member, api_url)
    }

    /// A member of a cluster: a follower until a heartbeat gives it the lease.
    pub fn clustered(member: &str, api_url: &str) -> Self {
        Self::build(true, member, api_url)
    }

    fn build(clustered: bool, member: &str, api_url: &str) -> Self {
        Leadership {
            inner: Arc::new(Inner {
                clustered,
                leader: AtomicBool::new(!clustered),
                epoch: AtomicU64::new(0),
                member: member.to_string(),
                api_url: api_url.to_string(),
                changed: tokio::sync::watch::channel(!clustered).0,
                retired: AtomicBool::new(false),
            }),
        }
    }

    /// Whether this server should run leader-only work right now (jobs,
    /// pipelines, retention). Always true on a single server.
    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::SeqCst) && !self.is_retired()
    }

    pub fn is_retired(&self) -> bool {
        self.inner.retired.load(Ordering::SeqCst)
    }

    /// This process hands over to a `--takeover`: from now on it is not
    /// the leader and (clustered) stops heartbeating, so the new process
    /// takes the lease under a new epoch. [`Leadership::reinstate`] undoes
    /// it (a hand-over that failed).
    pub fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
        self.inner.leader.store(false, Ordering::SeqCst);
        self.inner.changed.send_replace(false);
    }

    /// Back from [`Leadership::retire`]: one server leads again at once; a
    /// cluster member is a follower until its next heartbeat.
    pub fn reinstate(&self) {
        self.inner
            .leader
            .store(!self.inner.clustered, Ordering::SeqCst);
        self.inner.retired.store(false, Ordering::SeqCst);
        self.inner.changed.send_replace(self.is_leader());
    }

    pub fn is_clustered(&self) -> bool {
        self.inner.clustered
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    pub fn member(&self) -> &str {
        &self.inner.member
    }

    pub fn api_url(&self) -> &str {
        &self.inner.api_url
    }

    /// The fence leader work runs under (`None` on a single server).
    pub fn fence(&self) -> Option<Fence> {
        self.inner.clustered.then(|| Fence {
            member: self.inner.member.clone(),
            epoch: self.epoch(),
        })
    }

    /// Changes of `is_leader`.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.changed.subscribe()
    }

    fn set(&self, leader: bool, epoch: u64) {
        self.inner.epoch.store(epoch, Ordering::SeqCst);
        self.inner.leader.store(leader, Ordering::SeqCst);
        self.inner.changed.send_replace(leader);
    }
}

/// The lease loop of a clustered server (spawned once at start).
pub async fn run(d: Arc<Deployer>) {
    let lead = d.leadership.clone();
    let mut last_renewed: Option<Instant> = None;
    let mut warned = false;
    // A lease this member id still holds is a previous process's (a
    // `--takeover`, or a restart after a crash): give it up, so this
    // process leads under a new epoch and the old one's writes are fenced.
    if let Err(e) = d.store.release_lease(lead.member()).await {
        tracing::debug!(error = %e, "cannot release a previous process's lease");
    }
    loop {
        let started = Instant::now();
        if lead.is_retired() {
            last_renewed = None;
            tokio::time::sleep(RENEW_EVERY).await;
            continue;
        }
        match d
            .store
            .heartbeat(lead.member(), lead.api_url(), LEASE_TTL)
            .await
        {
            Ok(lease) if lease.mine => {
                warned = false;
                last_renewed = Some(started);
                if !lead.is_leader() || lease.epoch != lead.epoch() {
                    if lead.is_leader() {
                        step_down(&d, "the lease was renewed under a new epoch");
                    }
                    become_leader(&d, lease.epoch);
                }
            }
            Ok(lease) => {
                warned = false;
                last_renewed = None;
                if lead.is_leader() {
                    step_down(
                        &d,
                        &format!(
                            "the lease moved to {} (epoch {})",
                            lease.holder.as_deref().unwrap_or("nobody"),
                            lease.epoch
                        ),
                    );
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                    warned = true;
                }
                // Step down before the lease can have expired in the
                // database: another server may take it then.
                let expired = last_renewed.is_none_or(|t| t.elapsed() + RENEW_EVERY >= LEASE_TTL);
                if lead.is_leader() && expired {
                    step_down(&d, "the lease could not be renewed in time");
                }
            }
        }
        tokio::time::sleep(RENEW_EVERY.saturating_sub(started.elapsed())).await;
    }
}

fn become_leader(d: &Arc<Deployer>, epoch: u64) {
    if d.leadership.is_retired() {
        return;
    }
    d.leadership.set(true, epoch);
    tracing::info!(
        epoch,
        member = d.leadership.member(),
        "this server is the leader now"
    );
    let this = d.clone();
    let fence = d.leadership.fence();
    let task = tokio::spawn(berth_store::cluster::fenced(fence, async move {
        let d = this;
        // What the previous leader left: finish or fail it, adopt the
        // containers, queue again what was queued.
        if let Err(e) = d.reconcile().await {
            tracing::error!(error = %e, "reconcile after taking the lease failed");
        }
        let mut every = tokio::time::interval(PICK_UP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = d.pick_up_queued().await {
                tracing::debug!(error = %e, "cannot look for queued deployments");
            }
            if let Err(e) = d.carry_out_cancels().await {
                tracing::debug!(error = %e, "cannot look for cancel requests");
            }
        }
    }));
    d.track_leader_task(task.abort_handle());
}

fn step_down(d: &Arc<Deployer>, why: &str) {
    tracing::warn!(epoch = d.leadership.epoch(), "no longer the leader: {why}");
    d.leadership.set(false, d.leadership.epoch());
    d.drop_leader_work();
}

/// A follower's edge: re-read the route table from the store every
/// [`FOLLOW_EVERY`]; when the database is away the edge keeps the last one.
pub async fn follow_routes(d: Arc<Deployer>) {
    let mut warned = false;
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        if d.leadership.is_leader() {
            continue;
        }
        match d.sync_routes().await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot read the route table; the edge keeps serving the last one");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// `GET /api/v1/cluster`: every server seen. A single server lists itself.
pub async fn members(
    d: &Deployer,
) -> Result<Vec<berth_core::model::ClusterMember>, berth_store::StoreError> {
    let lead = &d.leadership;
    if !lead.is_clustered() {
        return Ok(vec![berth_core::model::ClusterMember {
            id: lead.member().to_string(),
            api_url: lead.api_url().to_string(),
            is_leader: true,
            epoch: lead.epoch(),
            last_seen_at: chrono::Utc::now(),
        }]);
    }
    d.store.cluster_members().await
}

//! Several servers on one store: the leader lease and its fencing epoch.
//!
//! Every server calls [`crate::Store::heartbeat`] every second or so: it
//! records the server as alive and takes the lease when it is free or
//! expired (bumping the epoch), or renews it when the server holds it. Time
//! is the database's clock, never a server's.
//!
//! Fencing: work a server does *as leader* (pipelines, reconcile, health
//! monitors, log followers, job firings, certificate orders, retention,
//! scheduled backups, notifications) runs inside [`fenced`] with the epoch
//! it was given; a task it spawns keeps the fence with [`inherit`]. Inside,
//! every write of the PostgreSQL store (deployments, log lines, manifests,
//! certificates and ACME accounts, runs, backups, deliveries, log
//! retention) checks in its own transaction that the lease still has this
//! holder and epoch (and holds the row shared until commit, so a take-over
//! waits for it): a paused old leader that wakes up after the lease moved
//! writes nothing ([`crate::StoreError::Fenced`]). Writes made for an API
//! request (create a project, queue a deployment, a `berth run`) are not
//! fenced: any server may make them. SQLite has one server and no lease:
//! nothing there is fenced.

use chrono::{DateTime, Utc};
use std::future::Future;

/// The leader lease as one heartbeat left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (none before the first heartbeat).
    pub holder: Option<String>,
    pub epoch: u64,
    /// Whether the calling server holds it now.
    pub mine: bool,
    pub expires_at: DateTime<Utc>,
}

/// What a leader's write carries: who it is and the epoch it leads in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub member: String,
    pub epoch: u64,
}

tokio::task_local! {
    static FENCE: Fence;
}

/// Run `f` as leader with `fence`: the deployment writes it makes are
/// refused once the lease has moved. `None` runs it unfenced (one server).
pub async fn fenced<F: Future>(fence: Option<Fence>, f: F) -> F::Output {
    match fence {
        Some(fence) => FENCE.scope(fence, f).await,
        None => f.await,
    }
}

/// The fence of the current task, if it runs as leader.
pub fn current_fence() -> Option<Fence> {
    FENCE.try_with(|f| f.clone()).ok()
}

/// `f` under the fence of the caller (none outside [`fenced`]): for a task
/// that leader work spawns, since a spawned task does not inherit it.
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    fenced(current_fence(), f)
}

//! The traffic rollup behind the console's charts: every server (leader or
//! follower) samples its own edge's per-deployment counters
//! ([`Deployer::window_of`], the same ones the canary judges on) every
//! [`EVERY`] and writes one row per deployment and minute under its own
//! member id (the server's instance id, [`Leadership::member`]): requests,
//! 5xx errors, the minute's latency histogram (sparse,
//! [`berth_store::rollup::sparse`]) and its p95, rewriting the current
//! minute as it fills. Readers ([`Store::list_metric_minutes`]) get the
//! members summed, p95 taken from the summed histograms, so traffic served
//! by any server behind a load balancer is in the charts.
//!
//! Invariants: a server writes only rows of its own member id, so these
//! writes need no fence (a deposed leader's rows are still its own edge's
//! true counts) and go on through leader changes; pruning (rows older than
//! [`KEEP`], every member's, those of servers gone included) is the
//! leader's, under its fence; counters start at zero when a target appears
//! (or the server starts), so the first sample of a deployment is measured
//! from zero, and a restarted server (or a `--takeover`, same member id)
//! rewrites its current minute from zero: that minute loses what the
//! previous process counted in it; a retired process (handing over) stops
//! sampling; a deployment is sampled while it is active or carries a
//! canary weight.
//!
//! [`Leadership::member`]: crate::cluster::Leadership::member
//! [`Store::list_metric_minutes`]: berth_store::Store::list_metric_minutes

use crate::deployer::Deployer;
use berth_core::canary::Window;
use berth_core::model::Deployment;
use berth_store::{DeploymentQuery, MetricMinute};
use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// The berth log line a canary writes when it starts, with its
/// thresholds, begins with this.
pub const THRESHOLDS_PREFIX: &str = "canary thresholds: ";
/// The berth log line of each canary stage's start (`canary: 25% of
/// traffic to this deployment for 60s`) begins with this.
pub const STAGE_PREFIX: &str = "canary: ";

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// How long minutes are kept (an hour is shown).
pub const KEEP: Duration = Duration::from_secs(65 * 60);

/// One deployment being sampled: the minute it is in and the counters at
/// that minute's start.
struct Tracked {
    minute: DateTime<Utc>,
    base: Window,
}

/// A deployment the edge routes to, as the rollup names its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub deployment_id: String,
    pub project_name: String,
    pub environment_name: String,
    pub service_name: String,
}

impl From<&Deployment> for Routed {
    fn from(d: &Deployment) -> Self {
        Routed {
            deployment_id: d.id.clone(),
            project_name: d.project_name.clone(),
            environment_name: d.environment_name.clone(),
            service_name: d.service_name.clone(),
        }
    }
}

/// The start of `t`'s minute.
pub fn minute_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Span::minutes(1)).unwrap_or(t)
}

/// The row of `d` for `minute` from the counters `now` and at the
/// minute's start.
/// The row of `d` for `minute` as `member`'s edge counted it, from the
/// counters `now` and at the minute's start.
pub fn row(
    member: &str,
    d: &Routed,
    minute: DateTime<Utc>,
    now: &Window,
    base: &Window,
) -> MetricMinute {
    let w = now.since(base);
    MetricMinute {
        deployment_id: d.deployment_id.clone(),
        project_name: d.project_name.clone(),
        environment_name: d.environment_name.clone(),
        service_name: d.service_name.clone(),
        member: member.to_string(),
        minute,
        requests: w.requests,
        errors: w.errors,
        latency: berth_store::rollup::sparse(&w.latency),
        p95_ms: w
            .p95()
            .filter(|s| s.is_finite() && w.requests > 0)
            .map(|s| s * 1000.0),
    }
}

/// The sampler's state: whose edge it samples and what it saw of each
/// deployment.
pub struct Rollup {
    member: String,
    tracked: HashMap<String, Tracked>,
}

impl Rollup {
    /// A sampler writing rows of `member` (this server's member id).
    pub fn new(member: &str) -> Self {
        Rollup {
            member: member.to_string(),
            tracked: HashMap::new(),
        }
    }

    /// One sample at `now` of `routed` (the deployments the edge routes
    /// to, with their counters): the rows to write. A deployment that
    /// crossed into a new minute gets its previous minute closed with the
    /// counters of now; minutes without requests write no row.
    pub fn sample(&mut self, now: DateTime<Utc>, routed: &[(Routed, Window)]) -> Vec<MetricMinute> {
        let minute = minute_of(now);
        let mut rows = Vec::new();
        let mut seen = HashMap::with_capacity(routed.len());
        for (d, w) in routed {
            let t = self
                .tracked
                .remove(&d.deployment_id)
                .unwrap_or_else(|| Tracked {
                    minute,
                    base: Window::default(),
                });
            let t = if t.minute != minute {
                let closed = row(&self.member, d, t.minute, w, &t.base);
                if closed.requests > 0 {
                    rows.push(closed);
                }
                Tracked {
                    minute,
                    base: w.clone(),
                }
            } else {
                t
            };
            let current = row(&self.member, d, minute, w, &t.base);
            if current.requests > 0 {
                rows.push(current);
            }
            seen.insert(d.deployment_id.clone(), t);
        }
        // Deployments no longer routed are forgotten.
        self.tracked = seen;
        rows
    }
}

/// Runs for the life of the server: samples its own edge whether it leads
/// or not (until it retires for a `--takeover`); prunes while it leads.
pub async fn run(d: std::sync::Arc<Deployer>) {
    let mut rollup = Rollup::new(d.leadership.member());
    let mut routed: Vec<Deployment> = Vec::new();
    let mut listed_at: Option<DateTime<Utc>> = None;
    let mut pruned_at: Option<DateTime<Utc>> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        if d.leadership.is_retired() {
            continue;
        }
        let now = Utc::now();
        // Active deployments change rarely: listed again every minute;
        // canary candidates (unfinished) on every sample.
        if listed_at.is_none_or(|t| now - t >= Span::minutes(1)) {
            match d.store.list_deployments(&DeploymentQuery::default()).await {
                Ok(all) => {
                    routed = all.into_iter().filter(|x| x.is_active).collect();
                    listed_at = Some(now);
                }
                Err(e) => tracing::warn!(error = %e, "charts: listing deployments failed"),
            }
        }
        let mut sampled: Vec<(Routed, Window)> = routed
            .iter()
            .map(|x| (Routed::from(x), d.window_of(x)))
            .collect();
        if let Ok(unfinished) = d
            .store
            .list_deployments(&DeploymentQuery {
                unfinished: true,
                ..Default::default()
            })
            .await
        {
            for x in unfinished {
                if x.canary_weight.is_some()
                    && !sampled.iter().any(|(s, _)| s.deployment_id == x.id)
                {
                    sampled.push((Routed::from(&x), d.window_of(&x)));
                }
            }
        }
        let rows = rollup.sample(now, &sampled);
        if !rows.is_empty() {
            // Only this member's rows: no fence (see the module doc).
            if let Err(e) = d.store.put_metric_minutes(&rows).await {
                tracing::warn!(error = %e, "charts: writing the traffic rollup failed");
            }
        }
        if !d.leadership.is_leader() {
            pruned_at = None;
            continue;
        }
        if pruned_at.is_none_or(|t| now - t >= Span::minutes(5)) {
            let cut = now - Span::from_std(KEEP).unwrap_or(Span::hours(1));
            let prune = d.store.prune_metric_minutes(cut);
            match berth_store::cluster::fenced(d.leadership.fence(), prune).await {
                Ok(_) => pruned_at = Some(now),
                Err(e) => tracing::warn!(error = %e, "charts: pruning the traffic rollup failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(id: &str) -> Routed {
        Routed {
            deployment_id: id.into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
        }
    }

    /// Counters as the edge keeps them: cumulative, with latency buckets of
    /// 10 ms and 1 s.
    fn window(requests: u64, errors: u64, fast: u64) -> Window {
        Window {
            requests,
            errors,
            latency: vec![(0.01, fast), (1.0, requests)],
        }
    }

    #[test]
    fn a_minute_is_the_counters_difference_and_closes_when_the_next_begins() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let d = dep("d1");
        let mut r = Rollup::new("m1");
        // First sight: measured from zero (the edge's counters start there).
        let rows = r.sample(t0 + Span::seconds(10), &[(d.clone(), window(100, 0, 100))]);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].minute, rows[0].requests, rows[0].errors),
            (t0, 100, 0)
        );
        assert!(rows[0].p95_ms.unwrap() <= 10.0);
        // This server's row, with the minute's histogram to sum with other
        // members'.
        assert_eq!(rows[0].member, "m1");
        assert_eq!(rows[0].latency.last().map(|(_, c)| *c), Some(100));
        // Same minute: the row is rewritten with everything so far.
        let rows = r.sample(t0 + Span::seconds(20), &[(d.clone(), window(150, 10, 100))]);
        assert_eq!(
            (rows[0].minute, rows[0].requests, rows[0].errors),
            (t0, 150, 10)
        );
        // A third of the requests slow: p95 in the 1 s bucket.
        assert!(rows[0].p95_ms.unwrap() > 10.0);
        // Next minute: the first one is closed with the counters of now,
        // the new one starts from them (no requests yet: no row).
        let rows = r.sample(t0 + Span::seconds(65), &[(d.clone(), window(160, 10, 110))]);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].minute, rows[0].requests), (t0, 160));
        let rows = r.sample(t0 + Span::seconds(75), &[(d.clone(), window(190, 11, 140))]);
        assert_eq!(rows.len(), 1);
        let m1 = t0 + Span::minutes(1);
        assert_eq!(
            (rows[0].minute, rows[0].requests, rows[0].errors),
            (m1, 30, 1)
        );
        assert!(
            rows[0].p95_ms.unwrap() <= 10.0,
            "only the minute's requests count"
        );
        // No longer routed: forgotten; seen again: from zero.
        assert!(r.sample(t0 + Span::seconds(85), &[]).is_empty());
        let rows = r.sample(t0 + Span::seconds(95), &[(d, window(5, 0, 5))]);
        assert_eq!((rows[0].minute, rows[0].requests), (m1, 5));
    }

    #[test]
    fn minutes_start_at_second_zero() {
        let t = DateTime::from_timestamp(1_800_000_047, 123).unwrap();
        assert_eq!(minute_of(t).timestamp() % 60, 0);
        assert!(minute_of(t) <= t && t - minute_of(t) < Span::minutes(1));
    }
}

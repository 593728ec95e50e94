//! Typed request counters per target, for the control plane's canary
//! judgement (the same counters `/metrics` renders).

use crate::Edge;

/// What the edge counted for one target since it appeared, summed over
/// the hostnames that route to it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetStats {
    pub requests: u64,
    /// Responses with a 5xx status, the proxy's own 502/503/504 included.
    pub errors: u64,
    /// `(upper bound in seconds, cumulative count)`, as Prometheus buckets.
    pub latency: Vec<(f64, u64)>,
}

impl Edge {
    /// The counters of `target_id` (all zero when the edge never saw it).
    pub fn target_stats(&self, target_id: &str) -> TargetStats {
        let mut out = TargetStats::default();
        for s in self.inner.registry.live_series() {
            if &*s.target != target_id {
                continue;
            }
            out.requests += (0..5).map(|c| s.requests(c)).sum::<u64>();
            out.errors += s.requests(4);
            let lat = s.latency_cumulative();
            if out.latency.is_empty() {
                out.latency = lat;
            } else {
                for (acc, (_, c)) in out.latency.iter_mut().zip(lat) {
                    acc.1 += c;
                }
            }
        }
        out
    }
}

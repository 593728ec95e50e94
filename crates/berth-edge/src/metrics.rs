//! Per (host, target) request metrics, lock-free on the request path, and
//! their OpenMetrics text rendering (see `Edge::metrics_text`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::{bucket_range, LatencyHistogram, LEN};

/// Upper bounds (seconds) of the latency buckets `/metrics` renders, read
/// from the finer histogram (a fine bucket counts under the first bound
/// its upper end fits under, so a value within 3.1 % below a bound may
/// show under the next one, never under a smaller one).
pub(crate) const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one `(host, target)` pair. Latency is the time until the
/// response headers are ready (upstream time to first byte, or the time the
/// proxy took to decide on an error status).
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) host: Box<str>,
    pub(crate) target: Box<str>,
    /// Index 0..5 = 1xx..5xx.
    by_class: [AtomicU64; 5],
    latency: LatencyHistogram,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Series {
    pub(crate) fn new(host: &str, target: &str) -> Series {
        Series {
            host: host.into(),
            target: target.into(),
            by_class: Default::default(),
            latency: LatencyHistogram::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency.record(elapsed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn requests(&self, class: usize) -> u64 {
        self.by_class[class].load(Ordering::Relaxed)
    }

    /// The fine latency histogram as `(upper bound, cumulative count)`.
    pub(crate) fn latency_cumulative(&self) -> Vec<(f64, u64)> {
        self.latency.cumulative()
    }

    fn labels(&self) -> String {
        format!(
            "host=\"{}\",target=\"{}\"",
            escape(&self.host),
            escape(&self.target)
        )
    }

    pub(crate) fn render_requests(&self, out: &mut String) {
        let l = self.labels();
        for (i, c) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_edge_requests_total{{{l},class=\"{c}\"}} {}",
                self.requests(i)
            );
        }
    }

    pub(crate) fn render_latency(&self, out: &mut String) {
        let l = self.labels();
        let (mut acc, mut fine) = (0, 0);
        for b in BUCKETS {
            let bound_micros = (b * 1e6).round() as u64;
            while fine < LEN && bucket_range(fine).1 <= bound_micros {
                acc += self.latency.count(fine);
                fine += 1;
            }
            // `{b:?}`: a float's canonical form (`1.0`, `0.005`), as
            // OpenMetrics writes `le`
            let _ = writeln!(
                out,
                "berth_edge_request_duration_seconds_bucket{{{l},le=\"{b:?}\"}} {acc}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "berth_edge_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "berth_edge_request_duration_seconds_sum{{{l}}} {sum}");
        let _ = writeln!(
            out,
            "berth_edge_request_duration_seconds_count{{{l}}} {count}"
        );
    }
}

/// Escapes a Prometheus label value.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_classes_count() {
        let s = Series::new("a.localhost", "dep-1");
        s.record(200, Duration::from_millis(3));
        s.record(502, Duration::from_millis(300));
        s.record(404, Duration::from_secs(60));
        let mut out = String::new();
        s.render_requests(&mut out);
        s.render_latency(&mut out);
        assert!(out.contains(
            "berth_edge_requests_total{host=\"a.localhost\",target=\"dep-1\",class=\"2xx\"} 1"
        ));
        assert!(out.contains("class=\"5xx\"} 1"));
        assert!(out.contains("le=\"0.005\"} 1\n"));
        assert!(out.contains("le=\"0.5\"} 2\n"));
        assert!(out.contains("le=\"10.0\"} 2\n"));
        assert!(out.contains("le=\"1.0\"} 2\n"));
        assert!(out.contains("le=\"+Inf\"} 3\n"));
        assert!(out.contains("_count{host=\"a.localhost\",target=\"dep-1\"} 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}

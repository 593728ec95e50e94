//! Canary maths (004): judge a candidate against the deployment it would
//! replace, from what the edge counted for each during an observation
//! window. Pure; the pipeline feeds it counts and acts on the verdict.

use crate::config::CanaryConfig;

/// What the edge counted for one target during a window (deltas).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// Responses with a 5xx status (the proxy's own 502/504 included).
    pub errors: u64,
    /// Latency histogram: `(upper bound in seconds, cumulative count)`,
    /// bounds increasing, as Prometheus buckets.
    pub latency: Vec<(f64, u64)>,
}

impl Window {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 95th percentile latency, interpolated linearly inside the
    /// bucket holding it as Prometheus' `histogram_quantile` does (`None`
    /// without requests, `f64::INFINITY` beyond the last bound). Taking the
    /// bucket's upper bound instead would double a p95 that merely crossed
    /// a bound (50 ms → 100 ms) and fail healthy canaries.
    pub fn p95(&self) -> Option<f64> {
        let total = self
            .latency
            .last()
            .map(|(_, c)| *c)
            .unwrap_or(0)
            .max(self.requests);
        if total == 0 {
            return None;
        }
        let rank = total as f64 * 0.95;
        let (mut lower, mut below) = (0.0, 0u64);
        for (bound, count) in &self.latency {
            if *count as f64 >= rank {
                let inside = count.saturating_sub(below);
                if inside == 0 {
                    return Some(*bound);
                }
                let share = (rank - below as f64) / inside as f64;
                return Some(lower + (bound - lower) * share.clamp(0.0, 1.0));
            }
            (lower, below) = (*bound, *count);
        }
        Some(f64::INFINITY)
    }

    /// `self - earlier`, for counters read at the start and end of a window.
    pub fn since(&self, earlier: &Window) -> Window {
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .map(|(b, c)| {
                    let before = earlier
                        .latency
                        .iter()
                        .find(|(eb, _)| eb == b)
                        .map(|(_, ec)| *ec)
                        .unwrap_or(0);
                    (*b, c.saturating_sub(before))
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No regression: go to the next stage.
    Healthy,
    /// Too few candidate requests to judge; the stage passes on health alone.
    NotEnoughTraffic { requests: u64 },
    /// Roll back, saying why.
    Regressed(String),
}

/// Fewest candidate requests in a window for the error rate and p95 to mean
/// anything.
pub const MIN_REQUESTS: u64 = 20;

/// A p95 latency regression also has to be at least this much slower in
/// absolute terms: a few milliseconds of scheduling noise on a busy host
/// are not a regression, however large the ratio.
pub const LATENCY_NOISE_FLOOR_SECS: f64 = 0.05;

/// Judge the candidate against the baseline: it regresses when its error
/// rate exceeds the baseline's by more than `error_rate_threshold`
/// (absolute), or its p95 latency exceeds the baseline's times
/// `latency_p95_threshold` and by at least [`LATENCY_NOISE_FLOOR_SECS`].
pub fn judge(baseline: &Window, candidate: &Window, cfg: &CanaryConfig) -> Verdict {
    if candidate.requests < MIN_REQUESTS {
        return Verdict::NotEnoughTraffic {
            requests: candidate.requests,
        };
    }
    let (c, b) = (candidate.error_rate(), baseline.error_rate());
    if c - b > cfg.error_rate_threshold {
        return Verdict::Regressed(format!(
            "error rate {:.1}% against {:.1}% of the previous deployment (threshold +{:.1} points)",
            c * 100.0,
            b * 100.0,
            cfg.error_rate_threshold * 100.0
        ));
    }
    if baseline.requests >= MIN_REQUESTS {
        if let (Some(cp), Some(bp)) = (candidate.p95(), baseline.p95()) {
            if cp > bp * cfg.latency_p95_threshold && cp - bp >= LATENCY_NOISE_FLOOR_SECS {
                return Verdict::Regressed(format!(
                    "p95 latency {} against {} of the previous deployment (threshold {:.2}x)",
                    fmt_secs(cp),
                    fmt_secs(bp),
                    cfg.latency_p95_threshold
                ));
            }
        }
    }
    Verdict::Healthy
}

fn fmt_secs(s: f64) -> String {
    if s.is_infinite() {
        "beyond the largest bucket".into()
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(requests: u64, errors: u64, fast: u64) -> Window {
        // `fast` requests under 10 ms, the rest under 1 s.
        Window {
            requests,
            errors,
            latency: vec![(0.01, fast), (0.1, fast), (1.0, requests)],
        }
    }

    #[test]
    fn verdicts() {
        let cfg = CanaryConfig::default(); // +2 points, 1.5x
        let base = w(1000, 0, 1000);
        for (cand, want) in [
            (w(10, 10, 10), "not enough"),
            (w(100, 2, 100), "healthy"),
            (w(100, 3, 100), "error rate 3.0% against 0.0%"),
            (w(100, 0, 50), "p95 latency 910ms against 10ms"),
            (w(100, 0, 96), "healthy"),
        ] {
            let got = judge(&base, &cand, &cfg);
            let text = match &got {
                Verdict::Healthy => "healthy".to_string(),
                Verdict::NotEnoughTraffic { .. } => "not enough".to_string(),
                Verdict::Regressed(r) => r.clone(),
            };
            assert!(text.starts_with(want), "{cand:?}: {text}");
        }
        // A p95 that crossed a bucket bound, or doubled from a few ms, is
        // noise, not a regression.
        let fast = |p50ms: u64| Window {
            requests: 100,
            errors: 0,
            latency: vec![(0.005, 0), (0.01, 100 - p50ms), (0.05, 100), (0.1, 100)],
        };
        assert_eq!(judge(&fast(1), &fast(40), &cfg), Verdict::Healthy);
        let crossed = Window {
            requests: 100,
            errors: 0,
            latency: vec![(0.05, 90), (0.1, 100)],
        };
        let under = Window {
            requests: 100,
            errors: 0,
            latency: vec![(0.05, 97), (0.1, 100)],
        };
        assert_eq!(judge(&under, &crossed, &cfg), Verdict::Healthy);
        // A baseline that errs as much is no regression.
        assert_eq!(
            judge(&w(100, 5, 100), &w(100, 6, 100), &cfg),
            Verdict::Healthy
        );
    }

    #[test]
    fn p95_and_deltas() {
        assert_eq!(w(0, 0, 0).p95(), None);
        let near = |got: Option<f64>, want: f64| {
            assert!((got.unwrap() - want).abs() < 1e-9, "{got:?} != {want}")
        };
        // 95 of 100 under 10 ms: the 95th is the last of the first bucket.
        near(w(100, 0, 95).p95(), 0.01);
        // 94 under 10 ms, the 95th in (100 ms, 1 s]: 1/6 of the way.
        near(w(100, 0, 94).p95(), 0.1 + 0.9 / 6.0);
        // Beyond the last bound.
        let slow = Window {
            requests: 100,
            errors: 0,
            latency: vec![(0.01, 10), (1.0, 50)],
        };
        assert_eq!(slow.p95(), Some(f64::INFINITY));
        let late = w(300, 9, 250);
        let early = w(100, 4, 100);
        let d = late.since(&early);
        assert_eq!((d.requests, d.errors), (200, 5));
        assert_eq!(d.latency, vec![(0.01, 150), (0.1, 150), (1.0, 200)]);
    }
}

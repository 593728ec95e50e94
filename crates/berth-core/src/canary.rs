//! Canary maths (004): judge a candidate against the deployment it would
//! replace, from what the edge counted for each during an observation
//! window. Pure; the pipeline feeds it counts and acts on the verdict.

use crate::config::{CanaryConfig, LowTraffic};

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
            latency: if self.latency.len() == earlier.latency.len()
                && self
                    .latency
                    .iter()
                    .zip(&earlier.latency)
                    .all(|((b, _), (eb, _))| b == eb)
            {
                // Same bounds (the edge's fixed layout): pair by index.
                self.latency
                    .iter()
                    .zip(&earlier.latency)
                    .map(|((b, c), (_, ec))| (*b, c.saturating_sub(*ec)))
                    .collect()
            } else {
                self.latency
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
                    .collect()
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No regression: go to the next stage.
    Healthy,
    /// Fewer than `min_requests` candidate requests with
    /// `on_low_traffic = "promote"`: the stage passes on health alone.
    PromotedOnHealth { requests: u64 },
    /// Fewer than `min_requests` with `on_low_traffic = "extend"`: watch
    /// the stage for another window (this is extension `extension` of
    /// [`MAX_EXTENSIONS`]), then judge everything seen since it began.
    Extend { requests: u64, extension: u32 },
    /// Still fewer than `min_requests` after every extension, or at once
    /// with `on_low_traffic = "fail"`: fail the deployment, saying why.
    TooLittleTraffic(String),
    /// Roll back, saying why.
    Regressed(String),
}

impl Verdict {
    /// Short text for the decision line.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Healthy => "healthy".into(),
            Verdict::PromotedOnHealth { .. } => {
                "promoted on health alone (too few requests to judge)".into()
            }
            Verdict::Extend { extension, .. } => {
                format!("too few requests, window extended ({extension} of {MAX_EXTENSIONS})")
            }
            Verdict::TooLittleTraffic(why) => format!("failed: {why}"),
            Verdict::Regressed(why) => format!("regressed: {why}"),
        }
    }
}

/// How many times `on_low_traffic = "extend"` extends a stage's window.
pub const MAX_EXTENSIONS: u32 = 3;

/// A p95 latency regression also has to be at least this much slower in
/// absolute terms: a few milliseconds of scheduling noise on a busy host
/// are not a regression, however large the ratio.
pub const LATENCY_NOISE_FLOOR_SECS: f64 = 0.05;

/// Every decision line the pipeline writes to a deployment's berth log
/// starts with this; `berth inspect` lists those lines.
pub const DECISION_PREFIX: &str = "canary judge: ";

/// Judge the candidate against the baseline, `extensions` windows already
/// added to this stage.
///
/// Fewer than `min_requests` candidate requests is "no data", never a pass
/// by itself: `on_low_traffic` decides (extend up to [`MAX_EXTENSIONS`]
/// times then fail, promote on health alone, or fail). Otherwise the
/// candidate regresses when its error rate exceeds the baseline's by more
/// than `error_rate_threshold` (absolute), or its p95 latency exceeds the
/// baseline's times `latency_p95_threshold` and by at least
/// [`LATENCY_NOISE_FLOOR_SECS`] (p95s are compared only when the baseline
/// also saw `min_requests`).
pub fn judge(
    baseline: &Window,
    candidate: &Window,
    cfg: &CanaryConfig,
    extensions: u32,
) -> Verdict {
    if candidate.requests < cfg.min_requests {
        let requests = candidate.requests;
        let saw = format!(
            "saw {requests} {} in {} window{}, fewer than min_requests = {}",
            if requests == 1 { "request" } else { "requests" },
            extensions + 1,
            if extensions == 0 { "" } else { "s" },
            cfg.min_requests
        );
        return match cfg.on_low_traffic {
            LowTraffic::Promote => Verdict::PromotedOnHealth { requests },
            LowTraffic::Extend if extensions < MAX_EXTENSIONS => Verdict::Extend {
                requests,
                extension: extensions + 1,
            },
            LowTraffic::Extend => Verdict::TooLittleTraffic(format!(
                "{saw} (on_low_traffic = \"extend\", extended {MAX_EXTENSIONS} times)"
            )),
            LowTraffic::Fail => {
                Verdict::TooLittleTraffic(format!("{saw} (on_low_traffic = \"fail\")"))
            }
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
    if baseline.requests >= cfg.min_requests {
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

/// The line written to the deployment's berth log for one judged window:
/// what each side saw and the verdict. `window` counts from 1 (2 and up
/// are extensions, judged on everything since the stage began).
pub fn decision_line(
    stage: u8,
    window: u32,
    baseline: &Window,
    candidate: &Window,
    verdict: &Verdict,
) -> String {
    let side = |w: &Window| {
        format!(
            "{} requests, {} errors, p95 {}",
            w.requests,
            w.errors,
            w.p95().map(fmt_secs).unwrap_or_else(|| "-".into())
        )
    };
    format!(
        "{DECISION_PREFIX}{stage}% stage, window {window}: candidate {}; baseline {}; verdict: {}",
        side(candidate),
        side(baseline),
        verdict.describe()
    )
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
            (w(10, 10, 10), "too few requests, window extended (1 of 3)"),
            (w(100, 2, 100), "healthy"),
            (w(100, 3, 100), "error rate 3.0% against 0.0%"),
            (w(100, 0, 50), "p95 latency 910ms against 10ms"),
            (w(100, 0, 96), "healthy"),
        ] {
            let got = judge(&base, &cand, &cfg, 0);
            let text = match &got {
                Verdict::Regressed(r) => r.clone(),
                other => other.describe(),
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
        assert_eq!(judge(&fast(1), &fast(40), &cfg, 0), Verdict::Healthy);
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
        assert_eq!(judge(&under, &crossed, &cfg, 0), Verdict::Healthy);
        // A baseline that errs as much is no regression.
        assert_eq!(
            judge(&w(100, 5, 100), &w(100, 6, 100), &cfg, 0),
            Verdict::Healthy
        );
    }

    /// "No data" is not a pass: each `on_low_traffic` rule, at each
    /// extension count, with no traffic, a few errors-only requests, and
    /// just enough.
    #[test]
    fn low_traffic_rules() {
        let base = w(1000, 0, 1000);
        let rule = |r: LowTraffic, min: u64| CanaryConfig {
            on_low_traffic: r,
            min_requests: min,
            ..CanaryConfig::default()
        };
        let extend = rule(LowTraffic::Extend, 100);
        for (cand, cfg, ext, want) in [
            (w(0, 0, 0), &extend, 0, Verdict::Extend { requests: 0, extension: 1 }),
            (w(19, 19, 19), &extend, 2, Verdict::Extend { requests: 19, extension: 3 }),
            (
                w(0, 0, 0),
                &extend,
                3,
                Verdict::TooLittleTraffic(
                    "saw 0 requests in 4 windows, fewer than min_requests = 100 (on_low_traffic = \"extend\", extended 3 times)".into(),
                ),
            ),
            (
                w(1, 0, 1),
                &rule(LowTraffic::Fail, 100),
                0,
                Verdict::TooLittleTraffic(
                    "saw 1 request in 1 window, fewer than min_requests = 100 (on_low_traffic = \"fail\")".into(),
                ),
            ),
            (w(0, 0, 0), &rule(LowTraffic::Promote, 100), 0, Verdict::PromotedOnHealth { requests: 0 }),
            (w(99, 0, 99), &rule(LowTraffic::Promote, 100), 0, Verdict::PromotedOnHealth { requests: 99 }),
            // At the minimum the window is judged, whatever the rule.
            (w(100, 0, 100), &rule(LowTraffic::Fail, 100), 3, Verdict::Healthy),
            (w(5, 0, 5), &rule(LowTraffic::Fail, 5), 0, Verdict::Healthy),
        ] {
            assert_eq!(judge(&base, &cand, cfg, ext), want, "{cand:?} {cfg:?} {ext}");
        }
        // Errors-only at the minimum are judged, not waved through.
        assert!(matches!(
            judge(&base, &w(20, 20, 20), &rule(LowTraffic::Promote, 20), 0),
            Verdict::Regressed(_)
        ));
        // A baseline below the minimum: p95s are not compared.
        assert_eq!(
            judge(&w(10, 0, 10), &w(100, 0, 0), &extend, 0),
            Verdict::Healthy
        );
    }

    #[test]
    fn decision_line_names_both_sides_and_the_verdict() {
        let line = decision_line(25, 2, &w(400, 1, 400), &w(120, 2, 120), &Verdict::Healthy);
        assert_eq!(
            line,
            "canary judge: 25% stage, window 2: candidate 120 requests, 2 errors, p95 10ms; \
             baseline 400 requests, 1 errors, p95 10ms; verdict: healthy"
        );
        let none = decision_line(
            5,
            1,
            &w(0, 0, 0),
            &w(0, 0, 0),
            &Verdict::PromotedOnHealth { requests: 0 },
        );
        assert!(none.starts_with(DECISION_PREFIX), "{none}");
        assert!(
            none.contains("candidate 0 requests, 0 errors, p95 -;"),
            "{none}"
        );
        assert!(
            none.ends_with("verdict: promoted on health alone (too few requests to judge)"),
            "{none}"
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

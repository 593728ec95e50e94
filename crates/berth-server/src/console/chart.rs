//! Server-rendered SVG charts of a service's last hour (no script, nothing
//! fetched): requests per second, error rate and p95 latency per minute,
//! one line per deployment, with deploys, rollbacks, promotions and canary
//! stages marked on the time axis. Built with `maud`, so labels (ids) are
//! escaped like everywhere else; only numbers this file computed go into
//! coordinates.

use berth_core::model::{Deployment, LogLine, Trigger};
use berth_core::state::Status;
use berth_store::MetricMinute;
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use std::collections::BTreeMap;

/// The span a chart shows, ending now.
pub const SPAN_MINUTES: i64 = 60;

const W: f64 = 720.0;
const H: f64 = 150.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;
/// Line colours, one per deployment in order of first appearance.
const PALETTE: [&str; 6] = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2",
];

/// Something that happened to the service, drawn as a vertical line.
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    pub at: DateTime<Utc>,
    /// `deploy`, `rollback`, `promote` or `canary`.
    pub kind: &'static str,
    /// What the line's tooltip says.
    pub label: String,
}

/// The markers of a service: each deployment that went live (deploy,
/// rollback or promote) at its completion, and each canary stage at its
/// start (from the berth log lines of the service, `lines`).
pub fn markers(deployments: &[Deployment], lines: &[LogLine]) -> Vec<Marker> {
    let mut out = Vec::new();
    for d in deployments {
        let (Status::Succeeded, Some(at)) = (d.status, d.completed_at) else {
            continue;
        };
        let kind = match d.trigger {
            Trigger::Rollback => "rollback",
            Trigger::Promote => "promote",
            _ => "deploy",
        };
        out.push(Marker {
            at,
            kind,
            label: format!(
                "{kind} {} ({})",
                d.id,
                d.short_sha().unwrap_or(&d.reference)
            ),
        });
    }
    for l in lines {
        if let Some(rest) = l.text.strip_prefix(crate::charts::STAGE_PREFIX) {
            if rest.contains("% of traffic") {
                out.push(Marker {
                    at: l.ts,
                    kind: "canary",
                    label: format!("canary {}: {rest}", l.deployment_id),
                });
            }
        }
    }
    out.sort_by_key(|m| m.at);
    out
}

/// One judged canary window, read back from its decision line.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub at: DateTime<Utc>,
    /// `25% stage, window 1`
    pub stage: String,
    pub candidate: String,
    pub baseline: String,
    pub verdict: String,
}

/// A canary of the service: its thresholds and judged windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Canary {
    pub deployment_id: String,
    pub thresholds: Option<String>,
    pub decisions: Vec<Decision>,
}

/// The canaries in `lines` (berth log lines, oldest first), per
/// deployment in order of their first line.
pub fn canaries(lines: &[LogLine]) -> Vec<Canary> {
    let mut out: Vec<Canary> = Vec::new();
    for l in lines {
        let thresholds = l.text.strip_prefix(crate::charts::THRESHOLDS_PREFIX);
        let decision = l
            .text
            .strip_prefix(berth_core::canary::DECISION_PREFIX)
            .map(|rest| parse_decision(l.ts, rest));
        if thresholds.is_none() && decision.is_none() {
            continue;
        }
        let i = match out.iter().position(|c| c.deployment_id == l.deployment_id) {
            Some(i) => i,
            None => {
                out.push(Canary {
                    deployment_id: l.deployment_id.clone(),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        if let Some(t) = thresholds {
            out[i].thresholds = Some(t.to_string());
        }
        if let Some(d) = decision {
            out[i].decisions.push(d);
        }
    }
    out
}

/// `25% stage, window 1: candidate …; baseline …; verdict: …`
fn parse_decision(at: DateTime<Utc>, rest: &str) -> Decision {
    let parsed = rest.split_once(": candidate ").and_then(|(stage, rest)| {
        let (candidate, rest) = rest.split_once("; baseline ")?;
        let (baseline, verdict) = rest.split_once("; verdict: ")?;
        Some(Decision {
            at,
            stage: stage.to_string(),
            candidate: candidate.to_string(),
            baseline: baseline.to_string(),
            verdict: verdict.to_string(),
        })
    });
    parsed.unwrap_or_else(|| Decision {
        at,
        stage: String::new(),
        candidate: String::new(),
        baseline: String::new(),
        verdict: rest.to_string(),
    })
}

/// Which number of a minute a chart plots.
#[derive(Clone, Copy)]
enum Metric {
    RequestsPerSecond,
    ErrorRate,
    P95,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::RequestsPerSecond => "requests",
            Metric::ErrorRate => "errors",
            Metric::P95 => "p95",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::RequestsPerSecond => "Requests per second",
            Metric::ErrorRate => "Error rate (5xx, %)",
            Metric::P95 => "p95 latency (ms)",
        }
    }

    /// The value of a minute; `elapsed` is how much of the minute has
    /// passed (the current minute is still filling).
    fn value(self, r: &MetricMinute, elapsed_s: f64) -> Option<f64> {
        match self {
            Metric::RequestsPerSecond => Some(r.requests as f64 / elapsed_s.clamp(1.0, 60.0)),
            Metric::ErrorRate => {
                (r.requests > 0).then(|| r.errors as f64 * 100.0 / r.requests as f64)
            }
            Metric::P95 => r.p95_ms,
        }
    }
}

/// A round upper bound for an axis (1, 2, 5 × 10^n).
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The three charts of a service: `rows` are its minutes (any order),
/// `markers` its events, `now` the right edge.
pub fn service_charts(rows: &[MetricMinute], markers: &[Marker], now: DateTime<Utc>) -> Markup {
    let start = now - Duration::minutes(SPAN_MINUTES);
    // Deployments in order of first appearance keep their colour on every chart.
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.deployment_id.as_str()) {
            order.push(&r.deployment_id);
        }
    }
    // Each deployment's requests in the hour, every server's edge summed
    // (on its legend key, for tools and tests).
    let requests_of = |id: &str| -> u64 {
        rows.iter()
            .filter(|r| r.deployment_id == id && r.minute + Duration::minutes(1) > start)
            .map(|r| r.requests)
            .sum()
    };
    let colour = |id: &str| {
        let i = order.iter().position(|o| *o == id).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    html! {
        div.charts {
            @if rows.is_empty() {
                p.muted.pad #no-traffic { "No traffic through the edge in the last hour." }
            } @else {
                p.legend {
                    @for id in &order {
                        span.key data-deployment=(id) data-requests=(requests_of(id)) {
                            span.swatch style={ "background:" (colour(id)) } {} " " span.mono { (id) }
                        }
                        " "
                    }
                }
            }
            @for m in [Metric::RequestsPerSecond, Metric::ErrorRate, Metric::P95] {
                (chart(m, rows, markers, start, now, &order, &colour))
            }
        }
    }
}

fn chart(
    m: Metric,
    rows: &[MetricMinute],
    markers: &[Marker],
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    order: &[&str],
    colour: &dyn Fn(&str) -> &'static str,
) -> Markup {
    let span_ms = (now - start).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        let f = (t - start).num_milliseconds() as f64 / span_ms;
        LEFT + f.clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    };
    // Points per deployment, at the middle of each minute (the current one
    // at now).
    let mut series: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    let mut max: f64 = 0.0;
    let mut values = Vec::new();
    for r in rows {
        if r.minute + Duration::minutes(1) <= start {
            continue;
        }
        let elapsed = (now - r.minute).num_milliseconds() as f64 / 1000.0;
        let Some(v) = m.value(r, elapsed).filter(|v| v.is_finite()) else {
            continue;
        };
        let at = (r.minute + Duration::seconds(30)).min(now);
        max = max.max(v);
        values.push((r.deployment_id.as_str(), at, v));
    }
    let top = nice_max(max);
    let y = |v: f64| TOP + (1.0 - (v / top).clamp(0.0, 1.0)) * (H - TOP - BOTTOM);
    for (id, at, v) in values {
        let i = order.iter().position(|o| *o == id).unwrap_or(0);
        series.entry(i).or_default().push((x(at), y(v)));
    }
    let points = |pts: &[(f64, f64)]| {
        pts.iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let n_points: usize = series.values().map(Vec::len).sum();
    html! {
        figure.chart {
            figcaption { (m.title()) }
            svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (W) " " (H) }
                role="img" aria-label={ (m.title()) ", last hour" }
                data-metric=(m.name()) data-points=(n_points) {
                // Axes and grid.
                @for frac in [0.0, 0.5, 1.0] {
                    @let gy = y(top * frac);
                    line.grid x1=(LEFT) x2=(W - RIGHT) y1=(format!("{gy:.1}")) y2=(format!("{gy:.1}")) {}
                    text.axis x=(LEFT - 6.0) y=(format!("{:.1}", gy + 4.0)) text-anchor="end" { (fmt_num(top * frac)) }
                }
                @for back in [60, 45, 30, 15, 0] {
                    @let t = now - Duration::minutes(back);
                    text.axis x=(format!("{:.1}", x(t))) y=(H - 6.0) text-anchor="middle" {
                        @if back == 0 { "now" } @else { "-" (back) "m" }
                    }
                }
                @for mk in markers {
                    @if mk.at >= start && mk.at <= now {
                        @let mx = format!("{:.1}", x(mk.at));
                        line class={ "marker " (mk.kind) } data-kind=(mk.kind)
                            x1=(mx) x2=(mx) y1=(TOP) y2=(H - BOTTOM) {
                            title { (mk.label) }
                        }
                    }
                }
                @for (i, pts) in &series {
                    @let c = colour(order.get(*i).copied().unwrap_or(""));
                    @if pts.len() == 1 {
                        circle cx=(format!("{:.1}", pts[0].0)) cy=(format!("{:.1}", pts[0].1)) r="3" fill=(c) {
                            title { (order.get(*i).copied().unwrap_or("")) }
                        }
                    } @else {
                        polyline.series fill="none" stroke=(c) stroke-width="2" points=(points(pts)) {
                            title { (order.get(*i).copied().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(
        dep: &str,
        t: DateTime<Utc>,
        requests: u64,
        errors: u64,
        p95: Option<f64>,
    ) -> MetricMinute {
        MetricMinute {
            deployment_id: dep.into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
            minute: t,
            requests,
            errors,
            p95_ms: p95,
            ..Default::default()
        }
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    #[test]
    fn charts_draw_each_deployment_and_the_markers_inside_the_hour() {
        let now = DateTime::from_timestamp(1_800_000_030, 0).unwrap();
        let m0 = crate::charts::minute_of(now);
        let rows = [
            minute("<d1>", m0 - Duration::minutes(3), 600, 6, Some(20.0)),
            minute("<d1>", m0 - Duration::minutes(2), 1200, 0, Some(25.0)),
            minute("d2", m0 - Duration::minutes(1), 60, 30, Some(400.0)),
            minute("d2", m0, 30, 0, None),
        ];
        let markers = [
            Marker {
                at: m0 - Duration::minutes(1),
                kind: "deploy",
                label: "deploy <d2>".into(),
            },
            Marker {
                at: now - Duration::hours(2),
                kind: "rollback",
                label: "too old".into(),
            },
        ];
        let html = service_charts(&rows, &markers, now).into_string();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(
            html.contains(r#"data-deployment="d2" data-requests="90""#),
            "{html}"
        );
        assert!(
            html.contains(r#"data-deployment="&lt;d1&gt;" data-requests="1800""#),
            "{html}"
        );
        assert!(
            html.contains(r#"data-metric="requests" data-points="4""#),
            "{html}"
        );
        // d2's current minute has no p95: three points on the latency chart.
        assert!(
            html.contains(r#"data-metric="p95" data-points="3""#),
            "{html}"
        );
        assert_eq!(html.matches(r#"data-kind="deploy""#).count(), 3);
        assert!(
            !html.contains("too old"),
            "markers outside the hour are left out"
        );
        assert!(html.contains("deploy &lt;d2&gt;") && html.contains("&lt;d1&gt;"));
        assert!(!html.contains("<d1>") && !html.contains("<d2>"));
        // 1200 requests in a minute: 20/s, the axis tops out at 20.
        assert!(html.contains(">20<"), "{html}");
        // d2 at 50 % errors in its first minute.
        assert!(html.contains(">50<"), "{html}");
        // d2 has one p95 point: a dot, every other series a line.
        assert_eq!(html.matches("<polyline").count(), 5);
        assert_eq!(html.matches("<circle").count(), 1);
    }

    #[test]
    fn canary_lines_become_stages_with_thresholds() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let line = |dep: &str, text: String| LogLine {
            seq: 1,
            ts: t,
            deployment_id: dep.into(),
            project_name: "shop".into(),
            service_name: "web".into(),
            environment_name: "production".into(),
            sha: None,
            stream: berth_core::model::LogStream::Berth,
            step: None,
            text,
        };
        let b = berth_core::canary::Window {
            requests: 100,
            errors: 0,
            latency: vec![(0.01, 100)],
        };
        let c = berth_core::canary::Window {
            requests: 10,
            errors: 5,
            latency: vec![(0.01, 10)],
        };
        let lines = [
            line(
                "d2",
                format!(
                    "{}error rate at most +1.0 points",
                    crate::charts::THRESHOLDS_PREFIX
                ),
            ),
            line(
                "d2",
                "canary: 5% of traffic to this deployment for 30s".into(),
            ),
            line(
                "d2",
                berth_core::canary::decision_line(
                    5,
                    1,
                    &b,
                    &c,
                    &berth_core::canary::Verdict::Regressed("error rate 50.0%".into()),
                ),
            ),
            line("d2", "something else".into()),
        ];
        let cs = canaries(&lines);
        assert_eq!(cs.len(), 1);
        assert_eq!(
            cs[0].thresholds.as_deref(),
            Some("error rate at most +1.0 points")
        );
        assert_eq!(cs[0].decisions.len(), 1);
        let d = &cs[0].decisions[0];
        assert_eq!(d.stage, "5% stage, window 1");
        assert!(d.candidate.starts_with("10 requests, 5 errors"), "{d:?}");
        assert!(d.baseline.starts_with("100 requests, 0 errors"), "{d:?}");
        assert_eq!(d.verdict, "regressed: error rate 50.0%");
        let ms = markers(&[], &lines);
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].kind, "canary");
    }

    #[test]
    fn no_rows_say_so() {
        let now = Utc::now();
        let html = service_charts(&[], &[], now).into_string();
        assert!(html.contains(r#"id="no-traffic""#));
        assert!(html.contains(r#"data-points="0""#));
    }
}

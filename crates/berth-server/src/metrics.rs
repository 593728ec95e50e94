//! Control-plane metrics through `prometheus-client`: pipeline outcomes and
//! durations, illegal transitions, log lines dropped. `/metrics` serves one
//! OpenMetrics page ([`page`]): the edge's families first (its lock-free
//! counters stay on the request path and render themselves, see
//! `Edge::metrics_text`), then these, then `# EOF`.

use berth_core::model::Deployment;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the pipeline duration histogram.
const BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// The content type of the `/metrics` page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of a pipeline's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    project: String,
    status: String,
}

type Durations = Family<PipelineLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    /// Deployments that ended, by project and status.
    pipelines: Family<PipelineLabels, Counter>,
    /// Their pipelines' durations.
    durations: Durations,
    /// Moves the state machine refused.
    illegal_transitions: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Counter::default())
    }
}

impl Metrics {
    /// `log_lines_dropped`: the log hub's counter (`LogHub::dropped_counter`).
    pub fn new(log_lines_dropped: Counter) -> Metrics {
        let pipelines = Family::<PipelineLabels, Counter>::default();
        let durations: Durations = Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let illegal_transitions = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "berth_illegal_transitions",
            "Deployment state changes the state machine refused",
            illegal_transitions.clone(),
        );
        registry.register(
            "berth_pipelines",
            "Deployments that ended, by project and status",
            pipelines.clone(),
        );
        registry.register_with_unit(
            "berth_pipeline_duration",
            "Time from start to end of a deployment's pipeline",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "berth_log_lines_dropped",
            "Log lines dropped because the log store could not keep up",
            log_lines_dropped,
        );
        Metrics {
            registry,
            pipelines,
            durations,
            illegal_transitions,
        }
    }

    /// Count a move the state machine refused.
    pub fn illegal_transition(&self) {
        self.illegal_transitions.inc();
    }

    /// Count a deployment that reached a terminal state.
    pub fn record_pipeline(&self, d: &Deployment) {
        if !d.status.is_terminal() {
            return;
        }
        let secs = match (d.started_at.or(Some(d.created_at)), d.completed_at) {
            (Some(a), Some(b)) => (b - a).num_milliseconds().max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let labels = PipelineLabels {
            project: d.project_name.clone(),
            status: d.status.to_string(),
        };
        self.pipelines.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(secs);
    }

    /// Appends these families (OpenMetrics text, without `# EOF`).
    pub fn render(&self, out: &mut String) {
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}

/// The whole `/metrics` page: the edge's families, the server's, `# EOF`.
pub fn page(edge: &berth_edge::Edge, server: &Metrics) -> String {
    let mut out = edge.metrics_text();
    server.render(&mut out);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: &str) -> Deployment {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        serde_json::from_value(serde_json::json!({
            "id": "x", "projectName": "shop", "serviceName": "web", "environmentName": "production",
            "status": status, "promotionStage": "active", "health": "healthy", "isActive": true,
            "routeUrl": null, "previewUrl": null, "failureMessage": null, "createdAt": t,
            "startedAt": t, "completedAt": t + chrono::Duration::seconds(3), "ref": "main",
            "commit": null, "trigger": "manual", "sourceDeploymentId": null, "image": null,
            "build": {"provider": null, "framework": null, "runtime": null, "port": null, "startCommand": null, "cacheHit": false},
            "steps": [], "canaryWeight": null
        }))
        .unwrap()
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let mut d = deployment("succeeded");
        m.record_pipeline(&d);
        d.status = berth_core::state::Status::Running;
        m.record_pipeline(&d); // not terminal: ignored
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("berth_pipelines_total{project=\"shop\",status=\"succeeded\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE berth_pipelines counter\n"), "{out}");
        let bucket = |le: &str| {
            format!("berth_pipeline_duration_seconds_bucket{{le=\"{le}\",project=\"shop\",status=\"succeeded\"}}")
        };
        assert!(out.contains(&format!("{} 0\n", bucket("2.5"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", bucket("5.0"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", bucket("+Inf"))), "{out}");
        assert!(
            out.contains(
                "berth_pipeline_duration_seconds_sum{project=\"shop\",status=\"succeeded\"} 3.0\n"
            ),
            "{out}"
        );
        assert!(out.contains("berth_illegal_transitions_total 0\n"), "{out}");
        assert!(!out.contains("# EOF"), "the page adds it: {out}");
    }

    #[test]
    fn the_log_hub_counter_is_the_one_rendered() {
        let dropped = Counter::default();
        let m = Metrics::new(dropped.clone());
        dropped.inc_by(7);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("berth_log_lines_dropped_total 7\n"), "{out}");
    }

    /// Sample names `/metrics` had before it was one OpenMetrics page
    /// (Prometheus text 0.0.4, server part by hand); scrapers use them.
    const NAMES_BEFORE: &[&str] = &[
        "berth_edge_requests_total",
        "berth_edge_request_duration_seconds_bucket",
        "berth_edge_request_duration_seconds_sum",
        "berth_edge_request_duration_seconds_count",
        "berth_edge_inflight_requests",
        "berth_edge_upgraded_connections",
        "berth_edge_unknown_host_total",
        "berth_edge_no_target_total",
        "berth_edge_retried_total",
        "berth_edge_passive_down_total",
        "berth_edge_access_log_dropped_total",
        "berth_illegal_transitions_total",
        "berth_pipelines_total",
        "berth_pipeline_duration_seconds_bucket",
        "berth_pipeline_duration_seconds_sum",
        "berth_pipeline_duration_seconds_count",
        "berth_log_lines_dropped_total",
    ];
    /// Added since (issue 15, the rate limit's tarpit and connection
    /// admission).
    const NAMES_ADDED: &[&str] = &[
        "berth_edge_rate_limited_total",
        "berth_edge_rate_limited_closed_total",
        "berth_edge_connections_refused_total",
    ];

    /// A Python with `prometheus_client` (its OpenMetrics parser):
    /// `$BERTH_METRICS_PYTHON`, the venv scripts/ensure-deps.sh makes
    /// (/opt/berth-metrics), or `python3` if it has the module.
    fn parser_python() -> Option<std::path::PathBuf> {
        let has_module = |p: &std::path::Path| {
            std::process::Command::new(p)
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        std::env::var_os("BERTH_METRICS_PYTHON")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([
                std::path::PathBuf::from("/opt/berth-metrics/bin/python"),
                std::path::PathBuf::from("python3"),
            ])
            .find(|p| has_module(p))
    }

    /// Parses `page` with `prometheus_client`'s OpenMetrics parser: each
    /// family's name and type, and every sample name; Err: what it refused.
    fn parse_openmetrics(
        python: &std::path::Path,
        page: &str,
    ) -> Result<Vec<(String, String, Vec<String>)>, String> {
        use std::io::Write;
        const SCRIPT: &str = "import json, sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
try:\n    fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
except Exception as e:\n    print('refused: %r' % (e,), file=sys.stderr); sys.exit(1)\n\
print(json.dumps([[f.name, f.type, [s.name for s in f.samples]] for f in fams]))\n";
        let mut child = std::process::Command::new(python)
            .args(["-c", SCRIPT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_page_is_valid_openmetrics_with_every_name_scrapers_use() {
        let Some(python) = parser_python() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no Python with prometheus_client (scripts/ensure-deps.sh installs it in /opt/berth-metrics)"
            );
            eprintln!("skipped: no Python with prometheus_client (see scripts/ensure-deps.sh)");
            return;
        };
        // a fresh server: the edge's families without series, the
        // pipelines' absent until one ends
        let fresh = page(
            &berth_edge::Edge::new(berth_edge::EdgeConfig::default()).unwrap(),
            &Metrics::default(),
        );
        parse_openmetrics(&python, &fresh).unwrap_or_else(|e| panic!("{e}\n{fresh}"));

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let edge = berth_edge::Edge::new(berth_edge::EdgeConfig {
            access_log: Some(berth_edge::AccessLogConfig::parse(log.to_str().unwrap())),
            ..berth_edge::EdgeConfig::default()
        })
        .unwrap();
        edge.apply(vec![berth_edge::RouteChange::Upsert {
            host: "shop.localhost".into(),
            route: berth_edge::RouteSpec {
                targets: vec![berth_edge::TargetSpec {
                    deployment_id: Some("dep-1".into()),
                    sha: None,
                    id: "dep-1-web".into(),
                    upstream: "127.0.0.1:9".into(),
                    weight: 1,
                }],
                ..Default::default()
            },
        }])
        .unwrap();
        let dropped = Counter::default();
        let m = Metrics::new(dropped.clone());
        dropped.inc_by(2);
        m.record_pipeline(&deployment("succeeded"));
        m.record_pipeline(&deployment("failed"));
        m.illegal_transition();

        let text = page(&edge, &m);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let families = parse_openmetrics(&python, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let samples: std::collections::BTreeSet<&str> = families
            .iter()
            .flat_map(|(_, _, s)| s.iter().map(String::as_str))
            .collect();
        for name in NAMES_BEFORE.iter().chain(NAMES_ADDED) {
            assert!(samples.contains(name), "{name} missing from\n{text}");
        }
        let family = |name: &str| {
            families
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, t, _)| t.as_str())
        };
        // typed as declared (a counter declared with `_total` would have
        // been read as an unknown metric clashing with it)
        for (name, typ) in [
            ("berth_edge_requests", "counter"),
            ("berth_edge_request_duration_seconds", "histogram"),
            ("berth_edge_inflight_requests", "gauge"),
            ("berth_edge_rate_limited", "counter"),
            ("berth_pipelines", "counter"),
            ("berth_pipeline_duration_seconds", "histogram"),
            ("berth_illegal_transitions", "counter"),
            ("berth_log_lines_dropped", "counter"),
        ] {
            assert_eq!(family(name), Some(typ), "{name} in\n{text}");
        }
        assert!(
            families.iter().all(|(_, t, _)| t != "unknown"),
            "an untyped family in\n{text}"
        );
        assert!(text.contains("berth_log_lines_dropped_total 2\n"), "{text}");
        assert!(
            text.contains("berth_illegal_transitions_total 1\n"),
            "{text}"
        );

        // and the parser does refuse what the page must not be
        for bad in [
            text.trim_end_matches("# EOF\n").to_string(),
            text.replace(
                "# TYPE berth_pipelines counter",
                "# TYPE berth_pipelines_total counter",
            ),
        ] {
            assert!(
                parse_openmetrics(&python, &bad).is_err(),
                "accepted:\n{bad}"
            );
        }
    }
}

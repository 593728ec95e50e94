//! Control-plane metrics in Prometheus text format: pipeline outcomes and
//! durations. The edge adds its own (requests by status class, latency,
//! in-flight per deployment) to the same `/metrics` page.

use berth_core::model::Deployment;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the pipeline duration histogram.
const BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// (project, status) → (count, duration histogram)
    pipelines: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Moves the state machine refused.
    illegal_transitions: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// Count a move the state machine refused.
    pub fn illegal_transition(&self) {
        self.illegal_transitions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let mut m = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let h = m
            .entry((d.project_name.clone(), d.status.to_string()))
            .or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP berth_illegal_transitions_total Deployment state changes the state machine refused.\n# TYPE berth_illegal_transitions_total counter\n");
        let _ = writeln!(
            out,
            "berth_illegal_transitions_total {}",
            self.illegal_transitions
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let m = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP berth_pipelines_total Deployments that ended, by project and status.\n",
        );
        out.push_str("# TYPE berth_pipelines_total counter\n");
        for ((p, s), h) in m.iter() {
            let _ = writeln!(
                out,
                "berth_pipelines_total{{project=\"{p}\",status=\"{s}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP berth_pipeline_duration_seconds Time from start to end of a deployment's pipeline.\n");
        out.push_str("# TYPE berth_pipeline_duration_seconds histogram\n");
        for ((p, s), h) in m.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_pipeline_duration_seconds_bucket{{project=\"{p}\",status=\"{s}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "berth_pipeline_duration_seconds_bucket{{project=\"{p}\",status=\"{s}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "berth_pipeline_duration_seconds_sum{{project=\"{p}\",status=\"{s}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "berth_pipeline_duration_seconds_count{{project=\"{p}\",status=\"{s}\"}} {}",
                h.count
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "id": "x", "projectName": "shop", "serviceName": "web", "environmentName": "production",
            "status": "succeeded", "promotionStage": "active", "health": "healthy", "isActive": true,
            "routeUrl": null, "previewUrl": null, "failureMessage": null, "createdAt": t,
            "startedAt": t, "completedAt": t + chrono::Duration::seconds(3), "ref": "main",
            "commit": null, "trigger": "manual", "sourceDeploymentId": null, "image": null,
            "build": {"provider": null, "framework": null, "runtime": null, "port": null, "startCommand": null, "cacheHit": false},
            "steps": [], "canaryWeight": null
        }))
        .unwrap();
        m.record_pipeline(&d);
        d.status = berth_core::state::Status::Running;
        m.record_pipeline(&d); // not terminal: ignored
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("berth_pipelines_total{project=\"shop\",status=\"succeeded\"} 1"));
        assert!(out.contains("le=\"2.5\"} 0"));
        assert!(out.contains("le=\"5\"} 1"));
        assert!(out.contains(
            "berth_pipeline_duration_seconds_sum{project=\"shop\",status=\"succeeded\"} 3"
        ));
    }
}

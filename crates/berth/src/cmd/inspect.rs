//! `berth inspect ID`: one deployment in detail.

use super::{or_dash, yes_no, Ctx};
use crate::client::{ClientError, LogQuery, LogSource};
use crate::output::{emit, human_duration_ms, relative_age, step_elapsed_ms, timestamp, Table};
use berth_core::canary::DECISION_PREFIX;
use berth_core::model::{Deployment, LogLine, StepStatus};
use chrono::{DateTime, Utc};
use clap::Args;
use std::fmt::Write as _;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A deployment id.
    id: String,
}

pub async fn run(ctx: &Ctx, a: InspectArgs) -> anyhow::Result<()> {
    let reply = ctx.client.get_deployment(&a.id).await?;
    if ctx.json {
        return ctx.print_json(&reply);
    }
    let d = reply.parse()?;
    // The manifest is extra: a deployment without one (not built yet,
    // or an older server) still inspects.
    let manifest = match ctx.client.manifest(&a.id).await {
        Ok(r) => r.parse().ok().map(|m: Vec<_>| m.len()),
        Err(_) => None,
    };
    // So are the canary judge's decisions, read from the deployment's
    // berth log (an older server's log simply has none).
    let decisions = canary_decisions(ctx, &a.id).await.unwrap_or_default();
    emit(&render(&d, manifest, &decisions, Utc::now()));
    Ok(())
}

/// The canary judge's decision lines of a deployment, oldest first.
async fn canary_decisions(ctx: &Ctx, id: &str) -> anyhow::Result<Vec<LogLine>> {
    const PAGE: u32 = 5000;
    let src = LogSource::Deployment(id.to_string());
    let (mut out, mut after) = (Vec::new(), None);
    // Bounded: a deployment's berth log is a few hundred lines.
    for _ in 0..20 {
        let q = LogQuery {
            after,
            stream: Some("berth".into()),
            since: None,
            limit: Some(PAGE),
        };
        let raws = ctx.client.logs(&src, &q).await?.elements()?;
        let before = after;
        for raw in &raws {
            let line: LogLine =
                serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))?;
            after = Some(line.seq);
            if line.text.starts_with(DECISION_PREFIX) {
                out.push(line);
            }
        }
        if raws.len() < PAGE as usize || after == before {
            break;
        }
    }
    Ok(out)
}

fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ({})", timestamp(t), relative_age(t, now)),
        None => "-".into(),
    }
}

/// The readable view.
pub fn render(
    d: &Deployment,
    manifest_files: Option<usize>,
    decisions: &[LogLine],
    now: DateTime<Utc>,
) -> String {
    let mut kv = Table::new(["Deployment", d.id.as_str()]);
    let mut add = |k: &str, v: String| kv.row([k.to_string(), v]);
    add("Project", d.project_name.clone());
    add("Service", d.service_name.clone());
    add("Environment", d.environment_name.clone());
    add("Status", d.status.to_string());
    let mut stage = d.promotion_stage.to_string();
    if let Some(w) = d.canary_weight {
        let _ = write!(stage, " ({w}% of traffic)");
    }
    if let Some(until) = d.bake_until {
        let _ = write!(
            stage,
            " (warm until {}: a rollback is a route flip)",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    add("Stage", stage);
    add("Health", d.health.to_string());
    add("Active", yes_no(d.is_active).to_string());
    add("Route URL", or_dash(d.route_url.as_deref()));
    add("Preview URL", or_dash(d.preview_url.as_deref()));
    let mut trigger = d.trigger.as_str().to_string();
    if let Some(src) = &d.source_deployment_id {
        let _ = write!(trigger, " (from {src})");
    }
    add("Trigger", trigger);
    add("Ref", or_dash(Some(&d.reference)));
    match &d.commit {
        Some(c) => {
            let branch = c
                .branch
                .as_deref()
                .map(|b| format!(" on {b}"))
                .unwrap_or_default();
            add("Commit", format!("{}{branch} by {}", c.sha, c.author));
            let subject = c.message.lines().next().unwrap_or("").trim();
            if !subject.is_empty() {
                add("Message", subject.to_string());
            }
        }
        None => add("Commit", "-".into()),
    }
    match &d.image {
        Some(i) => {
            let mut s = i.reference.clone();
            if let Some(dg) = &i.digest {
                let _ = write!(s, " ({dg})");
            }
            add("Image", s);
        }
        None => add("Image", "-".into()),
    }
    if let Some(r) = &d.runtime {
        add(
            "Runtime",
            match r.summary().as_str() {
                "-" => r.instance_name.clone(),
                s => format!("{s} ({})", r.instance_name),
            },
        );
    }
    let b = &d.build;
    let mut build = Vec::new();
    for (k, v) in [
        ("provider", b.provider.clone()),
        ("framework", b.framework.clone()),
        ("runtime", b.runtime.clone()),
        ("port", b.port.map(|p| p.to_string())),
    ] {
        if let Some(v) = v {
            build.push(format!("{k} {v}"));
        }
    }
    if b.cache_hit {
        build.push("cache hit".into());
    }
    add(
        "Build",
        if build.is_empty() {
            "-".into()
        } else {
            build.join(", ")
        },
    );
    if let Some(cmd) = &b.start_command {
        add("Start command", cmd.clone());
    }
    add("Created", when(Some(d.created_at), now));
    add("Started", when(d.started_at, now));
    add("Completed", when(d.completed_at, now));
    if let (Some(s), Some(c)) = (d.started_at.or(Some(d.created_at)), d.completed_at) {
        add("Took", human_duration_ms((c - s).num_milliseconds()));
    }
    add(
        "Manifest",
        match manifest_files {
            Some(1) => "1 file".into(),
            Some(n) => format!("{n} files"),
            None => "-".into(),
        },
    );
    if let Some(m) = &d.failure_message {
        add("Failure", crate::client::one_line(m));
    }
    let mut out = kv.render();
    out.push_str("\nSteps\n");
    if d.steps.is_empty() {
        out.push_str("  (none yet)\n");
    } else {
        let mut steps = Table::new(["  STEP", "STATUS", "STARTED", "DURATION"]);
        for s in &d.steps {
            let dur = match s.status {
                StepStatus::Pending | StepStatus::Skipped => "-".to_string(),
                _ => step_elapsed_ms(s, now)
                    .map(human_duration_ms)
                    .unwrap_or_else(|| "-".into()),
            };
            steps.row([
                format!("  {}", s.name.as_str()),
                s.status.as_str().to_string(),
                s.started_at.map(timestamp).unwrap_or_else(|| "-".into()),
                dur,
            ]);
        }
        out.push_str(&steps.render());
    }
    if !decisions.is_empty() {
        // One line per judged window: requests, errors and p95 of both
        // sides, and the verdict.
        out.push_str("\nCanary decisions\n");
        for l in decisions {
            let text = l.text.strip_prefix(DECISION_PREFIX).unwrap_or(&l.text);
            let _ = writeln!(out, "  {}  {text}", timestamp(l.ts));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn inspect_succeeded() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let all = crate::cmd::fixture_deployments();
        insta::assert_snapshot!(render(&all[1], Some(12), &[], now));
    }

    #[test]
    fn inspect_shows_the_runtime_and_its_resources() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let mut d = crate::cmd::fixture_deployments()[1].clone();
        let plain = render(&d, Some(12), &[], now);
        assert!(!plain.contains("Runtime"), "{plain}");
        d.runtime = Some(berth_core::model::RuntimeInfo {
            instance_id: "vm-1".into(),
            instance_name: "shop-web-production-d1".into(),
            address: Some("127.0.0.1:4000".into()),
            kind: Some("microvm".into()),
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
        });
        let out = render(&d, Some(12), &[], now);
        let line = out.lines().find(|l| l.starts_with("Runtime")).unwrap();
        assert!(
            line.ends_with("microvm 256 MiB, 1 CPU (shop-web-production-d1)"),
            "{line}"
        );
        // A record written before berth kept the kind shows the instance.
        d.runtime = Some(berth_core::model::RuntimeInfo {
            instance_name: "old".into(),
            ..Default::default()
        });
        let out = render(&d, Some(12), &[], now);
        let line = out.lines().find(|l| l.starts_with("Runtime")).unwrap();
        assert!(line.ends_with(" old"), "{line}");
    }

    #[test]
    fn inspect_failed() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let all = crate::cmd::fixture_deployments();
        insta::assert_snapshot!(render(&all[2], None, &[], now));
    }

    #[test]
    fn inspect_lists_canary_decisions() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let all = crate::cmd::fixture_deployments();
        let d = &all[2];
        let line = |seq: i64, text: String| LogLine {
            seq,
            ts: now - chrono::Duration::seconds(60 - seq),
            deployment_id: d.id.clone(),
            project_name: d.project_name.clone(),
            service_name: d.service_name.clone(),
            environment_name: d.environment_name.clone(),
            sha: None,
            stream: berth_core::model::LogStream::Berth,
            step: None,
            text,
        };
        let w = |requests, errors| berth_core::canary::Window {
            requests,
            errors,
            latency: vec![(0.01, requests)],
        };
        let decisions = [
            line(
                1,
                berth_core::canary::decision_line(
                    25,
                    1,
                    &w(300, 0),
                    &w(0, 0),
                    &berth_core::canary::Verdict::Extend {
                        requests: 0,
                        extension: 1,
                    },
                ),
            ),
            line(
                2,
                berth_core::canary::decision_line(
                    25,
                    2,
                    &w(600, 0),
                    &w(150, 30),
                    &berth_core::canary::Verdict::Regressed("error rate".into()),
                ),
            ),
        ];
        let out = render(d, None, &decisions, now);
        let tail = out.split("\nCanary decisions\n").nth(1).expect(&out);
        let rows: Vec<&str> = tail.lines().collect();
        assert_eq!(rows.len(), 2, "{out}");
        assert!(rows[0].ends_with(
            "25% stage, window 1: candidate 0 requests, 0 errors, p95 -; baseline 300 requests, 0 errors, p95 10ms; verdict: too few requests, window extended (1 of 3)"
        ), "{out}");
        assert!(
            rows[1].contains("candidate 150 requests, 30 errors"),
            "{out}"
        );
        assert!(rows[1].ends_with("verdict: regressed: error rate"), "{out}");
        // Without decisions the section is absent.
        assert!(!render(d, None, &[], now).contains("Canary decisions"));
    }
}

//! Step 5: the release command (`release_command` in berth.toml), run once
//! in a one-off instance of the new image before the candidate starts.

use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use berth_core::config::ServiceConfig;
use berth_core::model::{Deployment, ImageInfo, LogStream, StepName, StepStatus};
use berth_core::state::Event;
use berth_runtime::{instance_name, InstanceSpec};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Deployer {
    pub(super) async fn release(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        image: &ImageInfo,
        vars: &[berth_store::ResolvedVar],
        cancel: &CancellationToken,
    ) -> Flow<()> {
        let Some(cmd) = service.release_command.clone() else {
            self.skip(d, StepName::Release, "no release_command in berth.toml")
                .await;
            return Ok(());
        };
        self.apply(d, Event::ReleaseStarted).await;
        self.start_step(d, StepName::Release);
        self.save(d).await;
        let mut spec = InstanceSpec::new(
            instance_name(&["release", &d.project_name], &d.id),
            image.reference.clone(),
        );
        spec.env = self.env_for(d, None, vars);
        spec.labels = self.labels_for(d);
        spec.labels
            .insert("dev.berth.role".into(), "release".into());
        super::candidate::isolation_label(service, &mut spec.labels);
        spec.command = Some(berth_runtime::shell_command(&cmd));
        self.logs.line(
            &d.id,
            LogStream::Berth,
            Some(StepName::Release),
            &format!("running release command: {cmd}"),
        );
        let res = tokio::select! {
            r = self.runtime.run_oneoff(&spec, Duration::from_secs(900)) => r,
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
        };
        let out = res.or_else(|e| fail(StepName::Release, e.to_string()))?;
        let mut tail = Vec::new();
        for l in &out.output {
            let stream = match l.stream {
                berth_runtime::LogStream::Stdout => LogStream::Stdout,
                berth_runtime::LogStream::Stderr => LogStream::Stderr,
            };
            self.logs
                .line_at(&d.id, l.ts, stream, Some(StepName::Release), &l.line);
            tail.push(l.line.clone());
        }
        let last: Vec<String> = tail.iter().rev().take(10).rev().cloned().collect();
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == StepName::Release) {
            let start = tail.len().saturating_sub(50);
            s.log = tail[start..].join("\n");
        }
        if !out.success() {
            return fail(
                StepName::Release,
                format!(
                    "release command `{cmd}` exited with code {}{}; last output: {}",
                    out.exit_code,
                    if out.oom_killed {
                        " (out of memory)"
                    } else {
                        ""
                    },
                    last.join(" | ")
                ),
            );
        }
        self.finish_step(
            d,
            StepName::Release,
            StepStatus::Succeeded,
            Some(&format!("release command `{cmd}` succeeded")),
        );
        self.save(d).await;
        Ok(())
    }
}

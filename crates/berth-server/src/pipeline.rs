//! The deploy algorithm, in one place, top to bottom.
//!
//! ```text
//! start ─ clone ─ analyze ─ build ─ push ─ release ─ deploy ─ health_check ─ switch ─ drain ─ finalize
//!         (skipped when the image of the copied deployment is retained)
//! ```
//!
//! 1. **clone** the repository at the ref (exact SHA recorded);
//! 2. **analyze**: read `berth.toml`, pick the service, make the build plan;
//! 3. **build** the image — or reuse it when the same tree was built before;
//! 4. **push** it to the registry when one is configured;
//! 5. **release**: run `release_command` once in a one-off container;
//! 6. **deploy**: start the candidate beside the active deployment;
//! 7. **health_check**: probe fast until healthy, or fail by the deadline;
//! 8. **switch** the route (one edge table swap) and flip the slot's active
//!    pointer in the store (one transaction, previous → superseded);
//! 9. **drain** the previous deployment's in-flight requests, stop it;
//! 10. **finalize**: active, succeeded; prune old images.
//!
//! Any failure before step 8 removes the candidate and leaves the previous
//! deployment serving, untouched.

use crate::deployer::Deployer;
use crate::ids::now;
use berth_build::{AnalyzeOptions, BaseImages, BuildLimits, BuildRequest, CloneRequest, LogSink};
use berth_core::config::{self, AppConfig, ServiceConfig, ServiceKind};
use berth_core::hosts;
use berth_core::model::{
    Deployment, ImageInfo, LogStream, RuntimeInfo, StepName, StepStatus, Trigger,
};
use berth_core::redact::Redactor;
use berth_core::state::{transition, Event};
use berth_edge::{RouteChange, RouteSpec, TargetSpec};
use berth_runtime::{InstanceSpec, Limits, RestartPolicy};
use berth_store::{Activate, Slot};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a pipeline stopped early.
pub(crate) enum Stop {
    Failed { step: StepName, message: String },
    Cancelled,
}

type Flow<T> = Result<T, Stop>;

fn fail<T>(step: StepName, message: impl Into<String>) -> Flow<T> {
    Err(Stop::Failed {
        step,
        message: message.into(),
    })
}

/// Label naming the berth instance that owns a container.
pub const INSTANCE_LABEL: &str = "dev.berth.instance";

/// Grace given to a stopping container after its requests drained.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A build that loses a cached layer to a concurrent clean-up is tried again
/// (the engine's legacy builder has no lease on the layers it reuses).
const BUILD_ATTEMPTS: u32 = 3;

impl Deployer {
    pub(crate) async fn execute(self: &Arc<Self>, mut d: Deployment, cancel: CancellationToken) {
        let vars = match self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.force_fail(&mut d, &format!("cannot read variables: {e}"))
                    .await;
                return;
            }
        };
        self.logs.set_redactor(
            &d.id,
            Redactor::new(vars.iter().filter(|v| v.secret).map(|v| v.value.as_str())),
        );
        d.started_at = Some(now());
        self.apply(&mut d, Event::Start).await;
        let result = self.pipeline(&mut d, &vars, &cancel).await;
        match result {
            Ok(()) => {}
            Err(stop) => {
                let candidate = d.runtime.take();
                if let Some(rt) = &candidate {
                    self.monitors.stop(&d.id);
                    self.edge_remove_preview(&d).await;
                    if let Err(e) = self.runtime.remove(&rt.instance_id).await {
                        tracing::warn!(deployment = d.id, error = %e, "cannot remove candidate");
                    }
                }
                match stop {
                    Stop::Failed { step, message } => {
                        let message = match self.logs.redactor(&d.id) {
                            Some(r) => r.redact(&message),
                            None => message,
                        };
                        self.finish_step(&mut d, step, StepStatus::Failed, None);
                        let msg = format!("{}: {message}", step.as_str());
                        self.logs.line(
                            &d.id,
                            LogStream::Berth,
                            Some(step),
                            &format!("failed: {msg}"),
                        );
                        d.failure_message = Some(msg);
                        self.apply(&mut d, Event::Fail).await;
                    }
                    Stop::Cancelled => {
                        for s in d.steps.iter_mut() {
                            if !s.status.is_finished() {
                                s.status = StepStatus::Cancelled;
                            }
                        }
                        d.failure_message = Some("cancelled by request".into());
                        self.logs.event(&d.id, "cancelled by request");
                        self.apply(&mut d, Event::Cancel).await;
                    }
                }
            }
        }
        if d.status != berth_core::state::Status::Succeeded {
            self.logs.forget(&d.id);
        }
        self.metrics.record_pipeline(&d);
    }

    /// Apply a state-machine event, record it, and log the stage change.
    pub(crate) async fn apply(&self, d: &mut Deployment, event: Event) {
        let before = d.promotion_stage;
        match transition(d.state(), event) {
            Ok(s) => d.set_state(s),
            Err(e) => {
                tracing::error!(deployment = d.id, error = %e, "illegal transition");
                return;
            }
        }
        if d.status.is_terminal() && d.completed_at.is_none() {
            d.completed_at = Some(now());
        }
        if d.promotion_stage != before {
            let extra = if event == Event::Drained {
                " — deployment succeeded"
            } else {
                ""
            };
            self.logs
                .event(&d.id, &format!("stage: {}{extra}", d.promotion_stage));
        }
        self.save(d).await;
    }

    pub(crate) async fn save(&self, d: &Deployment) {
        if let Err(e) = self.store.save_deployments(&[d], None).await {
            tracing::error!(deployment = d.id, error = %e, "cannot save deployment");
        }
    }

    fn start_step(&self, d: &mut Deployment, name: StepName) {
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == name) {
            s.status = StepStatus::Running;
            s.started_at = Some(now());
        }
    }

    fn finish_step(
        &self,
        d: &mut Deployment,
        name: StepName,
        status: StepStatus,
        note: Option<&str>,
    ) {
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == name) {
            let end = now();
            if s.started_at.is_none() {
                s.started_at = Some(end);
            }
            s.status = status;
            s.completed_at = Some(end);
            s.duration_ms = s.started_at.map(|t| (end - t).num_milliseconds());
            if let Some(n) = note {
                if !s.log.is_empty() {
                    s.log.push('\n');
                }
                s.log.push_str(n);
            }
        }
        if let Some(n) = note {
            self.logs.line(&d.id, LogStream::Berth, Some(name), n);
        }
    }

    async fn skip(&self, d: &mut Deployment, name: StepName, why: &str) {
        self.finish_step(d, name, StepStatus::Skipped, Some(why));
        self.save(d).await;
    }

    /// A log sink for a step: lines go to the log hub and to the step's
    /// `log` (last lines kept).
    fn sink(
        &self,
        d: &Deployment,
        step: StepName,
    ) -> (LogSink, Arc<std::sync::Mutex<Vec<String>>>) {
        let tail = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let hub = self.logs.clone();
        let id = d.id.clone();
        let t = tail.clone();
        let sink: LogSink = Arc::new(move |line: &str| {
            hub.line(&id, LogStream::Build, Some(step), line);
            let redacted = match hub.redactor(&id) {
                Some(r) => r.redact(line),
                None => line.to_string(),
            };
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            t.push(redacted);
            if t.len() > 200 {
                t.drain(..100);
            }
        });
        (sink, tail)
    }

    fn keep_tail(d: &mut Deployment, step: StepName, tail: &std::sync::Mutex<Vec<String>>) {
        let lines = tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = d.steps.iter_mut().find(|s| s.name == step) {
            let start = lines.len().saturating_sub(50);
            s.log = lines[start..].join("\n");
        }
    }

    fn check_cancel(cancel: &CancellationToken) -> Flow<()> {
        if cancel.is_cancelled() {
            Err(Stop::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn pipeline(
        self: &Arc<Self>,
        d: &mut Deployment,
        vars: &[berth_store::ResolvedVar],
        cancel: &CancellationToken,
    ) -> Flow<()> {
        let project = self
            .store
            .get_project(&d.project_name)
            .await
            .or_else(|e| fail(StepName::Clone, e.to_string()))?;

        // 1-4: the image.
        let retained = match &d.image {
            Some(img) if d.source_deployment_id.is_some() => self
                .runtime
                .image_exists(&img.reference)
                .await
                .unwrap_or(false),
            _ => false,
        };
        let service: ServiceConfig;
        if retained {
            let img = d.image.clone().unwrap_or_default();
            let why = format!("image {} retained: no build needed", img.reference);
            for s in [
                StepName::Clone,
                StepName::Analyze,
                StepName::Build,
                StepName::Push,
            ] {
                self.skip(d, s, &why).await;
            }
            service = service_from_record(d);
        } else {
            if d.source_deployment_id.is_some() && d.image.is_some() {
                self.logs.event(
                    &d.id,
                    "the image of the copied deployment was pruned: rebuilding it from source at its commit",
                );
                d.image = None;
            }
            let access = match &d.source_repo {
                // A `git push` to berth: the pushed objects on this host.
                Some(local) => berth_store::RepoAccess {
                    url: local.clone(),
                    deploy_key: None,
                },
                None => match self.store.repo_access(&project.name).await {
                    Ok(a) => a,
                    Err(e) => return fail(StepName::Clone, e.to_string()),
                },
            };
            service = self.build_image(d, &access, vars, cancel).await?;
        }
        Self::check_cancel(cancel)?;
        let image = d.image.clone().unwrap_or_default();

        // 5: release command.
        self.release(d, &service, &image, vars, cancel).await?;
        Self::check_cancel(cancel)?;

        // 6: start the candidate.
        self.apply(d, Event::CandidateStarting).await;
        self.start_step(d, StepName::Deploy);
        let spec = self.instance_spec(d, &service, &image, vars);
        let instance = match self.runtime.start(&spec).await {
            Ok(i) => i,
            Err(e) => return fail(StepName::Deploy, format!("cannot start container: {e}")),
        };
        d.runtime = Some(RuntimeInfo {
            instance_id: instance.id.clone(),
            instance_name: instance.name.clone(),
            address: instance.addr.map(|a| a.to_string()),
        });
        self.monitors.follow_logs(self, &d.id, &instance.id, None);
        self.finish_step(
            d,
            StepName::Deploy,
            StepStatus::Succeeded,
            Some(&format!(
                "container {} started from {}",
                instance.name, image.reference
            )),
        );
        self.apply(d, Event::CandidateStarted).await;

        // 7: readiness.
        self.start_step(d, StepName::HealthCheck);
        self.save(d).await;
        let ready = self.wait_ready(d, &service, cancel).await?;
        self.finish_step(
            d,
            StepName::HealthCheck,
            StepStatus::Succeeded,
            Some(&ready),
        );
        self.apply(d, Event::Ready).await;
        Self::check_cancel(cancel)?;

        // 8: a canary rollout when berth.toml asks for one.
        self.canary(d, &service, cancel).await?;

        // 8-10: switch, drain, finalize.
        self.promote_candidate(d, &service).await;
        Ok(())
    }

    /// Hash of the inputs that decide an image besides the commit.
    fn inputs_key(&self, service: &str, build_args: &[(String, String)]) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(format!("{service}\0{:?}\0", self.base_images()).as_bytes());
        let mut args = build_args.to_vec();
        args.sort();
        for (k, v) in args {
            h.update(format!("{k}={v}\0").as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The no-clone path: when the ref resolves (`git ls-remote`) to a commit
    /// this service already built with the same inputs, and that image still
    /// exists, reuse it — commit, plan and berth.toml included.
    async fn reuse_built_image(
        &self,
        d: &mut Deployment,
        repo: &str,
        ssh_key: Option<&Path>,
        inputs: &str,
    ) -> Option<ServiceConfig> {
        let (sha, branch) =
            berth_build::resolve_ref(repo, &d.reference, ssh_key, Duration::from_secs(20)).await?;
        let past = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(d.project_name.clone()),
                service: Some(d.service_name.clone()),
                limit: Some(200),
                ..Default::default()
            })
            .await
            .ok()?;
        let prev = past.into_iter().find(|p| {
            p.id != d.id
                && p.commit.as_ref().is_some_and(|c| c.sha == sha)
                && p.image.is_some()
                && p.build.inputs.as_deref() == Some(inputs)
                && p.build.config.is_some()
        })?;
        let image = prev.image.clone()?;
        if !self
            .runtime
            .image_exists(&image.reference)
            .await
            .unwrap_or(false)
        {
            return None;
        }
        let service = parse_app_config(prev.build.config.as_deref().unwrap_or(""))
            .ok()?
            .service(&d.service_name)
            .cloned()?;
        let mut commit = prev.commit.clone()?;
        commit.branch = branch.or(commit.branch);
        d.commit = Some(commit);
        d.image = Some(image.clone());
        d.build = berth_core::model::BuildInfo {
            cache_hit: true,
            ..prev.build.clone()
        };
        if service.kind == ServiceKind::Worker {
            d.route_url = None;
            d.preview_url = None;
        }
        let short = &sha[..12];
        self.finish_step(
            d,
            StepName::Clone,
            StepStatus::Succeeded,
            Some(&format!(
                "resolved {} to {short}; an image of this commit exists, no clone needed",
                d.reference
            )),
        );
        self.finish_step(
            d,
            StepName::Analyze,
            StepStatus::Skipped,
            Some(&format!(
                "same commit and inputs as deployment {}: its plan is reused",
                prev.id
            )),
        );
        self.finish_step(
            d,
            StepName::Build,
            StepStatus::Succeeded,
            Some(&format!(
                "cache hit: image {} was built from this commit; build skipped",
                image.reference
            )),
        );
        let push_note = if self.cfg.registry.is_some() {
            "the image was pushed when it was built"
        } else {
            "no registry configured: the engine's image store keeps the image"
        };
        self.finish_step(d, StepName::Push, StepStatus::Skipped, Some(push_note));
        self.save(d).await;
        Some(service)
    }

    async fn build_image(
        self: &Arc<Self>,
        d: &mut Deployment,
        access: &berth_store::RepoAccess,
        vars: &[berth_store::ResolvedVar],
        cancel: &CancellationToken,
    ) -> Flow<ServiceConfig> {
        let repo = access.url.as_str();
        let Some(docker) = self.docker.clone() else {
            return fail(StepName::Build, "the Docker engine is not reachable");
        };
        // Build arguments: plain variables flagged for builds, and those
        // with a public prefix (meant for browser bundles). A secret is
        // never one: `docker history` shows arguments.
        let build_args: Vec<(String, String)> = vars
            .iter()
            .filter(|v| !v.secret && (v.build || berth_build::is_public(&v.key)))
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        // Secrets flagged for builds reach them only as BuildKit secrets
        // (`RUN --mount=type=secret,id=KEY`). Their ids are part of the
        // build's identity, their values are not: a rotated token does not
        // rebuild (as with BuildKit's own cache).
        let build_secrets: Vec<(String, String)> = vars
            .iter()
            .filter(|v| v.secret && v.build)
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        let mut identity = build_args.clone();
        identity.extend(
            build_secrets
                .iter()
                .map(|(k, _)| (format!("secret:{k}"), String::new())),
        );
        let inputs = self.inputs_key(&d.service_name, &identity);
        d.build.inputs = Some(inputs.clone());

        // Clone.
        self.start_step(d, StepName::Clone);
        self.save(d).await;
        // The deploy key, for ssh: a private file only while fetching.
        let key_file = match &access.deploy_key {
            Some(key) => match PrivateFile::write(&self.cfg.data_dir.join("keys"), &d.id, key) {
                Ok(f) => Some(f),
                Err(e) => {
                    return fail(StepName::Clone, format!("cannot write the deploy key: {e}"))
                }
            },
            None => None,
        };
        let ssh_key = key_file.as_ref().map(|f| f.0.as_path());
        if let Some(service) = self.reuse_built_image(d, repo, ssh_key, &inputs).await {
            return Ok(service);
        }
        let work = self.cfg.data_dir.join("work").join(&d.id);
        let _ = std::fs::remove_dir_all(&work);
        let _cleanup = RemoveOnDrop(work.clone());
        let (sink, tail) = self.sink(d, StepName::Clone);
        let req = CloneRequest {
            repo: repo.to_string(),
            reference: d.reference.clone(),
            dest: work.clone(),
            ssh_key: ssh_key.map(Path::to_path_buf),
            timeout: Duration::from_secs(300),
        };
        let checkout = tokio::select! {
            r = berth_build::clone(&req, sink) => r,
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
        };
        Self::keep_tail(d, StepName::Clone, &tail);
        let checkout = checkout.or_else(|e| fail(StepName::Clone, e.to_string()))?;
        d.commit = Some(berth_core::model::Commit {
            sha: checkout.commit.sha.clone(),
            branch: checkout.commit.branch.clone(),
            message: checkout.commit.message.clone(),
            author: checkout.commit.author.clone(),
        });
        let note = format!(
            "checked out {} ({})",
            &checkout.commit.sha[..checkout.commit.sha.len().min(12)],
            checkout.commit.message.lines().next().unwrap_or("")
        );
        self.finish_step(d, StepName::Clone, StepStatus::Succeeded, Some(&note));
        self.save(d).await;
        Self::check_cancel(cancel)?;

        // Analyze.
        self.start_step(d, StepName::Analyze);
        let toml_path = checkout.dir.join("berth.toml");
        let toml_text = std::fs::read_to_string(&toml_path).unwrap_or_default();
        let app = parse_app_config(&toml_text).or_else(|e| fail(StepName::Analyze, e))?;
        d.build.config = Some(toml_text);
        if matches!(d.trigger, Trigger::Webhook | Trigger::GitPush) {
            self.deploy_new_services(d, &app).await;
        }
        let Some(service) = app.service(&d.service_name).cloned() else {
            let known: Vec<&str> = app.services.keys().map(String::as_str).collect();
            return fail(
                StepName::Analyze,
                format!(
                    "berth.toml has no service {:?} (services: {})",
                    d.service_name,
                    known.join(", ")
                ),
            );
        };
        if service.kind == ServiceKind::Worker {
            d.route_url = None;
            d.preview_url = None;
        }
        let opts = AnalyzeOptions {
            base_images: self.base_images(),
            // Generated Dockerfiles get cache mounts on the BuildKit path.
            buildkit: !build_secrets.is_empty(),
        };
        let dir = checkout.dir.clone();
        let svc = service.clone();
        let plan = tokio::task::spawn_blocking(move || berth_build::analyze(&dir, &svc, &opts))
            .await
            .or_else(|e| fail(StepName::Analyze, e.to_string()))?
            .or_else(|e| fail(StepName::Analyze, e.to_string()))?;
        d.build.provider = Some(plan.provider.clone());
        d.build.framework = plan.framework.clone();
        d.build.runtime = plan.runtime.clone();
        d.build.port = Some(plan.port);
        d.build.start_command = plan.start_command.clone().or(service.start_command.clone());
        let note = format!(
            "{} detected{}{}, port {}{}",
            plan.provider,
            plan.framework
                .as_deref()
                .map(|f| format!(", framework {f}"))
                .unwrap_or_default(),
            plan.runtime
                .as_deref()
                .map(|r| format!(", runtime {r}"))
                .unwrap_or_default(),
            plan.port,
            if plan.generated {
                ", Dockerfile generated"
            } else {
                ""
            }
        );
        self.finish_step(d, StepName::Analyze, StepStatus::Succeeded, Some(&note));
        self.save(d).await;
        Self::check_cancel(cancel)?;

        // Build (or reuse).
        self.start_step(d, StepName::Build);
        self.save(d).await;
        let key = berth_build::cache_key(&checkout.tree, &plan, &identity);
        let tag = berth_build::image_tag(&d.project_name, &d.service_name, &key);
        if self.runtime.image_exists(&tag).await.unwrap_or(false) {
            d.build.cache_hit = true;
            d.image = Some(ImageInfo {
                reference: tag.clone(),
                digest: image_id(&docker, &tag).await,
            });
            let note =
                format!("cache hit: image {tag} was built from this tree before; build skipped");
            self.finish_step(d, StepName::Build, StepStatus::Succeeded, Some(&note));
        } else {
            let _permit = tokio::select! {
                p = self.build_slots.clone().acquire_owned() => p.ok(),
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(self.cfg.queue_timeout) => {
                    return fail(StepName::Build, format!(
                        "no build slot became free within {}s (--build-concurrency {})",
                        self.cfg.queue_timeout.as_secs(),
                        self.cfg.build_concurrency
                    ));
                }
            };
            let (sink, tail) = self.sink(d, StepName::Build);
            // No image labels: the legacy builder turns each into a build
            // step of its own (~0.1 s each); the tag names the image.
            let labels = BTreeMap::new();
            let req = BuildRequest {
                context_dir: checkout.dir.clone(),
                plan: plan.clone(),
                tag: tag.clone(),
                limits: BuildLimits {
                    memory_bytes: self.cfg.build_memory,
                    cpus: self.cfg.build_cpus,
                    timeout: self.cfg.build_timeout,
                },
                build_args,
                labels,
                secrets: build_secrets,
            };
            let started = Instant::now();
            let mut attempt = 1;
            let res = loop {
                let res = {
                    let _shared = self.image_gate.read().await;
                    berth_build::build(&docker, &req, sink.clone(), cancel.clone()).await
                };
                match res {
                    Err(e) if e.is_lost_cache_layer() && attempt < BUILD_ATTEMPTS => {
                        attempt += 1;
                        sink(&format!(
                            "a cached layer was removed from the engine during the build ({e}); building again (attempt {attempt} of {BUILD_ATTEMPTS})"
                        ));
                    }
                    res => break res,
                }
            };
            Self::keep_tail(d, StepName::Build, &tail);
            match res {
                Ok(img) => {
                    d.image = Some(ImageInfo {
                        reference: tag.clone(),
                        digest: Some(img.id.clone()),
                    });
                    let note = format!(
                        "built {tag} ({}) in {:.1}s",
                        short_id(&img.id),
                        started.elapsed().as_secs_f64()
                    );
                    self.finish_step(d, StepName::Build, StepStatus::Succeeded, Some(&note));
                }
                Err(berth_build::BuildError::Cancelled) => return Err(Stop::Cancelled),
                Err(e) => {
                    let hint = missing_secret_hint(&plan.dockerfile, &req.secrets);
                    return fail(StepName::Build, format!("{e}{hint}"));
                }
            }
        }
        self.save(d).await;
        self.record_manifest(d);
        Self::check_cancel(cancel)?;

        // Push.
        match &self.cfg.registry {
            Some(registry) => {
                self.start_step(d, StepName::Push);
                self.save(d).await;
                let (sink, tail) = self.sink(d, StepName::Push);
                let res = berth_build::push(&docker, &tag, registry, sink).await;
                Self::keep_tail(d, StepName::Push, &tail);
                match res {
                    Ok(p) => {
                        let note = format!("pushed {} ({})", p.reference, p.digest);
                        d.image = Some(ImageInfo {
                            reference: tag.clone(),
                            digest: Some(p.digest.clone()),
                        });
                        self.finish_step(d, StepName::Push, StepStatus::Succeeded, Some(&note));
                    }
                    Err(e) => return fail(StepName::Push, e.to_string()),
                }
                self.save(d).await;
            }
            None => {
                self.skip(
                    d,
                    StepName::Push,
                    "no registry configured: the engine's image store keeps the image",
                )
                .await
            }
        }
        Ok(service)
    }

    /// Record the build output manifest (004) of the deployment's image in
    /// the background, once per image.
    fn record_manifest(self: &Arc<Self>, d: &Deployment) {
        let (Some(docker), Some(image)) = (self.docker.clone(), d.image.clone()) else {
            return;
        };
        let this = self.clone();
        let id = d.id.clone();
        tokio::spawn(async move {
            if let Ok(Some(_)) = this.store.get_manifest(&image.reference).await {
                return;
            }
            let root = docker
                .inspect_image(&image.reference)
                .await
                .ok()
                .and_then(|i| i.config)
                .and_then(|c| c.working_dir)
                .filter(|w| !w.is_empty() && w != "/");
            let opts = berth_build::ManifestOptions {
                root,
                max_files: 5000,
            };
            match berth_build::image_manifest(&docker, &image.reference, &opts).await {
                Ok(m) => {
                    let entries: Vec<berth_core::model::ManifestEntry> = m
                        .entries
                        .iter()
                        .map(|e| berth_core::model::ManifestEntry {
                            path: e.path.clone(),
                            size: e.size,
                            sha256: e.sha256.clone(),
                        })
                        .collect();
                    let note = match m.note() {
                        Some(n) => format!("manifest recorded: {} files ({n})", entries.len()),
                        None => format!("manifest recorded: {} files", entries.len()),
                    };
                    if let Err(e) = this
                        .store
                        .put_manifest(&image.reference, &entries, now())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot store manifest");
                    } else {
                        this.logs
                            .line(&id, LogStream::Berth, Some(StepName::Build), &note);
                    }
                }
                Err(e) => {
                    tracing::warn!(image = image.reference, error = %e, "cannot compute manifest")
                }
            }
        });
    }

    fn base_images(&self) -> BaseImages {
        let mut b = BaseImages::default();
        if let Some(n) = &self.cfg.node_image {
            b.node = n.clone();
        }
        if let Some(p) = &self.cfg.python_image {
            b.python = p.clone();
        }
        b
    }

    fn env_for(
        &self,
        d: &Deployment,
        port: Option<u16>,
        vars: &[berth_store::ResolvedVar],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vars
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        if let Some(p) = port {
            env.push(("PORT".into(), p.to_string()));
        }
        env.push(("BERTH_DEPLOYMENT_ID".into(), d.id.clone()));
        env.push((
            "BERTH_GIT_SHA".into(),
            d.commit.as_ref().map(|c| c.sha.clone()).unwrap_or_default(),
        ));
        env.push(("BERTH_SERVICE".into(), d.service_name.clone()));
        env.push(("BERTH_ENVIRONMENT".into(), d.environment_name.clone()));
        env.push(("BERTH_PROJECT".into(), d.project_name.clone()));
        env
    }

    fn labels_for(&self, d: &Deployment) -> BTreeMap<String, String> {
        let mut l = berth_runtime::berth_labels(
            &d.project_name,
            &d.service_name,
            &d.environment_name,
            &d.id,
        );
        l.insert(INSTANCE_LABEL.into(), self.instance.clone());
        l
    }

    pub(crate) fn instance_spec(
        &self,
        d: &Deployment,
        service: &ServiceConfig,
        image: &ImageInfo,
        vars: &[berth_store::ResolvedVar],
    ) -> InstanceSpec {
        let port = (service.kind == ServiceKind::Web).then_some(service.port);
        let mut spec = InstanceSpec::new(
            format!(
                "berth-{}-{}-{}-{}",
                d.project_name, d.service_name, d.environment_name, d.id
            ),
            image.reference.clone(),
        );
        spec.env = self.env_for(d, port, vars);
        spec.labels = self.labels_for(d);
        spec.port = port;
        spec.command = service
            .start_command
            .as_deref()
            .map(berth_runtime::shell_command);
        spec.limits = Limits {
            memory_bytes: service.resources.memory_bytes,
            nano_cpus: service.resources.cpus.map(|c| (c * 1e9) as i64),
            pids: Some(512),
        };
        spec.restart = RestartPolicy::UnlessStopped;
        spec
    }

    async fn release(
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
            format!("berth-release-{}-{}", d.project_name, d.id),
            image.reference.clone(),
        );
        spec.env = self.env_for(d, None, vars);
        spec.labels = self.labels_for(d);
        spec.labels
            .insert("dev.berth.role".into(), "release".into());
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

    /// Probe the candidate on a fast schedule until it is ready, or fail
    /// naming the cause (exit code, crash, last probe result, deadline).
    async fn wait_ready(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        cancel: &CancellationToken,
    ) -> Flow<String> {
        let rt = d.runtime.clone().unwrap_or_default();
        let readiness = &service.readiness;
        let deadline = readiness.deadline;
        let started = Instant::now();
        let schedule = berth_runtime::ProbeSchedule::default();
        let mut last_probe = String::from("no probe answered yet");
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let state = self.runtime.inspect(&rt.instance_id).await;
            match state {
                Ok(st) => {
                    if let Some(code) = st.exit_code() {
                        let oom = if st.oom_killed {
                            " (killed: out of memory)"
                        } else {
                            ""
                        };
                        return fail(
                            StepName::HealthCheck,
                            format!(
                                "container exited with code {code}{oom} before it became healthy; last output: {}",
                                self.last_output(&d.id).await
                            ),
                        );
                    }
                    if st.restart_count > 0 {
                        return fail(
                            StepName::HealthCheck,
                            format!(
                                "container crashed and was restarted {} time(s) before it became healthy; last output: {}",
                                st.restart_count,
                                self.last_output(&d.id).await
                            ),
                        );
                    }
                    if let Some(err) = st.error.clone().filter(|e| !e.is_empty()) {
                        return fail(StepName::HealthCheck, format!("container failed: {err}"));
                    }
                    if st.is_running() {
                        match service.kind {
                            ServiceKind::Worker => {
                                if started.elapsed() >= Duration::from_secs(2).min(deadline) {
                                    return Ok("worker is running".into());
                                }
                            }
                            ServiceKind::Web => {
                                let addr = st
                                    .addr
                                    .or_else(|| rt.address.as_deref().and_then(|a| a.parse().ok()));
                                if let Some(addr) = addr {
                                    if d.runtime.as_ref().and_then(|r| r.address.clone())
                                        != Some(addr.to_string())
                                    {
                                        if let Some(r) = d.runtime.as_mut() {
                                            r.address = Some(addr.to_string());
                                        }
                                    }
                                    let res = berth_runtime::probe(
                                        addr,
                                        &readiness.path,
                                        readiness.timeout,
                                    )
                                    .await;
                                    last_probe = res.describe(&readiness.path);
                                    if res.is_healthy() {
                                        let msg = format!(
                                            "{last_probe} after {:.1}s",
                                            started.elapsed().as_secs_f64()
                                        );
                                        self.logs.line(
                                            &d.id,
                                            LogStream::Berth,
                                            Some(StepName::HealthCheck),
                                            &last_probe,
                                        );
                                        return Ok(msg);
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() => {
                    return fail(
                        StepName::HealthCheck,
                        "container disappeared before it became healthy",
                    );
                }
                Err(e) => last_probe = format!("cannot inspect container: {e}"),
            }
            if started.elapsed() >= deadline {
                let port_hint = if last_probe.contains("refused") || last_probe.contains("reset") {
                    format!(
                        " (is the app listening on 0.0.0.0:{}? berth sets PORT={})",
                        service.port, service.port
                    )
                } else {
                    String::new()
                };
                return fail(
                    StepName::HealthCheck,
                    format!(
                        "not healthy within the {}s deadline; last probe: {last_probe}{port_hint}",
                        deadline.as_secs()
                    ),
                );
            }
            tokio::time::sleep(schedule.interval_at(started.elapsed())).await;
        }
    }

    async fn last_output(&self, id: &str) -> String {
        // Give the log follower a moment to store the last lines.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = self
            .store
            .read_logs(&berth_store::LogQuery {
                deployment_id: Some(id.to_string()),
                streams: vec![LogStream::Stdout, LogStream::Stderr],
                limit: Some(5),
                tail: true,
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        if lines.is_empty() {
            "(none)".into()
        } else {
            lines
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        }
    }

    /// A staged canary (004): the candidate gets each stage's share of the
    /// service's traffic for an observation window and is judged against
    /// the previous deployment (`berth_core::canary::judge`); a regression
    /// puts all traffic back on the previous deployment and fails the
    /// candidate. Runs only with `[services.<name>.canary]` in berth.toml,
    /// for web services that replace a running deployment, never for a
    /// rollback or promote (those are instant).
    async fn canary(
        &self,
        d: &mut Deployment,
        service: &ServiceConfig,
        cancel: &CancellationToken,
    ) -> Flow<()> {
        let berth_core::config::Canary::Staged(cfg) = &service.canary else {
            return Ok(());
        };
        if service.kind != ServiceKind::Web
            || matches!(d.trigger, Trigger::Rollback | Trigger::Promote)
        {
            return Ok(());
        }
        let prev = self
            .store
            .active_deployment(&Slot::of(d))
            .await
            .ok()
            .flatten();
        let (Some(prev), Some(cand_addr)) =
            (prev, d.runtime.as_ref().and_then(|r| r.address.clone()))
        else {
            self.logs.event(
                &d.id,
                "canary skipped: no previous deployment to compare with",
            );
            return Ok(());
        };
        let Some(prev_addr) = prev.runtime.as_ref().and_then(|r| r.address.clone()) else {
            self.logs.event(
                &d.id,
                "canary skipped: the previous deployment has no running container",
            );
            return Ok(());
        };
        self.apply(d, Event::CanaryStarted).await;
        let slot_hosts = self.slot_hosts(d).await;
        let split_one = |host: &String, w: u32| {
            let mut targets = vec![TargetSpec {
                id: d.id.clone(),
                upstream: cand_addr.clone(),
                weight: w,
            }];
            if w < 100 {
                targets.push(TargetSpec {
                    id: prev.id.clone(),
                    upstream: prev_addr.clone(),
                    weight: 100 - w,
                });
            }
            RouteChange::Upsert {
                host: host.clone(),
                route: RouteSpec { targets },
            }
        };
        let split =
            |w: u32| -> Vec<RouteChange> { slot_hosts.iter().map(|h| split_one(h, w)).collect() };
        let restore = || -> Vec<RouteChange> {
            slot_hosts
                .iter()
                .map(|h| RouteChange::Upsert {
                    host: h.clone(),
                    route: RouteSpec {
                        targets: vec![TargetSpec {
                            id: prev.id.clone(),
                            upstream: prev_addr.clone(),
                            weight: 100,
                        }],
                    },
                })
                .collect()
        };
        for &stage in cfg.stages.iter().filter(|w| **w < 100) {
            let w = u32::from(stage);
            if let Err(e) = self.edge.apply(split(w)) {
                return fail(
                    StepName::HealthCheck,
                    format!("canary: route change refused: {e}"),
                );
            }
            d.canary_weight = Some(w);
            self.save(d).await;
            self.logs.event(
                &d.id,
                &format!(
                    "canary: {w}% of traffic to this deployment for {}s",
                    cfg.observation_window.as_secs()
                ),
            );
            let (b0, c0) = (self.window_of(&prev.id), self.window_of(&d.id));
            let interrupted = tokio::select! {
                _ = tokio::time::sleep(cfg.observation_window) => None,
                _ = cancel.cancelled() => Some(Stop::Cancelled),
            };
            let verdict = match interrupted {
                Some(stop) => Err(stop),
                None => {
                    let alive = self
                        .runtime
                        .inspect(
                            &d.runtime
                                .as_ref()
                                .map(|r| r.instance_id.clone())
                                .unwrap_or_default(),
                        )
                        .await
                        .map(|st| st.is_running())
                        .unwrap_or(false);
                    if !alive {
                        Ok(berth_core::canary::Verdict::Regressed(
                            "the container stopped".into(),
                        ))
                    } else {
                        let b = self.window_of(&prev.id).since(&b0);
                        let c = self.window_of(&d.id).since(&c0);
                        Ok(berth_core::canary::judge(&b, &c, cfg))
                    }
                }
            };
            match verdict {
                Ok(berth_core::canary::Verdict::Healthy) => {
                    self.logs
                        .event(&d.id, &format!("canary: {w}% stage healthy"));
                }
                Ok(berth_core::canary::Verdict::NotEnoughTraffic { requests }) => {
                    self.logs.event(
                        &d.id,
                        &format!("canary: {w}% stage saw {requests} request(s), too few to judge; continuing"),
                    );
                }
                other => {
                    let _ = self.edge.apply(restore());
                    d.canary_weight = None;
                    let report = self.edge.drain(&d.id, self.cfg.drain_timeout).await;
                    self.logs.event(
                        &d.id,
                        &format!("canary: traffic back on {}; drained: {report:?}", prev.id),
                    );
                    return match other {
                        Ok(berth_core::canary::Verdict::Regressed(why)) => fail(
                            StepName::HealthCheck,
                            format!("canary at {w}% regressed: {why}; rolled back automatically, the previous deployment serves"),
                        ),
                        Err(stop) => Err(stop),
                        Ok(_) => Ok(()),
                    };
                }
            }
        }
        d.canary_weight = Some(100);
        Ok(())
    }

    fn window_of(&self, target: &str) -> berth_core::canary::Window {
        let s = self.edge.target_stats(target);
        berth_core::canary::Window {
            requests: s.requests,
            errors: s.errors,
            latency: s.latency,
        }
    }

    /// Steps 8-10: switch the route, drain the previous deployment,
    /// finalize. Nothing here can fail the candidate: it is healthy.
    pub(crate) async fn promote_candidate(
        self: &Arc<Self>,
        d: &mut Deployment,
        service: &ServiceConfig,
    ) {
        let slot = Slot::of(d);
        let _switch = self.switch_lock.lock().await;
        let previous = self.store.active_deployment(&slot).await.ok().flatten();
        // The route: one swap of the edge's table.
        if service.kind == ServiceKind::Web {
            if let Some(addr) = d.runtime.as_ref().and_then(|r| r.address.clone()) {
                let target = TargetSpec {
                    id: d.id.clone(),
                    upstream: addr,
                    weight: 100,
                };
                let mut changes: Vec<RouteChange> = self
                    .slot_hosts(d)
                    .await
                    .into_iter()
                    .map(|host| RouteChange::Upsert {
                        host,
                        route: RouteSpec {
                            targets: vec![target.clone()],
                        },
                    })
                    .collect();
                changes.extend([RouteChange::Upsert {
                    host: self.preview_host(d),
                    route: RouteSpec {
                        targets: vec![target],
                    },
                }]);
                if let Some(p) = &previous {
                    changes.push(RouteChange::Remove {
                        host: self.preview_host(p),
                    });
                }
                if let Err(e) = self.edge.apply(changes) {
                    tracing::error!(deployment = d.id, error = %e, "route change refused");
                    self.logs
                        .event(&d.id, &format!("route change refused: {e}"));
                }
            }
        }
        // The record: one transaction flips the slot's active pointer.
        let mut prev = previous.clone();
        if let Ok(s) = transition(d.state(), Event::RouteSwitched) {
            d.set_state(s);
        }
        self.logs.event(&d.id, "stage: draining_previous");
        if let Some(p) = prev.as_mut() {
            let ev = if matches!(d.trigger, Trigger::Rollback | Trigger::Promote) {
                Event::RollBack
            } else {
                Event::Supersede
            };
            if let Ok(s) = transition(p.state(), ev) {
                p.set_state(s);
            }
            self.logs.event(
                &p.id,
                &format!(
                    "stage: {} — replaced by deployment {}",
                    p.promotion_stage, d.id
                ),
            );
        }
        let mut batch: Vec<&Deployment> = vec![d];
        if let Some(p) = prev.as_ref() {
            batch.push(p);
        }
        if let Err(e) = self
            .store
            .save_deployments(
                &batch,
                Some(Activate {
                    slot: slot.clone(),
                    deployment_id: Some(d.id.clone()),
                }),
            )
            .await
        {
            tracing::error!(deployment = d.id, error = %e, "cannot record the switch");
        }
        drop(_switch);
        self.monitors.watch(self, d, service);

        // Drain the previous deployment, then stop it.
        if let Some(p) = prev.as_mut() {
            self.retire(p).await;
        }

        // Finalize.
        self.start_step(d, StepName::Finalize);
        let pruned = self.prune_images(&slot).await;
        self.finish_step(d, StepName::Finalize, StepStatus::Succeeded, Some(&pruned));
        self.apply(d, Event::Drained).await;
    }

    /// Drain a replaced deployment's in-flight requests and stop its container.
    pub(crate) async fn retire(&self, p: &mut Deployment) {
        self.monitors.stop(&p.id);
        let report = self.edge.drain(&p.id, self.cfg.drain_timeout).await;
        self.logs.event(&p.id, &format!("drained: {report:?}"));
        if let Some(rt) = p.runtime.take() {
            if let Err(e) = self.runtime.stop(&rt.instance_id, STOP_GRACE).await {
                tracing::warn!(deployment = p.id, error = %e, "cannot stop previous container");
            }
            if let Err(e) = self.runtime.remove(&rt.instance_id).await {
                tracing::warn!(deployment = p.id, error = %e, "cannot remove previous container");
            }
            self.logs
                .event(&p.id, &format!("container {} stopped", rt.instance_name));
        }
        self.save(p).await;
    }

    /// Every hostname that follows a slot's active deployment: its route
    /// hostname and its verified custom domains.
    pub(crate) async fn slot_hosts(&self, d: &Deployment) -> Vec<String> {
        let domains = self
            .store
            .list_domains(Some(&d.project_name))
            .await
            .unwrap_or_default();
        self.slot_hosts_in(d, &domains)
    }

    /// [`Deployer::slot_hosts`] over an already-read list of domains.
    pub(crate) fn slot_hosts_in(
        &self,
        d: &Deployment,
        domains: &[berth_core::model::Domain],
    ) -> Vec<String> {
        let mut hosts = vec![self.route_host(d)];
        hosts.extend(
            domains
                .iter()
                .filter(|x| {
                    x.verified
                        && x.project_name == d.project_name
                        && x.service_name == d.service_name
                        && x.environment_name == d.environment_name
                })
                .map(|x| x.hostname.clone()),
        );
        hosts
    }

    pub(crate) fn route_host(&self, d: &Deployment) -> String {
        hosts::route_host(
            self.cfg.base_domain(),
            &d.project_name,
            &d.service_name,
            &d.environment_name,
        )
    }

    pub(crate) fn preview_host(&self, d: &Deployment) -> String {
        hosts::preview_host(
            self.cfg.base_domain(),
            &d.project_name,
            &d.service_name,
            &d.environment_name,
            &d.id,
        )
    }

    async fn edge_remove_preview(&self, d: &Deployment) {
        let _ = self.edge.apply(vec![RouteChange::Remove {
            host: self.preview_host(d),
        }]);
    }

    /// A push deploys the services its environment ran before; a service
    /// that berth.toml at the pushed commit adds (or the first services of
    /// a repository whose berth.toml has no `web`) is found here, by the
    /// first of that push's deployments to read the file, and deployed at
    /// the same commit.
    async fn deploy_new_services(self: &Arc<Self>, d: &Deployment, app: &AppConfig) {
        let Some(sha) = d.commit.as_ref().map(|c| c.sha.clone()) else {
            return;
        };
        let _one_at_a_time = self.fan_out_lock.lock().await;
        let Ok(known) = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(d.project_name.clone()),
                environment: Some(d.environment_name.clone()),
                limit: Some(1000),
                ..Default::default()
            })
            .await
        else {
            return;
        };
        for name in app.services.keys() {
            if *name == d.service_name || known.iter().any(|k| k.service_name == *name) {
                continue;
            }
            let req = crate::deployer::NewDeployment {
                project: d.project_name.clone(),
                service: Some(name.clone()),
                environment: Some(d.environment_name.clone()),
                reference: Some(sha.clone()),
                trigger: d.trigger,
                source: None,
                source_repo: d.source_repo.clone(),
            };
            // Boxed: this future is part of the pipeline that `create` spawns.
            let created: std::pin::Pin<
                Box<dyn std::future::Future<Output = crate::error::ApiResult<Deployment>> + Send>,
            > = Box::pin({
                let this = self.clone();
                async move { this.create(req).await }
            });
            match created.await {
                Ok(n) => self.logs.event(
                    &d.id,
                    &format!(
                        "berth.toml at {} adds service {name}: deploying it too ({})",
                        &sha[..sha.len().min(12)],
                        n.id
                    ),
                ),
                Err(e) => self.logs.event(
                    &d.id,
                    &format!(
                        "berth.toml adds service {name}, but it cannot be deployed: {}",
                        e.message
                    ),
                ),
            }
        }
    }

    /// Retention: keep the images of the last N deployments of each slot
    /// of the project's existing environments (N = the project's
    /// `retain_images`; a torn-down environment keeps none), always the
    /// active deployments' and those of unfinished ones; remove only images
    /// berth built (`berth/…`) that no kept deployment uses. Returns a note
    /// for the finalize step.
    pub(crate) async fn prune_images(&self, slot: &Slot) -> String {
        match self.prune_project_images(&slot.project).await {
            Ok(removed) if removed.is_empty() => "retention: no image to remove".into(),
            Ok(removed) => format!(
                "retention: removed {} image(s): {}",
                removed.len(),
                removed.join(", ")
            ),
            Err(e) => format!("retention: skipped ({e})"),
        }
    }

    pub(crate) async fn prune_project_images(&self, project: &str) -> anyhow::Result<Vec<String>> {
        let p = self.store.get_project(project).await?;
        let all = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(project.to_string()),
                ..Default::default()
            })
            .await?;
        // A torn-down environment keeps its history, not its images.
        let envs: std::collections::HashSet<String> = self
            .store
            .list_environments(project)
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let live: Vec<Deployment> = all
            .iter()
            .filter(|d| envs.contains(&d.environment_name))
            .cloned()
            .collect();
        let keep = images_to_keep(&live, p.retain_images as usize);
        let mut candidates: Vec<String> = all
            .iter()
            .filter_map(|d| d.image.as_ref().map(|i| i.reference.clone()))
            .filter(|r| r.starts_with("berth/") && !keep.contains(r))
            .collect();
        candidates.sort();
        candidates.dedup();
        let mut removed = Vec::new();
        let _exclusive = self.image_gate.write().await;
        for image in candidates {
            match self.runtime.image_exists(&image).await {
                Ok(true) => {}
                _ => continue,
            }
            match self.runtime.remove_image(&image).await {
                Ok(()) => removed.push(image),
                Err(e) => tracing::info!(image, error = %e, "image kept"),
            }
        }
        Ok(removed)
    }
}

/// The image refs retention keeps: per slot, the images of the newest
/// `n` deployments that ran (succeeded), plus every active deployment's and
/// every unfinished deployment's image.
pub(crate) fn images_to_keep(all: &[Deployment], n: usize) -> std::collections::HashSet<String> {
    use std::collections::{HashMap, HashSet};
    let mut keep = HashSet::new();
    let mut per_slot: HashMap<Slot, Vec<&Deployment>> = HashMap::new();
    for d in all {
        let Some(img) = &d.image else { continue };
        if d.is_active || !d.status.is_terminal() {
            keep.insert(img.reference.clone());
        }
        if d.status == berth_core::state::Status::Succeeded {
            per_slot.entry(Slot::of(d)).or_default().push(d);
        }
    }
    for (_, mut ds) in per_slot {
        ds.sort_by_key(|d| std::cmp::Reverse(d.completed_at));
        let mut distinct = Vec::new();
        for d in ds {
            let r = d
                .image
                .as_ref()
                .map(|i| i.reference.clone())
                .unwrap_or_default();
            if !distinct.contains(&r) {
                distinct.push(r);
            }
            if distinct.len() >= n.max(1) {
                break;
            }
        }
        keep.extend(distinct);
    }
    keep
}

struct RemoveOnDrop(std::path::PathBuf);

/// When a build that mounts secrets failed without them, say how to give
/// them (secrets reach builds only when flagged).
fn missing_secret_hint(dockerfile: &str, given: &[(String, String)]) -> String {
    let missing: Vec<&str> = dockerfile
        .split("--mount=")
        .skip(1)
        .filter(|m| m.starts_with("type=secret"))
        .filter_map(|m| {
            let opts = m.split_whitespace().next().unwrap_or("");
            opts.split(',').find_map(|o| o.strip_prefix("id="))
        })
        .filter(|id| !given.iter().any(|(k, _)| k == id))
        .collect();
    match missing.as_slice() {
        [] => String::new(),
        ids => format!(
            " (the Dockerfile mounts build secret {}: set it with `berth env set --secret --build {}=…`)",
            ids.join(", "),
            ids[0]
        ),
    }
}

/// A file only its owner can read (a deploy key for ssh), removed on drop.
struct PrivateFile(std::path::PathBuf);

impl PrivateFile {
    fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        // ssh refuses a key without a final newline.
        let mut text = text.replace("\r\n", "\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        berth_store::crypto::write_private(&path, text.as_bytes())?;
        Ok(PrivateFile(path))
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn short_id(id: &str) -> &str {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    &s[..s.len().min(12)]
}

async fn image_id(docker: &bollard::Docker, tag: &str) -> Option<String> {
    docker.inspect_image(tag).await.ok().and_then(|i| i.id)
}

/// Parse a recorded or checked-out berth.toml; "" means the file is absent.
pub(crate) fn parse_app_config(text: &str) -> Result<AppConfig, String> {
    if text.trim().is_empty() {
        Ok(AppConfig::default())
    } else {
        config::parse(text).map_err(|e| e.to_string())
    }
}

/// The service settings recorded with a deployment (defaults when the
/// deployment predates recording them).
pub(crate) fn service_from_record(d: &Deployment) -> ServiceConfig {
    let recorded = d
        .build
        .config
        .as_deref()
        .and_then(|t| parse_app_config(t).ok())
        .and_then(|a| a.service(&d.service_name).cloned());
    recorded.unwrap_or_else(|| {
        let kind = if d.route_url.is_some() {
            ServiceKind::Web
        } else {
            ServiceKind::Worker
        };
        let mut s = ServiceConfig::new(d.service_name.clone(), kind);
        if let Some(p) = d.build.port {
            s.port = p;
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::model::{BuildInfo, Trigger};
    use berth_core::state::{Health, Stage, Status};

    fn dep(
        id: &str,
        env: &str,
        image: &str,
        minute: i64,
        stage: Stage,
        active: bool,
    ) -> Deployment {
        let t = chrono::DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap();
        Deployment {
            id: id.into(),
            project_name: "p".into(),
            service_name: "web".into(),
            environment_name: env.into(),
            status: if stage == Stage::Building {
                Status::Running
            } else {
                Status::Succeeded
            },
            promotion_stage: stage,
            health: Health::Healthy,
            is_active: active,
            route_url: None,
            preview_url: None,
            failure_message: None,
            created_at: t,
            started_at: Some(t),
            completed_at: Some(t),
            reference: "main".into(),
            commit: None,
            trigger: Trigger::Manual,
            source_deployment_id: None,
            image: Some(ImageInfo {
                reference: image.into(),
                digest: None,
            }),
            build: BuildInfo::default(),
            steps: vec![],
            canary_weight: None,
            runtime: None,
            source_repo: None,
        }
    }

    #[test]
    fn a_build_without_its_mounted_secret_says_how_to_give_it() {
        let df = "FROM x\nRUN --mount=type=secret,id=NPM_TOKEN,required=true npm ci\nRUN --mount=type=cache,target=/c true\n";
        let hint = super::missing_secret_hint(df, &[]);
        assert!(
            hint.contains("NPM_TOKEN") && hint.contains("--build"),
            "{hint}"
        );
        let given = vec![("NPM_TOKEN".to_string(), "v".to_string())];
        assert_eq!(super::missing_secret_hint(df, &given), "");
        assert_eq!(super::missing_secret_hint("FROM x\nRUN true\n", &[]), "");
    }

    #[test]
    fn retention_keeps_last_n_per_slot_active_and_shared_images() {
        let all = vec![
            dep(
                "1",
                "production",
                "berth/p-web:a",
                1,
                Stage::Superseded,
                false,
            ),
            dep(
                "2",
                "production",
                "berth/p-web:b",
                2,
                Stage::Superseded,
                false,
            ),
            dep(
                "3",
                "production",
                "berth/p-web:c",
                3,
                Stage::Superseded,
                false,
            ),
            // A rollback to b: b is active again, c rolled back.
            dep("4", "production", "berth/p-web:b", 4, Stage::Active, true),
            // Staging runs image a: production's pruning must not remove it.
            dep("5", "staging", "berth/p-web:a", 5, Stage::Active, true),
            dep(
                "6",
                "production",
                "berth/p-web:d",
                6,
                Stage::Building,
                false,
            ),
        ];
        let keep = images_to_keep(&all, 2);
        assert!(keep.contains("berth/p-web:b"), "active");
        assert!(
            keep.contains("berth/p-web:c"),
            "second most recent distinct"
        );
        assert!(
            keep.contains("berth/p-web:a"),
            "used by staging's active deployment"
        );
        assert!(keep.contains("berth/p-web:d"), "in progress");
        let keep1 = images_to_keep(&all[..4], 1);
        assert_eq!(keep1.len(), 1);
        assert!(keep1.contains("berth/p-web:b"));
    }
}

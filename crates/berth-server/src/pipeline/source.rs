//! Steps 1-2: where the code comes from (clone, or the no-clone reuse of an
//! image built from the same commit) and what berth.toml and the checkout
//! say to build (analyze).

use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use berth_build::{AnalyzeOptions, BaseImages, BuildPlan, Checkout, CloneRequest};
use berth_core::config::{self, AppConfig, ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, StepName, StepStatus, Trigger};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Deployer {
    /// A rollback or promote whose image is still in the store skips steps
    /// 1-4 and runs the service settings recorded with the deployment.
    pub(super) async fn retained_image(&self, d: &mut Deployment) -> Flow<Option<ServiceConfig>> {
        let retained = match &d.image {
            Some(img) if d.source_deployment_id.is_some() => {
                self.images.exists(&img.reference).await.or_else(|e| {
                    fail(
                        StepName::Clone,
                        format!("cannot tell whether image {} exists: {e}", img.reference),
                    )
                })?
            }
            _ => false,
        };
        if !retained {
            if d.source_deployment_id.is_some() && d.image.is_some() {
                self.logs.event(
                    &d.id,
                    "the image of the copied deployment was pruned: rebuilding it from source at its commit",
                );
                d.image = None;
            }
            return Ok(None);
        }
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
        Ok(Some(service_from_record(d)))
    }

    /// Where to fetch from: the pushed objects on this host for a `git push`
    /// to berth, else the project's repository.
    pub(super) async fn repo_access(
        &self,
        d: &Deployment,
        project: &str,
    ) -> Flow<berth_store::RepoAccess> {
        match &d.source_repo {
            Some(src) => match self.local_source(src).await {
                Ok(url) => Ok(berth_store::RepoAccess {
                    url,
                    deploy_key: None,
                }),
                Err(e) => fail(StepName::Clone, e.to_string()),
            },
            None => self
                .store
                .repo_access(project)
                .await
                .or_else(|e| fail(StepName::Clone, e.to_string())),
        }
    }

    /// Where a deployment's `source_repo` is on this server: a pushed
    /// repository (`berth-git:<project>`) is brought up to the stored
    /// version in this server's working copy first (`crate::pushed`); a
    /// path is itself.
    pub(crate) async fn local_source(
        &self,
        source_repo: &str,
    ) -> Result<String, crate::pushed::PushedError> {
        match crate::pushed::project_of_source(source_repo) {
            Some(project) => {
                let (dir, _) =
                    crate::pushed::sync(&*self.store, &self.cfg.data_dir, project).await?;
                Ok(dir.display().to_string())
            }
            None => Ok(source_repo.to_string()),
        }
    }

    /// The commit `reference` names now, asked (`git ls-remote`) when the
    /// deployment is requested and recorded as its `commit` (sha and
    /// branch; message and author come with the clone): what was asked for
    /// is what is deployed, even when a push lands on the branch before the
    /// pipeline clones. `None` when it cannot be told without a clone (an
    /// abbreviated SHA, an unknown ref, an unreachable remote): the clone
    /// resolves the ref then, and reports the error.
    pub(crate) async fn pin_ref(
        &self,
        project: &str,
        source_repo: Option<&str>,
        reference: &str,
    ) -> Option<berth_core::model::Commit> {
        let access = match source_repo {
            Some(src) => berth_store::RepoAccess {
                url: self.local_source(src).await.ok()?,
                deploy_key: None,
            },
            None => self.store.repo_access(project).await.ok()?,
        };
        let key_file = match &access.deploy_key {
            Some(key) => {
                let name = format!("resolve-{}", crate::ids::new_id());
                Some(PrivateFile::write(&self.cfg.data_dir.join("keys"), &name, key).ok()?)
            }
            None => None,
        };
        let (sha, branch) = self
            .builder
            .resolve_ref(
                &access.url,
                reference,
                key_file.as_ref().map(|f| f.0.as_path()),
                PIN_TIMEOUT,
            )
            .await?;
        Some(berth_core::model::Commit {
            sha,
            branch,
            message: String::new(),
            author: String::new(),
        })
    }

    /// Hash of the inputs that decide an image besides the commit.
    pub(super) fn inputs_key(&self, service: &str, build_args: &[(String, String)]) -> String {
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
    pub(super) async fn reuse_built_image(
        &self,
        d: &mut Deployment,
        repo: &str,
        ssh_key: Option<&Path>,
        inputs: &str,
    ) -> Option<ServiceConfig> {
        let (sha, branch) = self
            .builder
            .resolve_ref(repo, &fetch_ref(d), ssh_key, Duration::from_secs(20))
            .await?;
        let branch = branch.or_else(|| pinned_branch(d));
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
        match self.images.exists(&image.reference).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // Not fatal: building from source is always possible.
                self.logs.event(
                    &d.id,
                    &format!(
                        "cannot tell whether image {} exists ({e}): building from source",
                        image.reference
                    ),
                );
                return None;
            }
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

    /// Step 1: fetch the commit into `work` and record it.
    pub(super) async fn clone_source(
        &self,
        d: &mut Deployment,
        repo: &str,
        ssh_key: Option<&Path>,
        work: &Path,
        cancel: &CancellationToken,
    ) -> Flow<Checkout> {
        let (sink, tail) = self.sink(d, StepName::Clone);
        let req = CloneRequest {
            repo: repo.to_string(),
            reference: fetch_ref(d),
            dest: work.to_path_buf(),
            ssh_key: ssh_key.map(Path::to_path_buf),
            timeout: Duration::from_secs(300),
        };
        let checkout = tokio::select! {
            r = self.builder.clone_repo(&req, sink) => r,
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
        };
        Self::keep_tail(d, StepName::Clone, &tail);
        let checkout = checkout.or_else(|e| fail(StepName::Clone, e.to_string()))?;
        d.commit = Some(berth_core::model::Commit {
            sha: checkout.commit.sha.clone(),
            // a pinned SHA was fetched: the branch is the one it was pinned from
            branch: checkout.commit.branch.clone().or_else(|| pinned_branch(d)),
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
        Ok(checkout)
    }

    /// Step 2: read berth.toml at the commit, pick the service, make the
    /// build plan (`buildkit`: generated Dockerfiles get cache mounts).
    pub(super) async fn analyze(
        self: &Arc<Self>,
        d: &mut Deployment,
        checkout: &Checkout,
        buildkit: bool,
    ) -> Flow<(ServiceConfig, BuildPlan)> {
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
            buildkit,
        };
        let dir = checkout.dir.clone();
        let svc = service.clone();
        let plan = self
            .builder
            .analyze(&dir, &svc, &opts)
            .await
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
        Ok((service, plan))
    }

    pub(super) fn base_images(&self) -> BaseImages {
        let mut b = BaseImages::default();
        if let Some(n) = &self.cfg.node_image {
            b.node = n.clone();
        }
        if let Some(p) = &self.cfg.python_image {
            b.python = p.clone();
        }
        b
    }
}

/// How long a deploy request waits for `git ls-remote` to pin its ref.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pipeline fetches: the commit recorded at request time (or the
/// copied deployment's), else the ref as asked.
fn fetch_ref(d: &Deployment) -> String {
    match &d.commit {
        Some(c) if !c.sha.is_empty() => c.sha.clone(),
        _ => d.reference.clone(),
    }
}

/// The branch a pinned commit was resolved from.
fn pinned_branch(d: &Deployment) -> Option<String> {
    d.commit.as_ref().and_then(|c| c.branch.clone())
}

/// A work directory, removed on drop.
pub(super) struct RemoveOnDrop(pub(super) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file only its owner can read (a deploy key for ssh), removed on drop.
pub(super) struct PrivateFile(pub(super) std::path::PathBuf);

impl PrivateFile {
    pub(super) fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<Self> {
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

//! Steps 1-4 from source: clone and analyze (`source.rs`), then build the
//! image (or reuse the one built from the same tree and inputs) and push it.

use super::source::{PrivateFile, RemoveOnDrop};
use super::{fail, Flow, Stop};
use crate::deployer::Deployer;
use crate::ids::now;
use berth_build::{BuildLimits, BuildPlan, BuildRequest, Checkout};
use berth_core::config::ServiceConfig;
use berth_core::model::{Deployment, ImageInfo, LogStream, StepName, StepStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A build that loses a cached layer to a concurrent clean-up is tried again
/// (the engine's legacy builder has no lease on the layers it reuses).
const BUILD_ATTEMPTS: u32 = 3;

/// What a build gets from the environment's variables.
struct BuildInputs {
    /// Plain variables flagged for builds, and those with a public prefix
    /// (meant for browser bundles). A secret is never one: `docker history`
    /// shows arguments.
    args: Vec<(String, String)>,
    /// Secrets flagged for builds reach them only as BuildKit secrets
    /// (`RUN --mount=type=secret,id=KEY`).
    secrets: Vec<(String, String)>,
    /// The build's identity: the arguments and the secrets' ids, not their
    /// values (a rotated token does not rebuild, as with BuildKit's cache).
    identity: Vec<(String, String)>,
}

impl BuildInputs {
    fn of(vars: &[berth_store::ResolvedVar]) -> Self {
        let args: Vec<(String, String)> = vars
            .iter()
            .filter(|v| !v.secret && (v.build || berth_build::is_public(&v.key)))
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        let secrets: Vec<(String, String)> = vars
            .iter()
            .filter(|v| v.secret && v.build)
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        let mut identity = args.clone();
        identity.extend(
            secrets
                .iter()
                .map(|(k, _)| (format!("secret:{k}"), String::new())),
        );
        BuildInputs {
            args,
            secrets,
            identity,
        }
    }
}

impl Deployer {
    /// Steps 1-4: clone (or resolve the ref to an image already built from
    /// it), analyze, build, push. Returns the service's settings at the
    /// commit; `d.image` names the image.
    pub(super) async fn image_from_source(
        self: &Arc<Self>,
        d: &mut Deployment,
        project: &str,
        vars: &[berth_store::ResolvedVar],
        cancel: &CancellationToken,
    ) -> Flow<ServiceConfig> {
        let access = self.repo_access(d, project).await?;
        let repo = access.url.as_str();
        let inputs = BuildInputs::of(vars);
        let inputs_key = self.inputs_key(&d.service_name, &inputs.identity);
        d.build.inputs = Some(inputs_key.clone());

        // 1: clone.
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
        if let Some(service) = self.reuse_built_image(d, repo, ssh_key, &inputs_key).await {
            return Ok(service);
        }
        let work = self.cfg.data_dir.join("work").join(&d.id);
        let _ = std::fs::remove_dir_all(&work);
        let _cleanup = RemoveOnDrop(work.clone());
        let checkout = self.clone_source(d, repo, ssh_key, &work, cancel).await?;
        Self::check_cancel(cancel)?;

        // 2: analyze.
        let buildkit = !inputs.secrets.is_empty();
        let (service, plan) = self.analyze(d, &checkout, buildkit).await?;
        Self::check_cancel(cancel)?;

        // 3: build (or reuse).
        let tag = self.build_step(d, &checkout, &plan, inputs, cancel).await?;
        self.record_manifest(d);
        Self::check_cancel(cancel)?;

        // 4: push.
        self.push_step(d, &tag).await?;
        Ok(service)
    }

    /// Step 3: build the image, unless one built from the same tree, plan and
    /// inputs exists. Returns its tag.
    async fn build_step(
        &self,
        d: &mut Deployment,
        checkout: &Checkout,
        plan: &BuildPlan,
        inputs: BuildInputs,
        cancel: &CancellationToken,
    ) -> Flow<String> {
        self.start_step(d, StepName::Build);
        self.save(d).await;
        let key = berth_build::cache_key(&checkout.tree, plan, &inputs.identity);
        let tag = berth_build::image_tag(&d.project_name, &d.service_name, &key);
        let exists = self.images.exists(&tag).await.or_else(|e| {
            fail(
                StepName::Build,
                format!("cannot tell whether image {tag} exists: {e}"),
            )
        })?;
        if exists {
            d.build.cache_hit = true;
            d.image = Some(ImageInfo {
                reference: tag.clone(),
                digest: self
                    .builder
                    .inspect(&tag)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|i| i.id),
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
                build_args: inputs.args,
                labels,
                secrets: inputs.secrets,
            };
            let started = Instant::now();
            let mut attempt = 1;
            let res = loop {
                let res = {
                    let _shared = self.image_gate.read().await;
                    self.builder.build(&req, sink.clone(), cancel.clone()).await
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
        Ok(tag)
    }

    /// Step 4: push the image when a registry is configured.
    async fn push_step(&self, d: &mut Deployment, tag: &str) -> Flow<()> {
        let Some(registry) = &self.cfg.registry else {
            self.skip(
                d,
                StepName::Push,
                "no registry configured: the engine's image store keeps the image",
            )
            .await;
            return Ok(());
        };
        self.start_step(d, StepName::Push);
        self.save(d).await;
        let (sink, tail) = self.sink(d, StepName::Push);
        let res = self.builder.push(tag, registry, sink).await;
        Self::keep_tail(d, StepName::Push, &tail);
        match res {
            Ok(p) => {
                let note = format!("pushed {} ({})", p.reference, p.digest);
                d.image = Some(ImageInfo {
                    reference: tag.to_string(),
                    digest: Some(p.digest.clone()),
                });
                self.finish_step(d, StepName::Push, StepStatus::Succeeded, Some(&note));
            }
            Err(e) => return fail(StepName::Push, e.to_string()),
        }
        self.save(d).await;
        Ok(())
    }

    /// Record the build output manifest (004) of the deployment's image in
    /// the background, once per image.
    fn record_manifest(self: &Arc<Self>, d: &Deployment) {
        let Some(image) = d.image.clone() else {
            return;
        };
        let this = self.clone();
        let id = d.id.clone();
        tokio::spawn(berth_store::cluster::inherit(async move {
            if let Ok(Some(_)) = this.store.get_manifest(&image.reference).await {
                return;
            }
            let root = this
                .builder
                .inspect(&image.reference)
                .await
                .ok()
                .flatten()
                .and_then(|i| i.working_dir)
                .filter(|w| !w.is_empty() && w != "/");
            let opts = berth_build::ManifestOptions {
                root,
                max_files: 5000,
            };
            match this.builder.manifest(&image.reference, &opts).await {
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
        }));
    }
}

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

fn short_id(id: &str) -> &str {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    &s[..s.len().min(12)]
}

#[cfg(test)]
mod tests {
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
}

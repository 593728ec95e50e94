//! The builder seam: [`Builder`] is everything the server's pipeline asks
//! of a builder (clone, the no-clone ref lookup, analyze, build, push, an
//! image's facts and manifest), so the deploy algorithm runs against a
//! recording fake in tests and against [`EngineBuilder`] (a Docker Engine)
//! in production. No engine type crosses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::config::ServiceConfig;
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::{
    AnalyzeOptions, BuildError, BuildPlan, BuildRequest, BuiltImage, Checkout, CloneRequest,
    LogSink, Manifest, ManifestOptions, PushedImage,
};

/// What a builder knows about an image it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// Content id (`sha256:…`).
    pub id: Option<String>,
    /// The image's working directory, when it sets one.
    pub working_dir: Option<String>,
}

/// Turns a repository at a ref into an image. Every output line of a step
/// goes to its [`LogSink`] as it happens; credentials never reach a line or
/// an error.
#[async_trait::async_trait]
pub trait Builder: Send + Sync {
    /// Fetches exactly one commit into `req.dest` (see [`crate::clone()`]).
    async fn clone_repo(&self, req: &CloneRequest, log: LogSink) -> Result<Checkout, BuildError>;

    /// `(sha, branch)` of `reference` without cloning, or `None` when it
    /// cannot be resolved that way (see [`crate::resolve_ref`]).
    async fn resolve_ref(
        &self,
        repo: &str,
        reference: &str,
        ssh_key: Option<&Path>,
        timeout: Duration,
    ) -> Option<(String, Option<String>)>;

    /// The build plan of the checkout in `dir` (see [`crate::analyze()`]).
    async fn analyze(
        &self,
        dir: &Path,
        service: &ServiceConfig,
        opts: &AnalyzeOptions,
    ) -> Result<BuildPlan, BuildError>;

    /// Builds `req` (see [`crate::build()`]); stops on `cancel`.
    async fn build(
        &self,
        req: &BuildRequest,
        log: LogSink,
        cancel: CancellationToken,
    ) -> Result<BuiltImage, BuildError>;

    /// Facts of `image`; `None` when the builder does not hold it.
    async fn inspect(&self, image: &str) -> Result<Option<ImageFacts>, BuildError>;

    /// Pushes `image` to `registry` (see [`crate::push()`]).
    async fn push(
        &self,
        image: &str,
        registry: &str,
        log: LogSink,
    ) -> Result<PushedImage, BuildError>;

    /// The files of `image` (see [`crate::image_manifest`]).
    async fn manifest(&self, image: &str, opts: &ManifestOptions) -> Result<Manifest, BuildError>;
}

/// [`Builder`] on a Docker Engine: `git` for clone, the engine's legacy
/// builder or BuildKit for builds, its push and its image store.
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    docker: Docker,
    /// Credentials every push sends to the registry.
    login: Option<crate::RegistryLogin>,
}

impl EngineBuilder {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket)
    /// and negotiates the API version.
    pub async fn connect() -> Result<Self, BuildError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| BuildError::Docker(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| BuildError::Docker(e.to_string()))?;
        Ok(Self {
            docker,
            login: None,
        })
    }

    pub fn from_docker(docker: Docker) -> Self {
        Self {
            docker,
            login: None,
        }
    }

    /// Pushes send `login` to the registry (`X-Registry-Auth`).
    pub fn with_registry_login(mut self, login: Option<crate::RegistryLogin>) -> Self {
        self.login = login;
        self
    }

    /// Removes manifest containers older than `older_than` that an
    /// interrupted export left (see [`crate::remove_stale_manifest_containers`]).
    pub async fn remove_stale_manifest_containers(
        &self,
        older_than: Duration,
    ) -> Result<usize, BuildError> {
        crate::remove_stale_manifest_containers(&self.docker, older_than).await
    }
}

#[async_trait::async_trait]
impl Builder for EngineBuilder {
    async fn clone_repo(&self, req: &CloneRequest, log: LogSink) -> Result<Checkout, BuildError> {
        crate::clone(req, log).await
    }

    async fn resolve_ref(
        &self,
        repo: &str,
        reference: &str,
        ssh_key: Option<&Path>,
        timeout: Duration,
    ) -> Option<(String, Option<String>)> {
        crate::resolve_ref(repo, reference, ssh_key, timeout).await
    }

    async fn analyze(
        &self,
        dir: &Path,
        service: &ServiceConfig,
        opts: &AnalyzeOptions,
    ) -> Result<BuildPlan, BuildError> {
        let (dir, service, opts): (PathBuf, ServiceConfig, AnalyzeOptions) =
            (dir.to_path_buf(), service.clone(), opts.clone());
        tokio::task::spawn_blocking(move || crate::analyze(&dir, &service, &opts))
            .await
            .map_err(|e| BuildError::Analyze(e.to_string()))?
    }

    async fn build(
        &self,
        req: &BuildRequest,
        log: LogSink,
        cancel: CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        crate::build(&self.docker, req, log, cancel).await
    }

    async fn inspect(&self, image: &str) -> Result<Option<ImageFacts>, BuildError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(ImageFacts {
                id: i.id,
                working_dir: i.config.and_then(|c| c.working_dir),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(BuildError::Docker(e.to_string())),
        }
    }

    async fn push(
        &self,
        image: &str,
        registry: &str,
        log: LogSink,
    ) -> Result<PushedImage, BuildError> {
        crate::push_with_auth(&self.docker, image, registry, self.login.as_ref(), log).await
    }

    async fn manifest(&self, image: &str, opts: &ManifestOptions) -> Result<Manifest, BuildError> {
        crate::image_manifest(&self.docker, image, opts).await
    }
}

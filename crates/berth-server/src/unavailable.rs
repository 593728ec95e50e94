//! The runtime, image store and builder berth uses while the container
//! engine cannot be reached: every call fails with the reason, so the API stays up and deployments
//! fail with a clear message instead of hanging.

use berth_build::{
    AnalyzeOptions, BuildError, BuildPlan, BuildRequest, Builder, BuiltImage, Checkout,
    CloneRequest, ImageFacts, LogSink, Manifest, ManifestOptions, PushedImage,
};
use berth_core::config::ServiceConfig;
use berth_runtime::{
    Images, Instance, InstanceSpec, InstanceState, LogChunk, LogOptions, OneOffOutcome, Runtime,
    RuntimeError,
};
use futures::stream::BoxStream;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Unavailable(pub String);

impl Unavailable {
    fn err(&self, op: &'static str) -> RuntimeError {
        RuntimeError::Backend {
            op,
            message: format!("container engine unreachable: {}", self.0),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Unavailable {
    async fn start(&self, _: &InstanceSpec) -> Result<Instance, RuntimeError> {
        Err(self.err("start"))
    }
    async fn inspect(&self, _: &str) -> Result<InstanceState, RuntimeError> {
        Err(self.err("inspect"))
    }
    async fn stop(&self, _: &str, _: Duration) -> Result<(), RuntimeError> {
        Err(self.err("stop"))
    }
    async fn remove(&self, _: &str) -> Result<(), RuntimeError> {
        Err(self.err("remove"))
    }
    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        Err(self.err("list"))
    }
    fn logs(&self, _: &str, _: LogOptions) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let e = self.err("logs");
        Box::pin(futures::stream::once(async move { Err(e) }))
    }
    async fn run_oneoff(
        &self,
        _: &InstanceSpec,
        _: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        Err(self.err("run"))
    }
}

#[async_trait::async_trait]
impl Images for Unavailable {
    async fn exists(&self, _: &str) -> Result<bool, RuntimeError> {
        Err(self.err("image"))
    }
    async fn remove(&self, _: &str) -> Result<(), RuntimeError> {
        Err(self.err("image"))
    }
}

impl Unavailable {
    fn build_err(&self) -> BuildError {
        BuildError::Docker(format!("the Docker engine is not reachable: {}", self.0))
    }
}

#[async_trait::async_trait]
impl Builder for Unavailable {
    async fn clone_repo(&self, _: &CloneRequest, _: LogSink) -> Result<Checkout, BuildError> {
        Err(self.build_err())
    }
    async fn resolve_ref(
        &self,
        _: &str,
        _: &str,
        _: Option<&Path>,
        _: Duration,
    ) -> Option<(String, Option<String>)> {
        None
    }
    async fn analyze(
        &self,
        _: &Path,
        _: &ServiceConfig,
        _: &AnalyzeOptions,
    ) -> Result<BuildPlan, BuildError> {
        Err(self.build_err())
    }
    async fn build(
        &self,
        _: &BuildRequest,
        _: LogSink,
        _: CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        Err(self.build_err())
    }
    async fn inspect(&self, _: &str) -> Result<Option<ImageFacts>, BuildError> {
        Err(self.build_err())
    }
    async fn push(&self, _: &str, _: &str, _: LogSink) -> Result<PushedImage, BuildError> {
        Err(self.build_err())
    }
    async fn manifest(&self, _: &str, _: &ManifestOptions) -> Result<Manifest, BuildError> {
        Err(self.build_err())
    }
}

//! Build: the context goes to the Docker Engine's builder as a tar stream;
//! the builder's output goes to the log sink line by line. This file holds
//! the legacy builder (builds without secrets) and what both builders share;
//! builds with secrets go to BuildKit (`buildkit.rs`).
//!
//! The context is written by a blocking task into a bounded channel that feeds
//! the request body, so it is never held in memory whole. Limits: memory (the
//! swap limit equals the memory limit, so no swap), CPU (`cpuperiod` /
//! `cpuquota`) and time. On timeout or cancel the response stream and the
//! request body are dropped, which closes the connection; the engine then
//! cancels the build and removes its intermediate container (`forcerm`).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{BuildInfo, BuildInfoAux};
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analyze::{BuildPlan, BUILD_ARGS_MARKER, GENERATED_DOCKERFILE};
use crate::error::one_line;
use crate::progress::Progress;
use crate::{write_context, BuildError, DockerIgnore, LogSink};

/// Resource limits of one build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildLimits {
    /// Memory (and memory + swap) limit. The Engine API takes an i32 here, so
    /// values above 2 GiB - 1 are clamped to it.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    pub timeout: Duration,
}

impl Default for BuildLimits {
    /// 2 GiB, no CPU limit, 15 minutes.
    fn default() -> Self {
        BuildLimits {
            memory_bytes: Some(2 << 30),
            cpus: None,
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// One image build. Its `Debug` shows the secrets' ids, never their values.
#[derive(Clone)]
pub struct BuildRequest {
    /// The checkout (build context root).
    pub context_dir: PathBuf,
    pub plan: BuildPlan,
    /// `repo:tag` of the result, see [`crate::image_tag`].
    pub tag: String,
    pub limits: BuildLimits,
    /// Build args (public variables only, see [`crate::is_public`]). For a
    /// generated Dockerfile an `ARG` line is added for each.
    pub build_args: Vec<(String, String)>,
    /// Labels of the image.
    pub labels: BTreeMap<String, String>,
    /// Build secrets, id → value (ids are POSIX environment variable names).
    /// When there is any, the build runs on the engine's BuildKit, where a
    /// Dockerfile mounts them with `RUN --mount=type=secret,id=<id>`; they
    /// never become build args, layers or image history. Empty: the legacy
    /// builder.
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_ids: Vec<&str> = self.secrets.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("BuildRequest")
            .field("context_dir", &self.context_dir)
            .field("plan", &self.plan)
            .field("tag", &self.tag)
            .field("limits", &self.limits)
            .field("build_args", &self.build_args)
            .field("labels", &self.labels)
            .field("secrets", &secret_ids)
            .finish()
    }
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:...`
    pub id: String,
    pub tag: String,
}

/// Builds `req` and returns the image; every output line goes to `log`.
///
/// Without secrets this is the engine's legacy builder, under the memory and
/// CPU limits. With secrets it is the engine's BuildKit (see
/// [`crate::buildkit`]): a Dockerfile reads them with `RUN
/// --mount=type=secret,id=<NAME>`; they never become build args, image
/// layers or history, and their values are masked in every line and error.
pub async fn build(
    docker: &Docker,
    req: &BuildRequest,
    log: LogSink,
    cancel: CancellationToken,
) -> Result<BuiltImage, BuildError> {
    if req.secrets.is_empty() {
        build_legacy(docker, req, log, cancel).await
    } else {
        crate::buildkit::build(docker, req, log, cancel).await
    }
}

async fn build_legacy(
    docker: &Docker,
    req: &BuildRequest,
    log: LogSink,
    cancel: CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let docker = client_for(docker, req);
    let upload = ContextUpload::start(req, Builder::Legacy);
    let mut options = BuildImageOptions {
        version: BuilderVersion::BuilderV1,
        ..base_options(req, &upload.dockerfile)
    };
    if let Some(mem) = req.limits.memory_bytes {
        let m = mem.min(i32::MAX as u64) as i32;
        options.memory = Some(m);
        options.memswap = Some(m);
    }
    if let Some(cpus) = req.limits.cpus {
        options.cpuperiod = Some(100_000);
        options.cpuquota = Some(((cpus * 100_000.0) as i32).max(1_000));
    }

    log(&format!("building {} with the legacy builder", req.tag));
    let stream = docker.build_image(options, None, Some(bollard::body_try_stream(upload.body)));
    drive(&docker, stream, upload.writer, req, &log, &cancel, None).await
}

/// bollard's default request timeout (2 minutes) would cut long builds.
pub(crate) fn client_for(docker: &Docker, req: &BuildRequest) -> Docker {
    docker
        .clone()
        .with_timeout(req.limits.timeout + Duration::from_secs(60))
}

/// The options both builders share: Dockerfile, tag, build args, labels.
pub(crate) fn base_options(req: &BuildRequest, dockerfile: &str) -> BuildImageOptions {
    let mut options = BuildImageOptions {
        dockerfile: dockerfile.to_string(),
        t: Some(req.tag.clone()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    if !req.build_args.is_empty() {
        options.buildargs = Some(req.build_args.iter().cloned().collect::<HashMap<_, _>>());
    }
    if !req.labels.is_empty() {
        options.labels = Some(
            req.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
    }
    options
}

/// Which of the engine's builders a context is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builder {
    Legacy,
    BuildKit,
}

/// The request body: chunks of the context's tar.
pub(crate) type ContextBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send>>;

/// The build context on its way to the engine: a blocking task writes the
/// tar into a bounded channel that feeds the request body.
pub(crate) struct ContextUpload {
    /// The Dockerfile's name in the context.
    pub(crate) dockerfile: String,
    pub(crate) body: ContextBody,
    pub(crate) writer: tokio::task::JoinHandle<Result<u64, BuildError>>,
}

impl ContextUpload {
    pub(crate) fn start(req: &BuildRequest, builder: Builder) -> ContextUpload {
        let dockerfile_name = if req.plan.generated {
            GENERATED_DOCKERFILE.to_string()
        } else {
            req.plan
                .dockerfile_path
                .clone()
                .unwrap_or_else(|| "Dockerfile".into())
        };
        let generated = req
            .plan
            .generated
            .then(|| with_build_args(&req.plan.dockerfile, &req.build_args));
        let ignore_text =
            std::fs::read_to_string(req.context_dir.join(".dockerignore")).unwrap_or_default();
        // What COPY sees must be what the legacy builder lets it see.
        let (ignore, always, ignore_sent) = match builder {
            // The legacy builder reads the Dockerfile and .dockerignore from the
            // context, then drops those of them that the .dockerignore sent
            // along lists. A generated Dockerfile must not end up in the image:
            // listing it there makes the engine drop it after reading it.
            Builder::Legacy => (
                DockerIgnore::parse(&ignore_text),
                vec![dockerfile_name.clone(), ".dockerignore".to_string()],
                generated
                    .as_ref()
                    .map(|_| format!("{ignore_text}\n{GENERATED_DOCKERFILE}\n.dockerignore\n")),
            ),
            // BuildKit applies no .dockerignore to an uploaded context: the
            // context is COPY's whole view. So .dockerignore is sent only when
            // it does not exclude itself (never for a generated Dockerfile,
            // as above); the Dockerfile must be sent, and so stays visible to
            // COPY even when listed (the one difference to the legacy builder).
            Builder::BuildKit => {
                let text = if generated.is_some() {
                    format!("{ignore_text}\n.dockerignore\n")
                } else {
                    ignore_text
                };
                (
                    DockerIgnore::parse(&text),
                    vec![dockerfile_name.clone()],
                    None,
                )
            }
        };

        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let dir = req.context_dir.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let always: Vec<&str> = always.iter().map(String::as_str).collect();
            let mut extra: Vec<(&str, &[u8])> = Vec::new();
            if let Some(text) = &generated {
                extra.push((GENERATED_DOCKERFILE, text.as_bytes()));
            }
            if let Some(text) = &ignore_sent {
                extra.push((".dockerignore", text.as_bytes()));
            }
            let mut w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let res = write_context(&dir, &ignore, &always, &extra, &mut w).and_then(|n| {
                w.flush().map_err(|e| BuildError::Context(e.to_string()))?;
                Ok(n)
            });
            if let Err(e) = &res {
                // Fail the request body so the engine does not build a partial context.
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
            res
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        ContextUpload {
            dockerfile: dockerfile_name,
            body: Box::pin(body),
            writer,
        }
    }
}

/// Follows the builder's output until the build ends, fails, times out or is
/// cancelled; returns the image. BuildKit's progress (`aux` traces) goes
/// through `progress`, whose lines go to `log` like the legacy builder's.
pub(crate) async fn drive(
    docker: &Docker,
    stream: impl futures_util::Stream<Item = Result<BuildInfo, bollard::errors::Error>>,
    writer: tokio::task::JoinHandle<Result<u64, BuildError>>,
    req: &BuildRequest,
    log: &LogSink,
    cancel: &CancellationToken,
    mut progress: Option<&mut Progress>,
) -> Result<BuiltImage, BuildError> {
    // Boxed so that dropping it closes the request (and so the body) below.
    let mut stream = Box::pin(stream);
    let deadline = tokio::time::sleep(req.limits.timeout);
    tokio::pin!(deadline);
    let mut lines = LineBuffer::default();
    let mut image_id: Option<String> = None;
    let mut failure: Option<String> = None;
    let mut traced = Vec::new();
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                log("build cancelled");
                return Err(BuildError::Cancelled);
            }
            _ = &mut deadline => {
                let secs = req.limits.timeout.as_secs();
                log(&format!("build exceeded its time limit of {secs}s"));
                return Err(BuildError::TimedOut { secs });
            }
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        match item {
            Ok(info) => {
                if let Some(s) = &info.stream {
                    lines.push(s, log);
                }
                if let Some(status) = &info.status {
                    let line = match &info.id {
                        Some(id) => format!("{id}: {status}"),
                        None => status.clone(),
                    };
                    log(line.trim_end());
                }
                match &info.aux {
                    Some(BuildInfoAux::Default(img)) => {
                        if let Some(id) = &img.id {
                            image_id = Some(id.clone());
                        }
                    }
                    Some(BuildInfoAux::BuildKit(update)) => {
                        if let Some(p) = progress.as_deref_mut() {
                            p.apply(update, &mut traced);
                            for line in traced.drain(..) {
                                log(&line);
                            }
                        }
                    }
                    None => {}
                }
                if let Some(msg) = info.error_detail.as_ref().and_then(|d| d.message.clone()) {
                    log(msg.trim_end());
                    failure = Some(msg);
                }
            }
            Err(e) => {
                let msg = match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    other => other.to_string(),
                };
                log(msg.trim_end());
                failure = Some(msg);
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.finish(&mut traced);
        for line in traced.drain(..) {
            log(&line);
        }
    }
    lines.flush(log);
    drop(stream);
    let written = writer
        .await
        .map_err(|e| BuildError::Context(e.to_string()))?;
    if let Some(msg) = failure {
        return Err(classify_failure(&msg, req.limits.memory_bytes));
    }
    written?;
    let id = match image_id {
        Some(id) => id,
        None => docker
            .inspect_image(&req.tag)
            .await?
            .id
            .ok_or_else(|| BuildError::Docker(format!("image {} has no id", req.tag)))?,
    };
    Ok(BuiltImage {
        id,
        tag: req.tag.clone(),
    })
}

fn classify_failure(msg: &str, memory: Option<u64>) -> BuildError {
    let line = one_line(msg);
    if line.contains("non-zero code: 137") || line.to_ascii_lowercase().contains("oom") {
        if let Some(m) = memory {
            return BuildError::OutOfMemory {
                limit: human_bytes(m),
            };
        }
    }
    BuildError::BuildFailed(line)
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}g", b >> 30)
    } else if b >= 1 << 20 {
        format!("{}m", b >> 20)
    } else {
        format!("{b} bytes")
    }
}

/// Inserts `ARG <name>` lines after the build-args marker (or after the first
/// `FROM` when there is no marker).
fn with_build_args(dockerfile: &str, args: &[(String, String)]) -> String {
    if args.is_empty() {
        return dockerfile.to_string();
    }
    let decl: String = args.iter().map(|(k, _)| format!("ARG {k}\n")).collect();
    let mut out = String::with_capacity(dockerfile.len() + decl.len());
    let mut done = false;
    for line in dockerfile.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim() == BUILD_ARGS_MARKER {
            out.push_str(&decl);
            done = true;
        }
    }
    if !done {
        let mut fixed = String::new();
        for line in out.lines() {
            fixed.push_str(line);
            fixed.push('\n');
            if !done && line.trim_start().to_ascii_uppercase().starts_with("FROM ") {
                fixed.push_str(&decl);
                done = true;
            }
        }
        return fixed;
    }
    out
}

/// Splits the builder's `stream` chunks into lines.
#[derive(Default)]
struct LineBuffer {
    partial: String,
}

impl LineBuffer {
    fn push(&mut self, chunk: &str, log: &LogSink) {
        self.partial.push_str(chunk);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let line = line.trim_end();
            if !line.trim().is_empty() {
                log(line);
            }
        }
    }

    fn flush(&mut self, log: &LogSink) {
        if !self.partial.trim().is_empty() {
            log(self.partial.trim_end());
        }
        self.partial.clear();
    }
}

const CHUNK: usize = 64 * 1024;

/// A `Write` that sends chunks to the request body; fails with BrokenPipe once
/// the request is gone (build finished, cancelled or timed out).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "build request closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn build_args_are_declared_after_the_marker() {
        let df = format!("FROM a AS build\n{BUILD_ARGS_MARKER}\nRUN x\nFROM b\n");
        let args = vec![("VITE_API".to_string(), "u".to_string())];
        let out = with_build_args(&df, &args);
        assert_eq!(
            out,
            format!("FROM a AS build\n{BUILD_ARGS_MARKER}\nARG VITE_API\nRUN x\nFROM b\n")
        );
        let out = with_build_args("FROM a\nRUN x\n", &args);
        assert_eq!(out, "FROM a\nARG VITE_API\nRUN x\n");
        assert_eq!(with_build_args("FROM a\n", &[]), "FROM a\n");
    }

    #[test]
    fn debug_shows_secret_ids_not_values() {
        let req = BuildRequest {
            context_dir: "/src".into(),
            plan: BuildPlan {
                provider: "dockerfile".into(),
                framework: None,
                runtime: None,
                port: 3000,
                start_command: None,
                dockerfile: "FROM scratch\n".into(),
                dockerfile_path: Some("Dockerfile".into()),
                generated: false,
            },
            tag: "berth/x:1".into(),
            limits: BuildLimits::default(),
            build_args: vec![],
            labels: BTreeMap::new(),
            secrets: vec![("NPM_TOKEN".into(), "npm-s3cret".into())],
        };
        let text = format!("{req:?}");
        assert!(text.contains("NPM_TOKEN"), "{text}");
        assert!(!text.contains("npm-s3cret"), "{text}");
    }

    #[test]
    fn failures_are_classified() {
        let oom = classify_failure(
            "The command '/bin/sh -c x' returned a non-zero code: 137",
            Some(64 << 20),
        );
        assert_eq!(
            oom.to_string(),
            "build exceeded its memory limit of 64m (killed with exit code 137)"
        );
        let other = classify_failure("COPY failed: file not found\nin build context", None);
        assert_eq!(
            other.to_string(),
            "build failed: COPY failed: file not found in build context"
        );
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s2 = seen.clone();
        let log: LogSink = Arc::new(move |l| s2.lock().unwrap().push(l.to_string()));
        let mut b = LineBuffer::default();
        b.push("Step 1/2 : FR", &log);
        b.push("OM scratch\n ---> \n\nStep 2/2", &log);
        b.flush(&log);
        assert_eq!(
            *seen.lock().unwrap(),
            ["Step 1/2 : FROM scratch", " --->", "Step 2/2"]
        );
    }
}

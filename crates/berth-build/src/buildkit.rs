//! Builds with secrets, on the engine's built-in BuildKit.
//!
//! `POST /build?version=2&session=<id>` with the same tar context as the
//! legacy builder, plus a [`Session`] that serves the secret values to
//! BuildKit when a `RUN --mount=type=secret,id=<id>` asks for them. BuildKit
//! mounts a secret as a tmpfs file (`/run/secrets/<id>` by default) for that
//! one `RUN`: it is in no layer, no build arg and no history entry. The
//! engine's built-in Dockerfile frontend understands `--mount` without a
//! `# syntax=` line (nothing is pulled).
//!
//! The context is the legacy builder's tar, with one difference BuildKit
//! forces: it applies no `.dockerignore` to an uploaded context, so the tar
//! is all COPY sees. berth already leaves out what `.dockerignore` excludes
//! (both builders), and here also `.dockerignore` itself when it lists
//! itself; only the Dockerfile, which BuildKit reads from the context, stays
//! visible to COPY even when `.dockerignore` lists it (for a generated plan:
//! `Dockerfile.berth`).
//!
//! Progress comes back in the same response stream as BuildKit status
//! updates (`aux` of `moby.buildkit.trace`); [`Progress`] turns them into
//! numbered lines, each step's output attributed to the step.
//!
//! Limits: the time limit and cancel work as on the legacy builder (the
//! request is dropped, the engine cancels the solve and kills the step's
//! process). Memory and CPU limits do not apply: the engine's BuildKit
//! ignores them (its steps run in BuildKit's own cgroup, not in a container
//! with the build's limits), which the build's log says.
//!
//! Every line and the error pass through a [`Redactor`] of the secret values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_core::redact::Redactor;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::image::{base_options, client_for, drive, Builder, ContextUpload};
use crate::progress::Progress;
use crate::session::{engine_socket, Session};
use crate::{BuildError, BuildRequest, BuiltImage, LogSink};

/// How long opening the session may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn build(
    docker: &Docker,
    req: &BuildRequest,
    log: LogSink,
    cancel: CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let redactor = Redactor::new(req.secrets.iter().map(|(_, v)| v.as_str()));
    let r = redactor.clone();
    let log: LogSink = Arc::new(move |line: &str| log(&r.redact(line)));
    build_redacted(docker, req, log, cancel)
        .await
        .map_err(|e| e.map_text(|t| redactor.redact(t)))
}

async fn build_redacted(
    docker: &Docker,
    req: &BuildRequest,
    log: LogSink,
    cancel: CancellationToken,
) -> Result<BuiltImage, BuildError> {
    let mut secrets = HashMap::new();
    for (id, value) in &req.secrets {
        if !is_secret_id(id) {
            return Err(BuildError::SecretName(id.clone()));
        }
        if secrets
            .insert(id.clone(), value.as_bytes().to_vec())
            .is_some()
        {
            return Err(BuildError::SecretName(format!("{id} (given twice)")));
        }
    }
    let mut ids: Vec<String> = secrets.keys().cloned().collect();
    ids.sort_unstable();

    let socket = engine_socket(std::env::var("DOCKER_HOST").ok().as_deref());
    let open = Session::open(&socket, secrets, "berth");
    let session = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            log("build cancelled");
            return Err(BuildError::Cancelled);
        }
        s = tokio::time::timeout(SESSION_TIMEOUT, open) => s.map_err(|_| {
            BuildError::Docker(format!(
                "buildkit session: no answer from the engine within {}s",
                SESSION_TIMEOUT.as_secs()
            ))
        })??,
    };

    let docker = client_for(docker, req);
    let upload = ContextUpload::start(req, Builder::BuildKit);
    let options = BuildImageOptions {
        version: BuilderVersion::BuilderBuildKit,
        session: Some(session.id.clone()),
        ..base_options(req, &upload.dockerfile)
    };
    log(&format!(
        "building {} with BuildKit (build secrets: {})",
        req.tag,
        ids.join(", ")
    ));
    if req.limits.memory_bytes.is_some() || req.limits.cpus.is_some() {
        log("memory and CPU limits do not apply to BuildKit builds on this engine; the time limit does");
    }
    let stream = docker.build_image(options, None, Some(bollard::body_try_stream(upload.body)));
    let mut progress = Progress::default();
    let res = drive(
        &docker,
        stream,
        upload.writer,
        req,
        &log,
        &cancel,
        Some(&mut progress),
    )
    .await;
    drop(session);
    res
}

/// Whether `id` is a POSIX environment variable name: letters, digits and
/// `_`, not starting with a digit. BuildKit takes the id as a file name under
/// `/run/secrets/`, so this also keeps `/` and `..` out.
pub(crate) fn is_secret_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids_are_posix_names() {
        for ok in ["API_TOKEN", "_x", "npm_token2", "A"] {
            assert!(is_secret_id(ok), "{ok}");
        }
        for bad in ["", "2FA", "A-B", "a.b", "../etc", "A B", "é"] {
            assert!(!is_secret_id(bad), "{bad}");
        }
    }
}

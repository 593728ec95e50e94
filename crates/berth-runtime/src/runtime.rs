//! The [`Runtime`] trait every backend (Docker today; Kubernetes and microVMs
//! later) implements, and its error type.

use std::time::Duration;

use futures::stream::BoxStream;

use crate::spec::{
    Instance, InstanceSpec, InstanceState, LogChunk, LogOptions, OneOffOutcome, SpecError,
};

/// Runs app instances. Images are another seam ([`crate::Images`]).
/// Implementations keep these invariants:
///
/// - every instance they create carries `OWNER_LABEL=true`, and they never
///   list, stop or remove anything without it through `list_owned`;
/// - an instance's [`crate::Endpoint`] is reachable from the edge, and from
///   nothing more than the backend needs (Docker: 127.0.0.1 only);
/// - names are DNS labels ([`crate::instance_name`]); the backend's own
///   vocabulary (restart policies, states) stays inside it;
/// - `stop` and `remove` are idempotent (already stopped / already gone is
///   `Ok`), so a reconciler can repeat them after a crash;
/// - a spec is validated before anything is created, so a refused spec
///   leaves nothing behind, and a failed `start` removes what it created.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Creates and starts an instance. `spec.port` (if any) is made
    /// reachable from the edge at `Instance::endpoint` (Docker: published
    /// on 127.0.0.1 with an ephemeral host port). The endpoint is `None`
    /// when the instance already stopped before it could be read; `inspect`
    /// then tells why.
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError>;

    /// Starts `replicas` instances of `spec` (at least one) and returns them
    /// in order. By default each is its own instance, started one after the
    /// other, named by [`crate::replica_name`] (the first keeps
    /// `spec.name`); when one cannot start, those already started are
    /// removed and the error returned. A backend with its own notion of
    /// replicas (Swarm: one service, one slot per replica) overrides it.
    async fn start_replicas(
        &self,
        spec: &InstanceSpec,
        replicas: u32,
    ) -> Result<Vec<Instance>, RuntimeError> {
        let mut started: Vec<Instance> = Vec::new();
        for k in 1..=replicas.max(1) {
            let mut one = spec.clone();
            one.name = crate::replica_name(&spec.name, k);
            match self.start(&one).await {
                Ok(i) => started.push(i),
                Err(e) => {
                    for i in &started {
                        let _ = self.remove(&i.id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// Stops every instance of `ids` (see [`Runtime::stop`]), the graces
    /// running at the same time. Returns the first error after trying all.
    async fn stop_all(&self, ids: &[String], grace: Duration) -> Result<(), RuntimeError> {
        let results = futures::future::join_all(ids.iter().map(|id| self.stop(id, grace))).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    /// Removes every instance of `ids` (see [`Runtime::remove`]). Returns
    /// the first error after trying all.
    async fn remove_all(&self, ids: &[String]) -> Result<(), RuntimeError> {
        let results = futures::future::join_all(ids.iter().map(|id| self.remove(id))).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    /// Current state: status (exit code), OOM kill, restart count, start
    /// time, endpoint.
    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError>;

    /// Asks the instance to stop (SIGTERM, or the image's stop signal), and
    /// kills it after `grace`. Already stopped is `Ok`; unknown is
    /// `RuntimeError::NotFound`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes the instance, killing it if running. Unknown is `Ok`.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// Every instance carrying `OWNER_LABEL=true`, running or not.
    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError>;

    /// stdout and stderr, one item per line, each with the engine's
    /// timestamp and its stream. With `follow` the stream ends when the
    /// instance stops (or when dropped).
    fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;

    /// Runs `spec` to completion (release commands, migrations): no port is
    /// published and it is never restarted. Returns the exit code and the
    /// last `ONEOFF_MAX_LINES` output lines; the instance is removed
    /// afterwards in every case. After `timeout` it is killed, removed, and
    /// `RuntimeError::OneOffTimeout` returned.
    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError>;

    /// Runs `spec` to completion like [`Runtime::run_oneoff`], with its
    /// streams attached: every output line is sent to `io.output` as it
    /// comes (stdout and stderr apart), and the bytes received on
    /// `io.stdin` are the process's stdin (closed when that channel ends).
    /// The outcome holds the same bounded tail of the output.
    ///
    /// The default, for backends that cannot attach, runs the one-off and
    /// sends its output at the end; their process gets no stdin.
    async fn run_attached(
        &self,
        spec: &InstanceSpec,
        io: Attach,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let out = self.run_oneoff(spec, timeout).await?;
        for line in &out.output {
            if let Some(tty) = &io.tty {
                let mut bytes = line.line.clone().into_bytes();
                bytes.extend_from_slice(b"\r\n");
                let _ = tty.raw.send(bytes.into()).await;
            }
            if io.output.send(line.clone()).await.is_err() {
                break;
            }
        }
        Ok(out)
    }
}

/// The streams of [`Runtime::run_attached`].
pub struct Attach {
    /// The process's stdin; `None` closes it from the start.
    pub stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    /// Where output lines go as they come. A receiver that went away does
    /// not stop the run.
    pub output: tokio::sync::mpsc::Sender<LogChunk>,
    /// A terminal for the process (`berth run` from a terminal); `None`:
    /// plain pipes. Backends that cannot allocate one ignore it.
    pub tty: Option<AttachTty>,
}

/// The terminal of an attached run: stdout and stderr are one stream,
/// whose bytes go to `raw` exactly as they come (a prompt has no newline);
/// its lines also go to [`Attach::output`], as stdout, for the record.
pub struct AttachTty {
    /// The size at start.
    pub size: TtySize,
    /// Later sizes (the user's window changed).
    pub resize: tokio::sync::mpsc::Receiver<TtySize>,
    /// The terminal's output bytes. A receiver that went away does not
    /// stop the run.
    pub raw: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Errors of every runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid instance spec: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("instance {0} not found")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("image {image} is in use: {detail}")]
    ImageInUse { image: String, detail: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("instance {id} is running but port {port} is not published")]
    PortNotPublished { id: String, port: u16 },
    #[error("one-off {name} timed out after {}s and was killed", .after.as_secs_f64())]
    OneOffTimeout { name: String, after: Duration },
    /// Anything else the backend reported (engine unreachable, engine error).
    #[error("{op}: {message}")]
    Backend { op: &'static str, message: String },
}

impl RuntimeError {
    /// The instance (or image) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuntimeError::NotFound(_) | RuntimeError::ImageNotFound(_)
        )
    }
}

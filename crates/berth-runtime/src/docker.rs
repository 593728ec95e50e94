//! [`DockerRuntime`]: the [`Runtime`] on a Docker Engine (API 1.41 or
//! newer, version negotiated at connect), through bollard.
//!
//! Every container it creates is hardened the same way (see
//! [`container_config`]): `no-new-privileges`, all capabilities dropped but
//! [`CAP_ADD`], `init` (tini as PID 1, so SIGTERM reaches apps that ignore it
//! as PID 1), json-file logs capped at 3 × 10 MB, the instance port
//! published on 127.0.0.1 with an ephemeral host port, and no host path or
//! engine socket mounted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding,
    PortMap, RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, InspectContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
    ResizeContainerTTYOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::images::Images;
use crate::logs::LineSplitter;
use crate::runtime::{Attach, Runtime, RuntimeError};
use crate::spec::{
    Endpoint, Instance, InstanceSpec, InstanceState, InstanceStatus, LogChunk, LogOptions,
    LogStream, OneOffOutcome, RestartPolicy, ONEOFF_MAX_LINES, OWNER_LABEL, PORT_LABEL,
};

/// Capabilities kept after dropping all: what common web-app images need to
/// start (entrypoints that `chown` their data dir and drop to an app user
/// with `gosu`/`su-exec`: CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID; binding
/// ports below 1024: NET_BIND_SERVICE; the init forwarding signals to a
/// process that changed user: KILL). Raw sockets, mknod, chroot, audit,
/// SETPCAP, SETFCAP and the rest of Docker's default set are dropped.
pub const CAP_ADD: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
    "KILL",
];

/// json-file log rotation: at most `LOG_MAX_FILE` files of `LOG_MAX_SIZE`.
/// Docker 20.10's follow skips a whole rotated file when the reader lags
/// behind, so the files are large enough (100 MB in all) to absorb a burst
/// while berth stores what it reads.
pub const LOG_MAX_SIZE: &str = "20m";
/// See [`LOG_MAX_SIZE`].
pub const LOG_MAX_FILE: &str = "5";

/// Extra time the engine client waits for `stop` beyond the grace period.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// How long a look into the engine's event log for an OOM may take.
const OOM_EVENT_LOOKUP: Duration = Duration::from_secs(2);

/// A [`Runtime`] backed by a Docker Engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Whether the engine logged an `oom` event for container `id` since
    /// `since`. The engine sets `OOMKilled` only when containerd's OOM
    /// notice reaches it before the exit; one that arrives after is still
    /// logged as an event (the engine keeps the last 256), so an exit by
    /// SIGKILL under a memory limit looks there before saying "killed".
    async fn oom_event_since(&self, id: &str, since: Option<DateTime<Utc>>) -> bool {
        let now = Utc::now();
        let since = since.map_or(0, |t| t.timestamp() - 1);
        let options = EventsOptions {
            since: Some(since.to_string()),
            until: Some(format!(
                "{}.{:09}",
                now.timestamp(),
                now.timestamp_subsec_nanos()
            )),
            filters: Some(HashMap::from([
                ("container".to_owned(), vec![id.to_owned()]),
                ("event".to_owned(), vec!["oom".to_owned()]),
            ])),
        };
        let mut events = self.docker.events(Some(options));
        matches!(
            tokio::time::timeout(OOM_EVENT_LOOKUP, events.next()).await,
            Ok(Some(Ok(_)))
        )
    }

    /// Connects to the local engine (`DOCKER_HOST` or the default socket)
    /// and negotiates the API version down to what the engine speaks.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| backend("connect to docker", e))?
            .negotiate_version()
            .await
            .map_err(|e| backend("negotiate docker api version", e))?;
        Ok(Self { docker })
    }

    /// Wraps a client the caller configured (its API version must already
    /// be negotiated).
    pub fn from_docker(docker: Docker) -> Self {
        Self { docker }
    }

    /// The underlying client, for tests of this crate.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The engine's own image store, where its builds land and from which
    /// it starts instances.
    pub fn images(&self) -> EngineImages {
        EngineImages {
            docker: self.docker.clone(),
        }
    }

    async fn create(&self, spec: &InstanceSpec, oneoff: bool) -> Result<String, RuntimeError> {
        spec.validate()?;
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), container_config(spec, oneoff))
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::ImageNotFound(spec.image.clone()),
                e => map_err("create container", &spec.name, e),
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove_quietly(&created.id).await;
            return Err(map_err("start container", &spec.name, e));
        }
        Ok(created.id)
    }

    async fn remove_quietly(&self, id: &str) {
        if let Err(e) = self.remove(id).await {
            tracing::warn!(container = id, error = %e, "could not remove container");
        }
    }

    async fn run_to_end(
        &self,
        id: &str,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let started = Instant::now();
        // The engine sends the response head at once (API >= 1.30), so the
        // client's request timeout does not cut long one-offs short.
        let wait = async {
            let options = WaitContainerOptions {
                condition: "not-running".to_owned(),
            };
            let mut waiting = self.docker.wait_container(id, Some(options));
            match waiting.next().await {
                // A non-zero exit comes back as this error; the code is read
                // from inspect below.
                None | Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => {
                    Ok(())
                }
                Some(Err(e)) => Err(map_err("wait for container", id, e)),
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(RuntimeError::OneOffTimeout {
                    name: spec.name.clone(),
                    after: timeout,
                })
            }
        }
        let duration = started.elapsed();
        let state = self.inspect(id).await?;
        let mut output = VecDeque::new();
        let mut dropped_lines = 0;
        let mut logs = self.logs(id, LogOptions::default());
        while let Some(chunk) = logs.next().await {
            if output.len() == ONEOFF_MAX_LINES {
                output.pop_front();
                dropped_lines += 1;
            }
            output.push_back(chunk?);
        }
        Ok(OneOffOutcome {
            exit_code: state.exit_code().unwrap_or(-1),
            oom_killed: state.oom_killed,
            output: output.into(),
            dropped_lines,
            duration,
        })
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let id = self.create(spec, false).await?;
        let state = match self.inspect(&id).await {
            Ok(state) => state,
            Err(e) => {
                self.remove_quietly(&id).await;
                return Err(e);
            }
        };
        if let (Some(port), None, true) = (spec.port, &state.endpoint, state.is_running()) {
            self.remove_quietly(&id).await;
            return Err(RuntimeError::PortNotPublished { id, port });
        }
        Ok(Instance {
            running: state.is_running(),
            id: state.id,
            name: state.name,
            image: spec.image.clone(),
            labels: state.labels,
            endpoint: state.endpoint,
        })
    }

    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        let response = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err("inspect container", id, e))?;
        let limited = response
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .is_some_and(|m| m > 0);
        let mut state = state_from_inspect(id, response);
        if limited && !state.oom_killed && state.status == (InstanceStatus::Exited { code: 137 }) {
            state.oom_killed = self.oom_event_since(&state.id, state.started_at).await;
        }
        Ok(state)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The engine answers once the container is gone, up to `grace` later.
        let docker = self
            .docker
            .clone()
            .with_timeout(self.docker.timeout().max(grace + STOP_SLACK));
        // 304 (already stopped) counts as success for bollard.
        docker
            .stop_container(id, Some(options))
            .await
            .map_err(|e| map_err("stop container", id, e))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // "removal of container ... is already in progress"
            Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(map_err("remove container", id, e)),
        }
    }

    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{OWNER_LABEL}=true")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| backend("list containers", e))?;
        Ok(containers
            .into_iter()
            .filter_map(instance_from_summary)
            .collect())
    }

    fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let options = LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
            // Whole seconds only; sub-second precision is applied below.
            since: opts
                .since
                .map(|t| i32::try_from(t.timestamp().max(0)).unwrap_or(i32::MAX))
                .unwrap_or(0),
            until: 0,
            timestamps: true,
            tail: opts
                .tail
                .map_or_else(|| "all".to_owned(), |n| n.to_string()),
        };
        let raw = self.docker.logs(id, Some(options));
        let id = id.to_owned();
        let since = opts.since;
        let state = LogState {
            raw: raw.boxed(),
            splitter: LineSplitter::new(),
            ready: VecDeque::new(),
            done: false,
        };
        stream::unfold(state, move |mut st| {
            let id = id.clone();
            async move {
                loop {
                    if let Some(chunk) = st.ready.pop_front() {
                        return Some((Ok(chunk), st));
                    }
                    if st.done {
                        return None;
                    }
                    match st.raw.next().await {
                        Some(Ok(frame)) => {
                            let (stream, bytes) = match frame {
                                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                                    (LogStream::Stdout, message)
                                }
                                LogOutput::StdErr { message } => (LogStream::Stderr, message),
                                LogOutput::StdIn { .. } => continue,
                            };
                            let lines = st.splitter.push(stream, &bytes);
                            st.ready.extend(
                                lines
                                    .into_iter()
                                    .filter(|c| since.is_none_or(|s| c.ts >= s)),
                            );
                        }
                        Some(Err(e)) => {
                            st.done = true;
                            return Some((Err(map_err("read container logs", &id, e)), st));
                        }
                        None => {
                            st.done = true;
                            let rest = st.splitter.finish();
                            st.ready.extend(
                                rest.into_iter().filter(|c| since.is_none_or(|s| c.ts >= s)),
                            );
                        }
                    }
                }
            }
        })
        .boxed()
    }

    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let id = self.create(spec, true).await?;
        let result = self.run_to_end(&id, spec, timeout).await;
        // Force removal also kills it when it timed out.
        self.remove_quietly(&id).await;
        result
    }

    async fn run_attached(
        &self,
        spec: &InstanceSpec,
        io: Attach,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        spec.validate()?;
        let mut config = container_config(spec, true);
        let with_stdin = io.stdin.is_some();
        // With a terminal, stdout and stderr are one stream (the engine's).
        config.tty = Some(io.tty.is_some());
        config.open_stdin = Some(with_stdin);
        config.stdin_once = Some(with_stdin);
        config.attach_stdin = Some(with_stdin);
        config.attach_stdout = Some(true);
        config.attach_stderr = Some(true);
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), config)
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::ImageNotFound(spec.image.clone()),
                e => map_err("create container", &spec.name, e),
            })?;
        let id = created.id;
        let result = self.attach_and_run(&id, spec, io, timeout).await;
        // Force removal also kills it when it timed out.
        self.remove_quietly(&id).await;
        result
    }
}

impl DockerRuntime {
    /// Attaches to the created container `id` (before it starts, so no
    /// output is missed), starts it, pumps stdin and output until it exits.
    async fn attach_and_run(
        &self,
        id: &str,
        spec: &InstanceSpec,
        io: Attach,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        use tokio::io::AsyncWriteExt;
        let started = Instant::now();
        let Attach { stdin, output, tty } = io;
        let options = AttachContainerOptions {
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            detach_keys: None,
        };
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(|e| map_err("attach to container", id, e))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| map_err("start container", &spec.name, e))?;
        let (raw_out, resizer) = match tty {
            Some(t) => {
                let docker = self.docker.clone();
                let cid = id.to_owned();
                let mut resize = t.resize;
                let first = t.size;
                // Sizes apply to a running container: the first one right
                // after the start, then each change as it comes.
                let resizer = tokio::spawn(async move {
                    let mut next = Some(first);
                    while let Some(size) = next {
                        let options = ResizeContainerTTYOptions {
                            h: i32::from(size.rows),
                            w: i32::from(size.cols),
                        };
                        if let Err(e) = docker.resize_container_tty(&cid, options).await {
                            tracing::debug!(container = cid, error = %e, "tty resize failed");
                        }
                        next = resize.recv().await;
                    }
                });
                (Some(t.raw), Some(resizer))
            }
            None => (None, None),
        };
        let mut input = attached.input;
        let pump = stdin.map(|mut rx| {
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if input.write_all(&bytes).await.is_err() {
                        return;
                    }
                    let _ = input.flush().await;
                }
                // End of stdin: the process reads EOF (stdin_once).
                let _ = input.shutdown().await;
            })
        });
        let mut raw = attached.output;
        let mut splitter = LineSplitter::new();
        let mut tail = VecDeque::new();
        let mut dropped_lines = 0;
        let mut keep = |chunk: LogChunk, tail: &mut VecDeque<LogChunk>| {
            if tail.len() == ONEOFF_MAX_LINES {
                tail.pop_front();
                dropped_lines += 1;
            }
            tail.push_back(chunk);
        };
        let read = async {
            while let Some(frame) = raw.next().await {
                let (stream, bytes) = match frame {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        (LogStream::Stdout, message)
                    }
                    Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    // The connection ends when the container exits.
                    Err(_) => break,
                };
                if let Some(raw_out) = &raw_out {
                    let _ = raw_out.send(bytes.clone()).await;
                }
                for chunk in splitter.push(stream, &bytes) {
                    let _ = output.send(chunk.clone()).await;
                    keep(chunk, &mut tail);
                }
            }
            for chunk in splitter.finish() {
                let _ = output.send(chunk.clone()).await;
                keep(chunk, &mut tail);
            }
            let wait = WaitContainerOptions {
                condition: "not-running".to_owned(),
            };
            let mut waiting = self.docker.wait_container(id, Some(wait));
            match waiting.next().await {
                None | Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => {
                    Ok(())
                }
                Some(Err(e)) => Err(map_err("wait for container", id, e)),
            }
        };
        let finished = tokio::time::timeout(timeout, read).await;
        if let Some(pump) = pump {
            pump.abort();
        }
        if let Some(resizer) = resizer {
            resizer.abort();
        }
        match finished {
            Ok(result) => result?,
            Err(_) => {
                return Err(RuntimeError::OneOffTimeout {
                    name: spec.name.clone(),
                    after: timeout,
                })
            }
        }
        let mut state = self.inspect(id).await?;
        // A kill (137) may be the kernel's OOM killer, which the engine
        // records from its own event just after the exit: a bounded look.
        for _ in 0..30 {
            if state.oom_killed || state.exit_code() != Some(137) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = self.inspect(id).await?;
        }
        Ok(OneOffOutcome {
            exit_code: state.exit_code().unwrap_or(-1),
            oom_killed: state.oom_killed,
            output: tail.into(),
            dropped_lines,
            duration: started.elapsed(),
        })
    }
}

/// [`Images`] in a Docker Engine's local image store: what a
/// [`DockerRuntime`] on the same engine starts from.
#[derive(Debug, Clone)]
pub struct EngineImages {
    docker: Docker,
}

impl EngineImages {
    pub fn from_docker(docker: Docker) -> Self {
        Self { docker }
    }
}

#[async_trait::async_trait]
impl Images for EngineImages {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(backend("inspect image", e)),
        }
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            platforms: None,
        };
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => Err(RuntimeError::ImageInUse {
                image: image.to_owned(),
                detail: message,
            }),
            Err(e) => Err(backend("remove image", e)),
        }
    }
}

struct LogState {
    raw: BoxStream<'static, Result<LogOutput, DockerError>>,
    splitter: LineSplitter,
    ready: VecDeque<LogChunk>,
    done: bool,
}

/// The engine request body for `spec`: labels, limits, hardening, port,
/// restart policy and logging. A one-off publishes no port and never
/// restarts.
pub fn container_config(spec: &InstanceSpec, oneoff: bool) -> ContainerCreateBody {
    let port = if oneoff { None } else { spec.port };
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(OWNER_LABEL.to_owned(), "true".to_owned());
    if let Some(port) = port {
        labels.insert(PORT_LABEL.to_owned(), port.to_string());
    }
    let port_key = port.map(|p| format!("{p}/tcp"));
    let port_bindings: Option<PortMap> = port_key.as_ref().map(|key| {
        HashMap::from([(
            key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                host_port: Some(String::new()),
            }]),
        )])
    });
    let restart = if oneoff {
        RestartPolicy::Never
    } else {
        spec.restart
    };
    // berth's restart words → Docker's.
    let restart_policy = match restart {
        RestartPolicy::Never => DockerRestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        RestartPolicy::OnFailure { max_retries } => DockerRestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(i64::from(max_retries)),
        },
        RestartPolicy::Always => DockerRestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
    };
    let memory = spec
        .limits
        .memory_bytes
        .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            typ: Some(MountType::VOLUME),
            source: Some(m.volume.clone()),
            target: Some(m.target.clone()),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        memory,
        // No swap beyond the memory limit.
        memory_swap: memory,
        nano_cpus: spec.limits.nano_cpus,
        pids_limit: spec.limits.pids,
        init: Some(true),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: Some(CAP_ADD.iter().map(|c| (*c).to_owned()).collect()),
        privileged: Some(false),
        port_bindings,
        restart_policy: Some(restart_policy),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
            ])),
        }),
        mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        cmd: spec.command.clone(),
        exposed_ports: port_key.map(|k| vec![k]),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn state_from_inspect(id: &str, r: ContainerInspectResponse) -> InstanceState {
    let labels: BTreeMap<String, String> = r
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let state = r.state.unwrap_or_default();
    // Docker's container states → berth's.
    let status = match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => InstanceStatus::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => InstanceStatus::Restarting,
        Some(ContainerStateStatusEnum::PAUSED) => InstanceStatus::Suspended,
        Some(ContainerStateStatusEnum::REMOVING) => InstanceStatus::Stopping,
        Some(ContainerStateStatusEnum::DEAD) => InstanceStatus::Failed,
        Some(ContainerStateStatusEnum::EXITED) => InstanceStatus::Exited {
            code: state.exit_code.unwrap_or(-1),
        },
        _ if state.running == Some(true) => InstanceStatus::Running,
        _ => InstanceStatus::Pending,
    };
    let endpoint = if status == InstanceStatus::Running {
        let port = labels.get(PORT_LABEL).and_then(|p| p.parse::<u16>().ok());
        let ports = r.network_settings.as_ref().and_then(|n| n.ports.as_ref());
        match (port, ports) {
            (Some(port), Some(ports)) => published_addr(ports, port),
            _ => None,
        }
    } else {
        None
    };
    InstanceState {
        id: r.id.unwrap_or_else(|| id.to_owned()),
        name: r
            .name
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        status,
        oom_killed: state.oom_killed.unwrap_or(false),
        restart_count: r
            .restart_count
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        started_at: state.started_at.as_deref().and_then(parse_engine_time),
        finished_at: state.finished_at.as_deref().and_then(parse_engine_time),
        error: state.error.filter(|e| !e.is_empty()),
        labels,
        endpoint,
    }
}

/// The loopback address of `port`'s host binding: where the edge, on the
/// same host, reaches it.
fn published_addr(ports: &PortMap, port: u16) -> Option<Endpoint> {
    let bindings = ports.get(&format!("{port}/tcp"))?.as_ref()?;
    let rank = |b: &&PortBinding| match b.host_ip.as_deref() {
        Some("127.0.0.1") => 0,
        Some("" | "0.0.0.0") | None => 1,
        _ => 2,
    };
    let best = bindings.iter().filter(|b| rank(b) < 2).min_by_key(rank)?;
    let host_port = best.host_port.as_deref()?.parse::<u16>().ok()?;
    (host_port != 0).then(|| Endpoint::from(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port))))
}

/// Engine timestamps; the zero time (never started) is `None`.
fn parse_engine_time(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}

fn instance_from_summary(c: ContainerSummary) -> Option<Instance> {
    let id = c.id?;
    let labels: BTreeMap<String, String> = c.labels.unwrap_or_default().into_iter().collect();
    let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
    let port = labels.get(PORT_LABEL).and_then(|p| p.parse::<u16>().ok());
    let endpoint = match (running, port) {
        (true, Some(port)) => c.ports.unwrap_or_default().iter().find_map(|p| {
            let loopback = matches!(p.ip.as_deref(), Some("127.0.0.1" | "0.0.0.0") | None);
            (p.private_port == port && loopback)
                .then_some(p.public_port)
                .flatten()
                .map(|host| Endpoint::from(SocketAddr::from((Ipv4Addr::LOCALHOST, host))))
        }),
        _ => None,
    };
    Some(Instance {
        id,
        name: c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        labels,
        endpoint,
        running,
    })
}

fn backend(op: &'static str, e: DockerError) -> RuntimeError {
    RuntimeError::Backend {
        op,
        message: e.to_string(),
    }
}

pub(crate) fn map_err(op: &'static str, subject: &str, e: DockerError) -> RuntimeError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(subject.to_owned()),
        DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(message),
        e => backend(op, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{berth_labels, Limits, VolumeMount};

    fn spec() -> InstanceSpec {
        let mut spec = InstanceSpec::new("berth-shop-web-production-1a2b3c4d", "berth/shop:abc");
        spec.labels = berth_labels("shop", "web", "production", "d1");
        spec.env = vec![("A".into(), "1".into()), ("B".into(), "x=y".into())];
        spec.port = Some(3000);
        spec.limits = Limits {
            memory_bytes: Some(256 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(128),
        };
        spec.restart = RestartPolicy::OnFailure { max_retries: 3 };
        spec
    }

    #[test]
    fn config_is_hardened_and_labelled() {
        let body = container_config(&spec(), false);
        let host = body.host_config.expect("host config");
        assert_eq!(host.init, Some(true));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.cap_add.as_deref().map(<[String]>::len),
            Some(CAP_ADD.len())
        );
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, Some(256 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(128));
        assert!(host.binds.is_none() && host.mounts.is_none());
        let log = host.log_config.expect("log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.expect("log opts")["max-size"], LOG_MAX_SIZE);
        let restart = host.restart_policy.expect("restart");
        assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(restart.maximum_retry_count, Some(3));
        let bindings = host.port_bindings.expect("ports")["3000/tcp"]
            .clone()
            .expect("binding");
        assert_eq!(bindings[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(bindings[0].host_port.as_deref(), Some(""));
        let labels = body.labels.expect("labels");
        assert_eq!(labels[OWNER_LABEL], "true");
        assert_eq!(labels[PORT_LABEL], "3000");
        assert_eq!(labels["dev.berth.project"], "shop");
        assert_eq!(body.env, Some(vec!["A=1".to_owned(), "B=x=y".to_owned()]));
        assert_eq!(body.exposed_ports, Some(vec!["3000/tcp".to_owned()]));
    }

    #[test]
    fn oneoff_publishes_nothing_and_never_restarts() {
        let body = container_config(&spec(), true);
        let host = body.host_config.expect("host config");
        assert!(host.port_bindings.is_none());
        assert!(body.exposed_ports.is_none());
        assert_eq!(
            host.restart_policy.expect("restart").name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert!(!body.labels.expect("labels").contains_key(PORT_LABEL));
    }

    #[test]
    fn named_volumes_become_volume_mounts() {
        let mut s = spec();
        s.mounts.push(VolumeMount {
            volume: "shop-data".into(),
            target: "/data".into(),
            read_only: false,
        });
        let host = container_config(&s, false)
            .host_config
            .expect("host config");
        let mounts = host.mounts.expect("mounts");
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("shop-data"));
        assert!(host.binds.is_none());
    }

    #[test]
    fn published_addr_prefers_loopback() {
        let ports: PortMap = HashMap::from([(
            "3000/tcp".to_owned(),
            Some(vec![
                PortBinding {
                    host_ip: Some("::".into()),
                    host_port: Some("1".into()),
                },
                PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("49153".into()),
                },
            ]),
        )]);
        assert_eq!(
            published_addr(&ports, 3000),
            Some(Endpoint::new("127.0.0.1", 49153))
        );
        assert_eq!(published_addr(&ports, 8080), None);
    }

    #[test]
    fn zero_engine_time_is_none() {
        assert_eq!(parse_engine_time("0001-01-01T00:00:00Z"), None);
        assert!(parse_engine_time("2024-05-01T10:00:00.5Z").is_some());
        assert_eq!(parse_engine_time("garbage"), None);
    }
}

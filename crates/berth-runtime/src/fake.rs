//! [`FakeRuntime`]: an in-memory [`Runtime`] for pipeline tests that records
//! every call. An instance with a port gets a real HTTP server on
//! 127.0.0.1:0 (answering its configured status with its instance name as
//! body), so health probes and the edge proxy can be exercised against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::images::Images;
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::{
    Endpoint, Instance, InstanceSpec, InstanceState, InstanceStatus, LogChunk, LogOptions,
    LogStream, OneOffOutcome, OWNER_LABEL, PORT_LABEL,
};

/// One recorded call (instance name or id, or image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(String),
    Inspect(String),
    Stop(String),
    Remove(String),
    ListOwned,
    Logs(String),
    RunOneoff(String),
    ImageExists(String),
    RemoveImage(String),
}

/// How instances of one image behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Status the instance's HTTP server answers.
    pub http_status: u16,
    /// `Some(code)`: the instance exits at once with this code (no server).
    pub crash_with: Option<i64>,
    /// Exit code of a one-off of this image.
    pub oneoff_exit_code: i64,
    /// Lines printed (stdout) by instances and one-offs of this image.
    pub output: Vec<String>,
    /// How long the instance's HTTP server takes to answer a request.
    pub response_delay: Duration,
    /// How long `start` and `stop` of its instances take.
    pub start_delay: Duration,
    pub stop_delay: Duration,
    /// How long a one-off of this image runs (past its timeout it is
    /// killed: `RuntimeError::OneOffTimeout`).
    pub oneoff_time: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            http_status: 200,
            crash_with: None,
            oneoff_exit_code: 0,
            output: Vec::new(),
            response_delay: Duration::ZERO,
            start_delay: Duration::ZERO,
            stop_delay: Duration::ZERO,
            oneoff_time: Duration::ZERO,
        }
    }
}

struct FakeInstance {
    instance: Instance,
    status: InstanceStatus,
    http_status: Arc<AtomicU16>,
    /// Requests the instance's server is answering right now.
    inflight: Arc<AtomicUsize>,
    server: Option<tokio::task::JoinHandle<()>>,
    output: Vec<String>,
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[derive(Default)]
struct State {
    instances: BTreeMap<String, FakeInstance>,
    images: BTreeSet<String>,
    in_use_check: bool,
    behaviours: HashMap<String, Behaviour>,
    calls: Vec<Call>,
    /// (instance name, requests in flight) at each `stop` of a running one.
    inflight_at_stop: Vec<(String, usize)>,
    /// (instance id, grace) of every `stop` call.
    stop_graces: Vec<(String, Duration)>,
    next_id: u64,
}

/// See the module docs. Images must be added ([`FakeRuntime::add_image`])
/// before instances of them start.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        let fake = Self::default();
        fake.lock().in_use_check = true;
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_owned());
    }

    /// Sets how instances of `image` behave (default: healthy, 200).
    pub fn set_behaviour(&self, image: &str, behaviour: Behaviour) {
        self.lock().behaviours.insert(image.to_owned(), behaviour);
    }

    /// Changes the HTTP status a running instance answers from now on.
    pub fn set_http_status(&self, id: &str, status: u16) {
        if let Some(i) = self.lock().instances.get(id) {
            i.http_status.store(status, Ordering::SeqCst);
        }
    }

    /// Makes a running instance exit with `code` (a crash after start).
    pub fn crash(&self, id: &str, code: i64) {
        if let Some(i) = self.lock().instances.get_mut(id) {
            i.status = InstanceStatus::Exited { code };
            i.instance.running = false;
            i.instance.endpoint = None;
            if let Some(server) = i.server.take() {
                server.abort();
            }
        }
    }

    /// (instance name, requests it was answering) at each `stop` of a
    /// running instance: a stop before the edge drained shows up here.
    pub fn inflight_at_stop(&self) -> Vec<(String, usize)> {
        self.lock().inflight_at_stop.clone()
    }

    /// (instance id, grace asked for) of every `stop` call.
    pub fn stop_graces(&self) -> Vec<(String, Duration)> {
        self.lock().stop_graces.clone()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Ids of the instances that exist (running or not).
    pub fn instance_ids(&self) -> Vec<String> {
        self.lock().instances.keys().cloned().collect()
    }

    fn record(&self, call: Call) {
        self.lock().calls.push(call);
    }

    fn get<T>(&self, id: &str, f: impl FnOnce(&FakeInstance) -> T) -> Result<T, RuntimeError> {
        let state = self.lock();
        state
            .instances
            .get(id)
            .or_else(|| state.instances.values().find(|i| i.instance.name == id))
            .map(f)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }
}

async fn serve(
    listener: TcpListener,
    status: Arc<AtomicU16>,
    body: String,
    delay: Duration,
    inflight: Arc<AtomicUsize>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let status = status.load(Ordering::SeqCst);
        let body = body.clone();
        let inflight = inflight.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            inflight.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let response = format!(
                "HTTP/1.1 {status} Fake\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
            inflight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        self.record(Call::Start(spec.name.clone()));
        spec.validate()?;
        let behaviour = {
            let state = self.lock();
            if !state.images.contains(&spec.image) {
                return Err(RuntimeError::ImageNotFound(spec.image.clone()));
            }
            if state
                .instances
                .values()
                .any(|i| i.instance.name == spec.name)
            {
                return Err(RuntimeError::Conflict(format!("name {} in use", spec.name)));
            }
            state
                .behaviours
                .get(&spec.image)
                .cloned()
                .unwrap_or_default()
        };
        if !behaviour.start_delay.is_zero() {
            tokio::time::sleep(behaviour.start_delay).await;
        }
        let http_status = Arc::new(AtomicU16::new(behaviour.http_status));
        let inflight = Arc::new(AtomicUsize::new(0));
        let (endpoint, server) = match (spec.port, behaviour.crash_with) {
            (Some(_), None) => {
                let listener =
                    TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| RuntimeError::Backend {
                            op: "fake bind",
                            message: e.to_string(),
                        })?;
                let addr: SocketAddr =
                    listener.local_addr().map_err(|e| RuntimeError::Backend {
                        op: "fake bind",
                        message: e.to_string(),
                    })?;
                let task = tokio::spawn(serve(
                    listener,
                    http_status.clone(),
                    spec.name.clone(),
                    behaviour.response_delay,
                    inflight.clone(),
                ));
                (Some(Endpoint::from(addr)), Some(task))
            }
            _ => (None, None),
        };
        let mut labels = spec.labels.clone();
        labels.insert(OWNER_LABEL.to_owned(), "true".to_owned());
        if let Some(port) = spec.port {
            labels.insert(PORT_LABEL.to_owned(), port.to_string());
        }
        let mut state = self.lock();
        state.next_id += 1;
        let id = format!("fake{:012}", state.next_id);
        let status = match behaviour.crash_with {
            Some(code) => InstanceStatus::Exited { code },
            None => InstanceStatus::Running,
        };
        let instance = Instance {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels,
            endpoint,
            running: status == InstanceStatus::Running,
        };
        state.instances.insert(
            id,
            FakeInstance {
                instance: instance.clone(),
                status,
                http_status,
                inflight,
                server,
                output: behaviour.output,
            },
        );
        Ok(instance)
    }

    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        self.record(Call::Inspect(id.to_owned()));
        self.get(id, |i| InstanceState {
            id: i.instance.id.clone(),
            name: i.instance.name.clone(),
            status: i.status,
            oom_killed: false,
            restart_count: 0,
            started_at: Some(Utc::now()),
            finished_at: None,
            error: None,
            labels: i.instance.labels.clone(),
            endpoint: i.instance.endpoint.clone(),
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.record(Call::Stop(id.to_owned()));
        self.lock().stop_graces.push((id.to_owned(), grace));
        let (real_id, image) =
            self.get(id, |i| (i.instance.id.clone(), i.instance.image.clone()))?;
        let delay = self
            .lock()
            .behaviours
            .get(&image)
            .map_or(Duration::ZERO, |b| b.stop_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        let running = state
            .instances
            .get(&real_id)
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| (i.instance.name.clone(), i.inflight.load(Ordering::SeqCst)));
        if let Some(seen) = running {
            state.inflight_at_stop.push(seen);
        }
        if let Some(i) = state.instances.get_mut(&real_id) {
            if i.status == InstanceStatus::Running {
                i.status = InstanceStatus::Exited { code: 143 };
                i.instance.running = false;
                i.instance.endpoint = None;
                if let Some(server) = i.server.take() {
                    server.abort();
                }
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Remove(id.to_owned()));
        if let Ok(real_id) = self.get(id, |i| i.instance.id.clone()) {
            self.lock().instances.remove(&real_id);
        }
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        self.record(Call::ListOwned);
        Ok(self
            .lock()
            .instances
            .values()
            .map(|i| i.instance.clone())
            .collect())
    }

    fn logs(
        &self,
        id: &str,
        _opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        self.record(Call::Logs(id.to_owned()));
        let items: Vec<Result<LogChunk, RuntimeError>> = match self.get(id, |i| i.output.clone()) {
            Ok(lines) => lines
                .into_iter()
                .map(|line| {
                    Ok(LogChunk {
                        stream: LogStream::Stdout,
                        ts: Utc::now(),
                        line,
                    })
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(items).boxed()
    }

    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        self.record(Call::RunOneoff(spec.name.clone()));
        spec.validate()?;
        let behaviour = {
            let state = self.lock();
            if !state.images.contains(&spec.image) {
                return Err(RuntimeError::ImageNotFound(spec.image.clone()));
            }
            state
                .behaviours
                .get(&spec.image)
                .cloned()
                .unwrap_or_default()
        };
        if behaviour.oneoff_time > timeout {
            tokio::time::sleep(timeout).await;
            return Err(RuntimeError::OneOffTimeout {
                name: spec.name.clone(),
                after: timeout,
            });
        }
        tokio::time::sleep(behaviour.oneoff_time).await;
        Ok(OneOffOutcome {
            exit_code: behaviour.oneoff_exit_code,
            oom_killed: false,
            output: behaviour
                .output
                .into_iter()
                .map(|line| LogChunk {
                    stream: LogStream::Stdout,
                    ts: Utc::now(),
                    line,
                })
                .collect(),
            dropped_lines: 0,
            duration: Duration::ZERO,
        })
    }
}

/// The fake's image store: what `add_image` added, minus what was removed.
#[async_trait::async_trait]
impl Images for FakeRuntime {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        self.record(Call::ImageExists(image.to_owned()));
        Ok(self.lock().images.contains(image))
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        self.record(Call::RemoveImage(image.to_owned()));
        let mut state = self.lock();
        if state.in_use_check && state.instances.values().any(|i| i.instance.image == image) {
            return Err(RuntimeError::ImageInUse {
                image: image.to_owned(),
                detail: "an instance uses it".to_owned(),
            });
        }
        state.images.remove(image);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::probe;

    #[tokio::test]
    async fn fake_instances_serve_probe_and_stop() {
        let fake = FakeRuntime::new();
        fake.add_image("app:1");
        let mut spec = InstanceSpec::new("web-1", "app:1");
        spec.port = Some(3000);
        let instance = fake.start(&spec).await.expect("start");
        let addr = instance.endpoint.clone().expect("endpoint");
        assert!(probe(&addr, "/", Duration::from_secs(2)).await.is_healthy());
        fake.set_http_status(&instance.id, 503);
        assert_eq!(
            probe(&addr, "/", Duration::from_secs(2)).await.to_string(),
            "503"
        );
        assert!(matches!(
            Images::remove(&fake, "app:1").await,
            Err(RuntimeError::ImageInUse { .. })
        ));
        fake.stop(&instance.id, Duration::from_secs(1))
            .await
            .expect("stop");
        let state = fake.inspect(&instance.id).await.expect("inspect");
        assert_eq!(state.status, InstanceStatus::Exited { code: 143 });
        Runtime::remove(&fake, &instance.id).await.expect("remove");
        Runtime::remove(&fake, &instance.id)
            .await
            .expect("remove again");
        assert!(fake.instance_ids().is_empty());
        assert_eq!(fake.calls()[0], Call::Start("web-1".to_owned()));
    }

    #[tokio::test]
    async fn fake_refuses_missing_images_and_crashes_on_request() {
        let fake = FakeRuntime::new();
        let spec = InstanceSpec::new("web-1", "app:2");
        assert!(matches!(
            fake.start(&spec).await,
            Err(RuntimeError::ImageNotFound(_))
        ));
        fake.add_image("app:2");
        fake.set_behaviour(
            "app:2",
            Behaviour {
                crash_with: Some(1),
                ..Behaviour::default()
            },
        );
        let instance = fake.start(&spec).await.expect("start");
        assert!(!instance.running);
        let state = fake.inspect(&instance.id).await.expect("inspect");
        assert_eq!(state.exit_code(), Some(1));
    }
}

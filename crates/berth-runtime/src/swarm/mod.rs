//! [`SwarmRuntime`]: the [`Runtime`] on a Docker Swarm, through the
//! manager's Engine API (bollard).
//!
//! - A deployment's instances are one Swarm **service** (replicated,
//!   [`service::service_spec`]); an instance is one **slot** of it, id
//!   `<service id>.<slot>` ([`tasks`]): Swarm replaces a failed task by a
//!   new task in the same slot, so the id stays the same while the task
//!   changes. `start` makes a one-replica service; [`SwarmRuntime::start_replicated`]
//!   makes N.
//! - No VIP, no routing mesh (kernels without IPVS): endpoint mode dnsrr,
//!   the instance port published in **host mode** with an ephemeral port on
//!   the task's node. An instance's address is `<node address>:<published
//!   port>`, so the edge must reach the nodes' addresses (not loopback: the
//!   loopback-only invariant of the Docker runtime does not hold here).
//! - Swarm's own rolling update is never used: a new deployment is a new
//!   service, cut over by berth's pipeline.
//! - Images reach the nodes through a registry: every create/update carries
//!   the registry credentials ([`SwarmConfig::registry_auth`], sent as
//!   `X-Registry-Auth`, forwarded by the manager to the nodes). A task a
//!   node rejected fails `start` with the node and the registry's own error.
//! - Labels: berth's labels on the service and on every task's container;
//!   `list_owned` lists services carrying [`OWNER_LABEL`].
//! - Hardening as far as Swarm's `ContainerSpec` expresses it: init, all
//!   capabilities dropped but [`crate::docker::CAP_ADD`], memory/CPU/PID
//!   limits, json-file logs capped; `no-new-privileges` is not expressible
//!   through Swarm on API 1.41.
//! - `stop`/`remove` of the only slot scale the service to 0 / delete it;
//!   of one slot among several they scale down by one (Swarm picks the
//!   task). Swarm applies the stop grace given at creation
//!   ([`service::DEFAULT_STOP_GRACE`]).
//! - Images ([`crate::Images`]) are the manager engine's store, where
//!   berth builds ([`crate::EngineImages`]); nodes other than the manager
//!   need a registry ([`crate::RegistryImages`]) to pull from.

pub mod nodes;
pub mod service;
pub mod tasks;
#[cfg(any(test, feature = "testing"))]
pub mod testnet;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{LocalNodeState, Node, Service, Task, TaskState};
use bollard::query_parameters::{
    CreateImageOptions, InspectServiceOptions, ListNodesOptions, ListServicesOptions,
    ListTasksOptions, LogsOptions, UpdateNodeOptions, UpdateServiceOptions,
};
use bollard::Docker;
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::logs::LineSplitter;
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::{
    Instance, InstanceSpec, InstanceState, LogChunk, LogOptions, LogStream, OneOffOutcome,
    ONEOFF_MAX_LINES, OWNER_LABEL,
};

pub use nodes::{Availability, NodeInfo};

use tasks::NodeAddrs;

/// Credentials of the registry the nodes pull from.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// `host:port` of the registry.
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the Swarm runtime behaves.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Sent with every service create and update, so every node can pull.
    pub registry_auth: Option<RegistryAuth>,
    /// The registry berth pushes to (`--registry`): an image reference
    /// without a registry host (`berth/shop-web:abc`) is pulled by the
    /// nodes as `<registry>/berth/shop-web:abc`, where the push put it.
    pub registry: Option<String>,
    /// How long `start` waits for every task to run (pulls included).
    pub start_timeout: Duration,
    /// Polling interval while waiting for tasks.
    pub poll_interval: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            registry_auth: None,
            registry: None,
            start_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// A [`Runtime`] backed by a Docker Swarm manager.
#[derive(Debug, Clone)]
pub struct SwarmRuntime {
    docker: Docker,
    config: SwarmConfig,
    images: crate::EngineImages,
}

/// Extra time `stop` waits beyond the stop grace for the tasks to end.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Longest wait of `remove` for Swarm to act on it.
const REMOVE_WAIT: Duration = Duration::from_secs(30);

impl SwarmRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket),
    /// which must be a swarm manager.
    pub async fn connect(config: SwarmConfig) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| backend("connect to docker", e))?
            .negotiate_version()
            .await
            .map_err(|e| backend("negotiate docker api version", e))?;
        Self::new(docker, config).await
    }

    /// Wraps a client (API version already negotiated); fails with a
    /// one-line explanation when its engine is not a swarm manager.
    pub async fn new(docker: Docker, config: SwarmConfig) -> Result<Self, RuntimeError> {
        ensure_manager(&docker).await?;
        Ok(Self {
            images: crate::EngineImages::from_docker(docker.clone()),
            docker,
            config,
        })
    }

    /// The manager's client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The reference the nodes pull `image` by (see [`SwarmConfig::registry`]).
    pub fn node_image(&self, image: &str) -> String {
        match &self.config.registry {
            Some(registry) if !has_registry_host(image) => {
                format!("{}/{image}", registry.trim_end_matches('/'))
            }
            _ => image.to_owned(),
        }
    }

    fn credentials(&self) -> Option<DockerCredentials> {
        self.config
            .registry_auth
            .as_ref()
            .map(|a| DockerCredentials {
                username: Some(a.username.clone()),
                password: Some(a.password.clone()),
                serveraddress: Some(a.server.clone()),
                ..Default::default()
            })
    }

    /// Starts `spec` as one service with `replicas` tasks and waits until
    /// every slot's task runs (or ran and exited: the caller's readiness
    /// check tells why). A task a node rejected (image not pulled) removes
    /// the service and fails, naming the node and the registry's error.
    pub async fn start_replicated(
        &self,
        spec: &InstanceSpec,
        replicas: u32,
    ) -> Result<Vec<Instance>, RuntimeError> {
        spec.validate()?;
        let service_id = self.create_service(spec, replicas, false).await?;
        match self.wait_started(&service_id, spec, replicas).await {
            Ok(instances) => Ok(instances),
            Err(e) => {
                self.delete_quietly(&service_id).await;
                Err(e)
            }
        }
    }

    async fn create_service(
        &self,
        spec: &InstanceSpec,
        replicas: u32,
        oneoff: bool,
    ) -> Result<String, RuntimeError> {
        let mut body = service::service_spec(spec, replicas, oneoff);
        if let Some(container) = body
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
        {
            container.image = Some(self.node_image(&spec.image));
        }
        let created = self
            .docker
            .create_service(body, self.credentials())
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 409,
                    message,
                } => RuntimeError::Conflict(message),
                e => backend("create swarm service", e),
            })?;
        let id = created.id.ok_or_else(|| RuntimeError::Backend {
            op: "create swarm service",
            message: "the engine returned no service id".to_owned(),
        })?;
        for warning in created.warnings.unwrap_or_default() {
            tracing::warn!(
                service = spec.name,
                warning,
                "swarm service created with a warning"
            );
        }
        Ok(id)
    }

    async fn wait_started(
        &self,
        service_id: &str,
        spec: &InstanceSpec,
        replicas: u32,
    ) -> Result<Vec<Instance>, RuntimeError> {
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            let nodes = NodeAddrs::new(&self.raw_nodes().await?);
            let slots = tasks::by_slot(self.service_tasks(service_id).await?);
            let mut instances = Vec::new();
            let mut waiting = Vec::new();
            for slot in 1..=replicas {
                let newest = slots.get(&slot).and_then(|t| t.last());
                match newest {
                    Some(task) if tasks::is_rejected(task) => {
                        return Err(self
                            .rejected(task, &self.node_image(&spec.image), &nodes)
                            .await);
                    }
                    Some(task) if tasks::state(task) == TaskState::RUNNING => {
                        let addr = tasks::task_addr(task, spec.port, &nodes);
                        if spec.port.is_some() && addr.is_none() {
                            waiting.push(format!("{slot}: running, port not published yet"));
                            continue;
                        }
                        instances.push(self.slot_instance(
                            service_id,
                            spec,
                            slot,
                            Some(task),
                            &nodes,
                        ));
                    }
                    // Ran and ended: the readiness check reports why.
                    Some(task) if tasks::is_terminal(task) => {
                        instances.push(self.slot_instance(
                            service_id,
                            spec,
                            slot,
                            Some(task),
                            &nodes,
                        ));
                    }
                    Some(task) => waiting.push(format!(
                        "{slot}: {} on {}",
                        tasks::state(task),
                        nodes.describe(task.node_id.as_deref().unwrap_or_default())
                    )),
                    None => waiting.push(format!("{slot}: not scheduled")),
                }
            }
            if waiting.is_empty() {
                return Ok(instances);
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Backend {
                    op: "start swarm service",
                    message: format!(
                        "{} not running after {}s (task {})",
                        spec.name,
                        self.config.start_timeout.as_secs(),
                        waiting.join(", ")
                    ),
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The error for a task its node rejected. When the node could not pull
    /// the image, the manager pulls it with the same credentials to learn
    /// the registry's own answer (the task only says "No such image").
    async fn rejected(&self, task: &Task, image: &str, nodes: &NodeAddrs) -> RuntimeError {
        let node = nodes.describe(task.node_id.as_deref().unwrap_or_default());
        let err = task
            .status
            .as_ref()
            .and_then(|s| s.err.clone())
            .unwrap_or_else(|| "rejected".to_owned());
        let message = if err.contains("No such image") || err.contains("pull") {
            match self.registry_error(image).await {
                Some(registry) => format!("node {node} cannot pull {image}: {registry}"),
                None => format!(
                    "node {node} cannot pull {image} ({err}); the manager can: check that node's access to the registry"
                ),
            }
        } else {
            format!("node {node} rejected the task: {err}")
        };
        RuntimeError::Backend {
            op: "start swarm service",
            message,
        }
    }

    /// What the registry answers the manager for `image`, with the
    /// configured credentials; `None` when the pull works.
    async fn registry_error(&self, image: &str) -> Option<String> {
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut pull = self
            .docker
            .create_image(Some(options), None, self.credentials());
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Some(one_line(&e));
                    }
                }
                Err(DockerError::DockerResponseServerError { message, .. }) => {
                    return Some(one_line(&message))
                }
                Err(e) => return Some(one_line(&e.to_string())),
            }
        }
        None
    }

    fn slot_instance(
        &self,
        service_id: &str,
        spec: &InstanceSpec,
        slot: u32,
        task: Option<&Task>,
        nodes: &NodeAddrs,
    ) -> Instance {
        let mut labels = spec.labels.clone();
        labels.insert(OWNER_LABEL.to_owned(), "true".to_owned());
        if let Some(port) = spec.port {
            labels.insert(crate::spec::PORT_LABEL.to_owned(), port.to_string());
        }
        nodes.label_node(&mut labels, task);
        Instance {
            id: tasks::instance_id(service_id, slot),
            name: tasks::instance_name(&service::service_name(&spec.name), slot),
            image: spec.image.clone(),
            labels,
            endpoint: task.and_then(|t| tasks::task_addr(t, spec.port, nodes)),
            running: task.is_some_and(|t| tasks::state(t) == TaskState::RUNNING),
        }
    }

    async fn raw_nodes(&self) -> Result<Vec<Node>, RuntimeError> {
        self.docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| backend("list swarm nodes", e))
    }

    async fn service_tasks(&self, service_id: &str) -> Result<Vec<Task>, RuntimeError> {
        let filters = HashMap::from([("service".to_owned(), vec![service_id.to_owned()])]);
        let tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| backend("list swarm tasks", e))?;
        // The service filter also matches by name prefix: keep exact ids.
        Ok(tasks
            .into_iter()
            .filter(|t| t.service_id.as_deref() == Some(service_id))
            .collect())
    }

    async fn inspect_service(&self, service_id: &str) -> Result<Option<Service>, RuntimeError> {
        match self
            .docker
            .inspect_service(service_id, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(backend("inspect swarm service", e)),
        }
    }

    /// Sets the replicas of a service (Swarm picks which tasks go when it
    /// shrinks).
    pub async fn scale(&self, service_id: &str, replicas: u32) -> Result<(), RuntimeError> {
        // The version changes with every update: retry on a lost race.
        for _ in 0..5 {
            let service = self
                .inspect_service(service_id)
                .await?
                .ok_or_else(|| RuntimeError::NotFound(service_id.to_owned()))?;
            let spec = service.spec.unwrap_or_default();
            if service::replicas_of(&spec) == replicas {
                return Ok(());
            }
            let version = service.version.and_then(|v| v.index).unwrap_or_default();
            let options = UpdateServiceOptions {
                version: i32::try_from(version).unwrap_or(i32::MAX),
                registry_auth_from: "spec".to_owned(),
                rollback: None,
            };
            match self
                .docker
                .update_service(
                    service_id,
                    service::with_replicas(spec, replicas),
                    options,
                    self.credentials(),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(DockerError::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") =>
                {
                    continue
                }
                Err(e) => return Err(map_err("scale swarm service", service_id, e)),
            }
        }
        Err(RuntimeError::Conflict(format!(
            "service {service_id} kept changing while scaling it"
        )))
    }

    /// Deletes a service and its tasks; returns once none of its tasks
    /// runs (bounded wait). Missing is `Ok`.
    pub async fn remove_service(&self, service_id: &str) -> Result<(), RuntimeError> {
        match self.docker.delete_service(service_id).await {
            Ok(()) => {
                self.wait_tasks_ended(service_id, REMOVE_WAIT).await;
                Ok(())
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err("remove swarm service", service_id, e)),
        }
    }

    async fn delete_quietly(&self, service_id: &str) {
        if let Err(e) = self.remove_service(service_id).await {
            tracing::warn!(service = service_id, error = %e, "could not remove swarm service");
        }
    }

    /// The newest task of a slot (`None` when the slot has none yet).
    async fn slot_task(&self, service_id: &str, slot: u32) -> Result<Option<Task>, RuntimeError> {
        let mut slots = tasks::by_slot(self.service_tasks(service_id).await?);
        Ok(slots.remove(&slot).and_then(|mut t| t.pop()))
    }

    /// The swarm's nodes, with the number of berth instances on each.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RuntimeError> {
        let raw = self.raw_nodes().await?;
        let mut count: HashMap<String, u32> = HashMap::new();
        for instance in self.owned_tasks().await? {
            if let Some(node) = instance.1.as_ref().and_then(|t| t.node_id.clone()) {
                *count.entry(node).or_default() += 1;
            }
        }
        let mut nodes: Vec<NodeInfo> = raw
            .iter()
            .map(|n| {
                let id = n.id.clone().unwrap_or_default();
                NodeInfo::from_engine(n, count.get(&id).copied().unwrap_or(0))
            })
            .collect();
        nodes.sort_by(|a, b| (a.role, &a.hostname, &a.id).cmp(&(b.role, &b.hostname, &b.id)));
        Ok(nodes)
    }

    /// Finds a node by id, unique id prefix or hostname.
    pub async fn find_node(&self, query: &str) -> Result<NodeInfo, RuntimeError> {
        let nodes = self.nodes().await?;
        if let Some(n) = nodes.iter().find(|n| n.is_named(query)) {
            return Ok(n.clone());
        }
        let matching: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| !query.is_empty() && n.id.starts_with(query))
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RuntimeError::NotFound(format!("node {query}"))),
            _ => Err(RuntimeError::Conflict(format!(
                "{query} matches {} nodes: give more of the id",
                matching.len()
            ))),
        }
    }

    /// Sets a node's availability (Swarm itself stops the tasks of a
    /// drained node; berth's drain moves them first, see the server).
    pub async fn set_availability(
        &self,
        node_id: &str,
        availability: Availability,
    ) -> Result<(), RuntimeError> {
        for _ in 0..5 {
            let node = self
                .docker
                .inspect_node(node_id)
                .await
                .map_err(|e| map_err("inspect swarm node", node_id, e))?;
            let mut spec = node.spec.unwrap_or_default();
            spec.availability = Some(availability.to_engine());
            let version = node.version.and_then(|v| v.index).unwrap_or_default();
            let options = UpdateNodeOptions {
                version: i64::try_from(version).unwrap_or(i64::MAX),
            };
            match self.docker.update_node(node_id, spec, options).await {
                Ok(()) => return Ok(()),
                Err(DockerError::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") =>
                {
                    continue
                }
                Err(e) => return Err(map_err("update swarm node", node_id, e)),
            }
        }
        Err(RuntimeError::Conflict(format!(
            "node {node_id} kept changing while updating it"
        )))
    }

    /// Every berth instance with the node its current task is on (`None`
    /// while not placed).
    pub async fn placements(&self) -> Result<Vec<(Instance, Option<String>)>, RuntimeError> {
        Ok(self
            .owned_tasks()
            .await?
            .into_iter()
            .map(|(instance, task)| {
                let node = task.and_then(|t| t.node_id).filter(|n| !n.is_empty());
                (instance, node)
            })
            .collect())
    }

    /// Every berth service's slots with their newest task (if any).
    async fn owned_tasks(&self) -> Result<Vec<(Instance, Option<Task>)>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{OWNER_LABEL}=true")])]);
        let services = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                status: None,
            }))
            .await
            .map_err(|e| backend("list swarm services", e))?;
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let filters = HashMap::from([("service".to_owned(), ids)]);
        let all_tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| backend("list swarm tasks", e))?;
        let mut per_service: HashMap<String, Vec<Task>> = HashMap::new();
        for task in all_tasks {
            if let Some(service) = task.service_id.clone() {
                per_service.entry(service).or_default().push(task);
            }
        }
        let nodes = NodeAddrs::new(&self.raw_nodes().await?);
        let mut out = Vec::new();
        for service in services {
            let Some(id) = service.id.clone() else {
                continue;
            };
            let spec = service.spec.clone().unwrap_or_default();
            let replicas = service::replicas_of(&spec);
            let labels: BTreeMap<String, String> = spec
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let image = spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .map(|i| strip_digest(&i).to_owned())
                .unwrap_or_default();
            let name = spec.name.clone().unwrap_or_default();
            let port = tasks::port_of(&labels);
            let mut slots = tasks::by_slot(per_service.remove(&id).unwrap_or_default());
            // The slots Swarm keeps running (after a scale-down they need
            // not be 1..=replicas); a stopped service (0 replicas) still
            // lists the slots it had; a new one its slots to come.
            let live: Vec<u32> = slots
                .iter()
                .filter(|(_, t)| t.last().is_some_and(tasks::desired_running))
                .map(|(slot, _)| *slot)
                .collect();
            let wanted: Vec<u32> = if replicas == 0 {
                slots.keys().copied().collect()
            } else if live.is_empty() {
                (1..=replicas).collect()
            } else {
                live
            };
            for slot in wanted {
                let task = slots.remove(&slot).and_then(|mut t| t.pop());
                let running = task
                    .as_ref()
                    .is_some_and(|t| tasks::state(t) == TaskState::RUNNING && replicas > 0);
                let mut labels = labels.clone();
                nodes.label_node(&mut labels, task.as_ref());
                let instance = Instance {
                    id: tasks::instance_id(&id, slot),
                    name: tasks::instance_name(&name, slot),
                    image: image.clone(),
                    labels,
                    endpoint: task
                        .as_ref()
                        .and_then(|t| tasks::task_addr(t, port, &nodes)),
                    running,
                };
                let task = task.filter(|t| tasks::desired_running(t) && replicas > 0);
                out.push((instance, task));
            }
        }
        Ok(out)
    }

    /// Waits until Swarm wants at most `replicas` slots running.
    async fn wait_scaled_down(&self, service_id: &str, replicas: u32, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.service_tasks(service_id).await {
                Ok(all) => {
                    let live = tasks::by_slot(all)
                        .values()
                        .filter(|t| {
                            t.last().is_some_and(|t| {
                                tasks::desired_running(t) && !tasks::is_terminal(t)
                            })
                        })
                        .count();
                    if live <= replicas as usize {
                        return;
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn wait_tasks_ended(&self, service_id: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.service_tasks(service_id).await {
                Ok(tasks) if tasks.iter().all(tasks::is_terminal) => return,
                Ok(_) => {}
                Err(_) => return,
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn run_to_end(
        &self,
        service_id: &str,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let task = loop {
            if let Some(task) = self.slot_task(service_id, 1).await? {
                if tasks::is_rejected(&task) {
                    let nodes = NodeAddrs::new(&self.raw_nodes().await?);
                    return Err(self
                        .rejected(&task, &self.node_image(&spec.image), &nodes)
                        .await);
                }
                if tasks::is_terminal(&task) {
                    break task;
                }
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::OneOffTimeout {
                    name: spec.name.clone(),
                    after: timeout,
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        };
        let duration = started.elapsed();
        let exit_code = exit_code(&task);
        let mut output = VecDeque::new();
        let mut dropped_lines = 0;
        let task_id = task.id.clone().unwrap_or_default();
        let mut logs = self.task_logs(&task_id, LogOptions::default());
        while let Some(chunk) = logs.next().await {
            if output.len() == ONEOFF_MAX_LINES {
                output.pop_front();
                dropped_lines += 1;
            }
            output.push_back(chunk?);
        }
        Ok(OneOffOutcome {
            exit_code,
            oom_killed: false,
            output: output.into(),
            dropped_lines,
            duration,
        })
    }

    /// Waits until the one-off service's task has a container (running or
    /// already ended); a task its node rejected is the node's error.
    async fn wait_oneoff_started(
        &self,
        service_id: &str,
        spec: &InstanceSpec,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Task, RuntimeError> {
        loop {
            if let Some(task) = self.slot_task(service_id, 1).await? {
                if tasks::is_rejected(&task) {
                    let nodes = NodeAddrs::new(&self.raw_nodes().await?);
                    return Err(self
                        .rejected(&task, &self.node_image(&spec.image), &nodes)
                        .await);
                }
                if tasks::state(&task) == TaskState::RUNNING || tasks::is_terminal(&task) {
                    return Ok(task);
                }
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::OneOffTimeout {
                    name: spec.name.clone(),
                    after: timeout,
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Runs the one-off service's task to its end, following its logs:
    /// each line goes to `output` as it comes. The follow stream of a
    /// Swarm task need not end with the task, so the task's state is
    /// polled beside it; once the task ended, the lines the follow stream
    /// had not delivered yet are read from the task's whole log (same
    /// order: the node's log file), past the count already sent.
    async fn follow_to_end(
        &self,
        service_id: &str,
        spec: &InstanceSpec,
        output: tokio::sync::mpsc::Sender<LogChunk>,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let first = self
            .wait_oneoff_started(service_id, spec, deadline, timeout)
            .await?;
        let task_id = first.id.clone().unwrap_or_default();
        let mut tail: VecDeque<LogChunk> = VecDeque::new();
        let mut dropped_lines = 0usize;
        let mut sent = 0usize;
        let mut keep = |chunk: LogChunk, tail: &mut VecDeque<LogChunk>| {
            if tail.len() == ONEOFF_MAX_LINES {
                tail.pop_front();
                dropped_lines += 1;
            }
            tail.push_back(chunk);
        };
        let mut follow = self.task_logs(
            &task_id,
            LogOptions {
                follow: true,
                ..LogOptions::default()
            },
        );
        let mut following = true;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                item = follow.next(), if following => match item {
                    Some(Ok(chunk)) => {
                        // A receiver that went away does not stop the run.
                        let _ = output.send(chunk.clone()).await;
                        keep(chunk, &mut tail);
                        sent += 1;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(task = task_id, error = %e, "swarm task log stream broke; the rest is read at the end");
                        following = false;
                    }
                    None => following = false,
                },
                _ = poll.tick() => {
                    match self.slot_task(service_id, 1).await? {
                        Some(task) if tasks::is_terminal(&task) => break task,
                        _ => {}
                    }
                    if Instant::now() >= deadline {
                        return Err(RuntimeError::OneOffTimeout {
                            name: spec.name.clone(),
                            after: timeout,
                        });
                    }
                }
            }
        };
        drop(follow);
        let duration = started.elapsed();
        let mut rest = self.task_logs(&task_id, LogOptions::default()).skip(sent);
        while let Some(chunk) = rest.next().await {
            let chunk = chunk?;
            let _ = output.send(chunk.clone()).await;
            keep(chunk, &mut tail);
        }
        Ok(OneOffOutcome {
            exit_code: exit_code(&ended),
            oom_killed: false,
            output: tail.into(),
            dropped_lines,
            duration,
        })
    }

    fn task_logs(
        &self,
        task_id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let options = LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
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
        let raw = self.docker.task_logs(task_id, Some(options)).boxed();
        frames_to_lines(raw, opts.since, task_id.to_owned())
    }
}

/// The exit code of an ended task (-1 when its container never ran).
fn exit_code(task: &Task) -> i64 {
    task.status
        .as_ref()
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.exit_code)
        .unwrap_or(-1)
}

/// Why `run_attached` refuses a stdin on Swarm.
pub const STDIN_UNSUPPORTED: &str = "stdin cannot be forwarded to a run on --runtime swarm (its task runs on any node, reached only through the swarm's logs): run it with --no-stdin or --detach, or with stdin from /dev/null";

/// The services the instance ids belong to, each once, in order.
fn services_of(ids: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for id in ids {
        let (service_id, _) = tasks::parse_instance_id(id);
        if !out.contains(&service_id) {
            out.push(service_id);
        }
    }
    out
}

#[async_trait::async_trait]
impl Runtime for SwarmRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let mut instances = self.start_replicated(spec, 1).await?;
        instances.pop().ok_or_else(|| RuntimeError::Backend {
            op: "start swarm service",
            message: format!("{} started no task", spec.name),
        })
    }

    /// One service with `replicas` slots (Swarm spreads them over the nodes).
    async fn start_replicas(
        &self,
        spec: &InstanceSpec,
        replicas: u32,
    ) -> Result<Vec<Instance>, RuntimeError> {
        self.start_replicated(spec, replicas.max(1)).await
    }

    /// The slots of one service stop together (scaled to 0 once).
    async fn stop_all(&self, ids: &[String], grace: Duration) -> Result<(), RuntimeError> {
        for service_id in services_of(ids) {
            let Some(service) = self.inspect_service(service_id).await? else {
                continue;
            };
            if service::replicas_of(&service.spec.unwrap_or_default()) == 0 {
                continue;
            }
            self.scale(service_id, 0).await?;
            self.wait_tasks_ended(
                service_id,
                grace.max(service::DEFAULT_STOP_GRACE) + STOP_SLACK,
            )
            .await;
        }
        Ok(())
    }

    /// The slots of one service go together (the service is deleted once).
    async fn remove_all(&self, ids: &[String]) -> Result<(), RuntimeError> {
        for service_id in services_of(ids) {
            self.remove_service(service_id).await?;
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        let (service_id, slot) = tasks::parse_instance_id(id);
        let service = self
            .inspect_service(service_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let spec = service.spec.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            spec.labels.unwrap_or_default().into_iter().collect();
        let name = tasks::instance_name(&spec.name.unwrap_or_default(), slot);
        let slots = tasks::by_slot(self.service_tasks(service_id).await?);
        let nodes = NodeAddrs::new(&self.raw_nodes().await?);
        let slot_tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or_default();
        Ok(tasks::slot_state(id, &name, slot_tasks, labels, &nodes))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (service_id, _) = tasks::parse_instance_id(id);
        let service = self
            .inspect_service(service_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let replicas = service::replicas_of(&service.spec.unwrap_or_default());
        if replicas == 0 {
            return Ok(());
        }
        self.scale(service_id, replicas - 1).await?;
        if replicas == 1 {
            self.wait_tasks_ended(
                service_id,
                grace.max(service::DEFAULT_STOP_GRACE) + STOP_SLACK,
            )
            .await;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let (service_id, slot) = tasks::parse_instance_id(id);
        let Some(service) = self.inspect_service(service_id).await? else {
            return Ok(());
        };
        let replicas = service::replicas_of(&service.spec.unwrap_or_default());
        if replicas <= 1 || !id.contains('.') {
            return self.remove_service(service_id).await;
        }
        // One slot of several: only when that slot still runs something.
        match self.slot_task(service_id, slot).await? {
            Some(task) if tasks::desired_running(&task) => {
                self.scale(service_id, replicas - 1).await?;
                self.wait_scaled_down(service_id, replicas - 1, REMOVE_WAIT)
                    .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        Ok(self
            .owned_tasks()
            .await?
            .into_iter()
            .map(|(instance, _)| instance)
            .collect())
    }

    fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let this = self.clone();
        let id = id.to_owned();
        stream::once(async move {
            let (service_id, slot) = tasks::parse_instance_id(&id);
            match this.slot_task(service_id, slot).await {
                Ok(Some(task)) => this.task_logs(task.id.as_deref().unwrap_or_default(), opts),
                Ok(None) => stream::empty().boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        spec.validate()?;
        let service_id = self.create_service(spec, 1, true).await?;
        let result = self.run_to_end(&service_id, spec, timeout).await;
        self.delete_quietly(&service_id).await;
        result
    }

    /// A one-off service whose output is streamed from its task's logs as
    /// it comes; the exit code is the task's. No stdin: a Swarm task's
    /// container is on whichever node runs it, and the manager's API has
    /// no attach for it, so a stdin is refused ([`STDIN_UNSUPPORTED`])
    /// before anything is created.
    async fn run_attached(
        &self,
        spec: &InstanceSpec,
        io: crate::runtime::Attach,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        if io.stdin.is_some() {
            return Err(RuntimeError::Backend {
                op: "run",
                message: STDIN_UNSUPPORTED.to_owned(),
            });
        }
        spec.validate()?;
        let service_id = self.create_service(spec, 1, true).await?;
        let result = self
            .follow_to_end(&service_id, spec, io.output, timeout)
            .await;
        self.delete_quietly(&service_id).await;
        result
    }
}

/// The manager engine's image store (see the module docs).
#[async_trait::async_trait]
impl crate::Images for SwarmRuntime {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        self.images.exists(image).await
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        crate::Images::remove(&self.images, image).await
    }
}

/// Fails unless the engine is an active swarm manager, with what to do.
async fn ensure_manager(docker: &Docker) -> Result<(), RuntimeError> {
    let info = docker
        .info()
        .await
        .map_err(|e| backend("connect to docker", e))?;
    let swarm = info.swarm.unwrap_or_default();
    let message = match (swarm.local_node_state, swarm.control_available) {
        (Some(LocalNodeState::ACTIVE), Some(true)) => return Ok(()),
        (Some(LocalNodeState::ACTIVE), _) => {
            "the docker engine is a swarm worker, not a manager: point DOCKER_HOST at a manager (or run `docker node promote` for this node on one)"
        }
        (Some(LocalNodeState::LOCKED), _) => {
            "the swarm is locked: run `docker swarm unlock` on this engine"
        }
        (Some(LocalNodeState::PENDING), _) => {
            "the docker engine is still joining a swarm: wait, then start berth again"
        }
        _ => "the docker engine is not a swarm manager: run `docker swarm init` on it (or `docker swarm join` it as a manager), or use --runtime docker",
    };
    Err(RuntimeError::Backend {
        op: "--runtime swarm",
        message: message.to_owned(),
    })
}

/// Whether a reference names its registry (`host.tld/x`, `host:5000/x`,
/// `localhost/x`), as Docker reads it.
fn has_registry_host(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

fn strip_digest(image: &str) -> &str {
    image.split_once('@').map_or(image, |(name, _)| name)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Engine log frames to one chunk per line (see [`LineSplitter`]).
fn frames_to_lines(
    raw: BoxStream<'static, Result<LogOutput, DockerError>>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    subject: String,
) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
    struct State {
        raw: BoxStream<'static, Result<LogOutput, DockerError>>,
        splitter: LineSplitter,
        ready: VecDeque<LogChunk>,
        done: bool,
    }
    let keep = move |c: &LogChunk| since.is_none_or(|s| c.ts >= s);
    let state = State {
        raw,
        splitter: LineSplitter::new(),
        ready: VecDeque::new(),
        done: false,
    };
    stream::unfold(state, move |mut st| {
        let subject = subject.clone();
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
                        st.ready.extend(lines.into_iter().filter(keep));
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(map_err("read swarm task logs", &subject, e)), st));
                    }
                    None => {
                        st.done = true;
                        let rest = st.splitter.finish();
                        st.ready.extend(rest.into_iter().filter(keep));
                    }
                }
            }
        }
    })
    .boxed()
}

fn backend(op: &'static str, e: DockerError) -> RuntimeError {
    RuntimeError::Backend {
        op,
        message: e.to_string(),
    }
}

fn map_err(op: &'static str, subject: &str, e: DockerError) -> RuntimeError {
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
    use super::has_registry_host;

    #[test]
    fn registry_hosts_are_told_from_repositories() {
        for named in [
            "10.0.0.5:5000/shop:1",
            "registry.example/x",
            "localhost/x:1",
        ] {
            assert!(has_registry_host(named), "{named}");
        }
        for bare in ["berth/shop-web:abc", "node:20", "busybox"] {
            assert!(!has_registry_host(bare), "{bare}");
        }
    }
}

//! Swarm tasks as berth instances.
//!
//! An instance of a Swarm service is one *slot* (`<service id>.<slot>`):
//! Swarm replaces a failed task by a new task in the same slot, so the slot
//! is what stays the same for the caller, and the slot's newest task tells
//! its state. The address is the task's node address and the host-mode port
//! Swarm published for it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use bollard::models::{Node, Task, TaskState};
use chrono::{DateTime, Utc};

use crate::spec::{Endpoint, InstanceState, InstanceStatus, PORT_LABEL};

/// The instance id of a slot.
/// The instance name of a slot: `<service name>-<slot>`, a DNS label
/// (at most 63 characters; no `.`, which Swarm's own task names use).
pub fn instance_name(service_name: &str, slot: u32) -> String {
    let suffix = format!("-{slot}");
    let keep = 63usize.saturating_sub(suffix.len()).min(service_name.len());
    format!("{}{suffix}", service_name[..keep].trim_end_matches('-'))
}

pub fn instance_id(service_id: &str, slot: u32) -> String {
    format!("{service_id}.{slot}")
}

/// Splits an instance id into service id and slot. A bare service id means
/// slot 1 (a one-replica service).
pub fn parse_instance_id(id: &str) -> (&str, u32) {
    match id.rsplit_once('.') {
        Some((service, slot)) => match slot.parse::<u32>() {
            Ok(slot) if !service.is_empty() => (service, slot),
            _ => (id, 1),
        },
        None => (id, 1),
    }
}

/// When a task was created (ordering within a slot).
pub fn created(task: &Task) -> Option<DateTime<Utc>> {
    task.created_at
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The tasks of one service by slot, oldest first in each slot.
pub fn by_slot(tasks: Vec<Task>) -> BTreeMap<u32, Vec<Task>> {
    let mut slots: BTreeMap<u32, Vec<Task>> = BTreeMap::new();
    for task in tasks {
        let Some(slot) = task.slot.and_then(|s| u32::try_from(s).ok()) else {
            continue;
        };
        slots.entry(slot).or_default().push(task);
    }
    for tasks in slots.values_mut() {
        tasks.sort_by_key(created);
    }
    slots
}

/// The task's state, `NEW` when it has none.
pub fn state(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .and_then(|s| s.state)
        .unwrap_or(TaskState::NEW)
}

/// Whether Swarm still wants this task to run (its desired state is not
/// shutdown or remove).
pub fn desired_running(task: &Task) -> bool {
    !matches!(
        task.desired_state,
        Some(TaskState::SHUTDOWN | TaskState::REMOVE)
    )
}

/// The task never ran because it could not be prepared on its node (the
/// image could not be pulled, a mount failed).
pub fn is_rejected(task: &Task) -> bool {
    state(task) == TaskState::REJECTED
}

/// The task is past running (exited, failed, shut down, rejected, ...).
pub fn is_terminal(task: &Task) -> bool {
    matches!(
        state(task),
        TaskState::COMPLETE
            | TaskState::SHUTDOWN
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

/// Node id → address (`Status.Addr`, or the manager address when a manager
/// reports 0.0.0.0) and hostname.
#[derive(Debug, Clone, Default)]
pub struct NodeAddrs(HashMap<String, (Option<IpAddr>, String)>);

impl NodeAddrs {
    pub fn new(nodes: &[Node]) -> Self {
        let mut map = HashMap::new();
        for node in nodes {
            let Some(id) = node.id.clone() else { continue };
            map.insert(id, (node_ip(node), hostname(node)));
        }
        Self(map)
    }

    pub fn ip(&self, node_id: &str) -> Option<IpAddr> {
        self.0.get(node_id).and_then(|(ip, _)| *ip)
    }

    /// A node's hostname.
    pub fn hostname(&self, node_id: &str) -> Option<&str> {
        self.0.get(node_id).map(|(_, host)| host.as_str())
    }

    /// `labels` with [`crate::NODE_LABEL`] set to the hostname of `task`'s
    /// node, when it has one.
    pub fn label_node(&self, labels: &mut BTreeMap<String, String>, task: Option<&Task>) {
        if let Some(host) = task
            .and_then(|t| t.node_id.as_deref())
            .and_then(|n| self.hostname(n))
        {
            labels.insert(crate::NODE_LABEL.to_owned(), host.to_owned());
        }
    }

    /// `hostname (address)` of a node, for messages.
    pub fn describe(&self, node_id: &str) -> String {
        match self.0.get(node_id) {
            Some((Some(ip), host)) => format!("{host} ({ip})"),
            Some((None, host)) => host.clone(),
            None if node_id.is_empty() => "no node".to_owned(),
            None => node_id.to_owned(),
        }
    }
}

/// A node's address: `Status.Addr`, else its manager address's host.
pub fn node_ip(node: &Node) -> Option<IpAddr> {
    let status = node
        .status
        .as_ref()
        .and_then(|s| s.addr.as_deref())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified());
    status.or_else(|| {
        let addr = node.manager_status.as_ref()?.addr.as_deref()?;
        addr.parse::<SocketAddr>().ok().map(|a| a.ip())
    })
}

pub fn hostname(node: &Node) -> String {
    node.description
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .unwrap_or_default()
}

/// The node address and host port serving `port` of a running task.
pub fn task_addr(task: &Task, port: Option<u16>, nodes: &NodeAddrs) -> Option<Endpoint> {
    if state(task) != TaskState::RUNNING {
        return None;
    }
    let port = port?;
    let published = task
        .status
        .as_ref()?
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.target_port == Some(i64::from(port)))?
        .published_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)?;
    let ip = nodes.ip(task.node_id.as_deref()?)?;
    Some(Endpoint::from(SocketAddr::new(ip, published)))
}

/// The instance port recorded in the service's labels.
pub fn port_of(labels: &BTreeMap<String, String>) -> Option<u16> {
    labels.get(PORT_LABEL).and_then(|p| p.parse().ok())
}

/// What `inspect` reports for a slot: the newest task decides; earlier
/// tasks of the slot count as restarts.
pub fn slot_state(
    id: &str,
    name: &str,
    tasks: &[Task],
    labels: BTreeMap<String, String>,
    nodes: &NodeAddrs,
) -> InstanceState {
    let newest = tasks.last();
    let restart_count = u32::try_from(tasks.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let Some(task) = newest else {
        return InstanceState {
            id: id.to_owned(),
            name: name.to_owned(),
            status: InstanceStatus::Pending,
            oom_killed: false,
            restart_count: 0,
            started_at: None,
            finished_at: None,
            error: None,
            labels,
            endpoint: None,
        };
    };
    let status_ts = task
        .status
        .as_ref()
        .and_then(|s| s.timestamp.as_deref())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    let exit_code = task
        .status
        .as_ref()
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.exit_code);
    let status = match state(task) {
        TaskState::RUNNING => InstanceStatus::Running,
        TaskState::COMPLETE => InstanceStatus::Exited {
            code: exit_code.unwrap_or(0),
        },
        TaskState::FAILED | TaskState::SHUTDOWN => InstanceStatus::Exited {
            code: exit_code.unwrap_or(-1),
        },
        // Never ran (e.g. the image could not be pulled on its node).
        TaskState::REJECTED => InstanceStatus::Exited { code: -1 },
        TaskState::REMOVE | TaskState::ORPHANED => InstanceStatus::Failed,
        // Not running yet: a replacement in a slot that ran before is a restart.
        _ if tasks.len() > 1 => InstanceStatus::Restarting,
        _ => InstanceStatus::Pending,
    };
    let started_at = tasks
        .iter()
        .rev()
        .find(|t| state(t) == TaskState::RUNNING || is_terminal(t))
        .and(status_ts)
        .filter(|_| status == InstanceStatus::Running);
    let finished_at = matches!(
        status,
        InstanceStatus::Exited { .. } | InstanceStatus::Failed
    )
    .then_some(status_ts)
    .flatten();
    let error = task
        .status
        .as_ref()
        .and_then(|s| s.err.clone())
        .filter(|e| !e.is_empty())
        .map(|e| match task.node_id.as_deref() {
            Some(node) if !node.is_empty() => format!("on node {}: {e}", nodes.describe(node)),
            _ => e,
        });
    let port = port_of(&labels);
    let mut labels = labels;
    nodes.label_node(&mut labels, Some(task));
    InstanceState {
        id: id.to_owned(),
        name: name.to_owned(),
        status,
        oom_killed: false,
        restart_count,
        started_at,
        finished_at,
        error,
        endpoint: task_addr(task, port, nodes),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerStatus, EndpointPortConfig, NodeDescription, NodeStatus, PortStatus, TaskStatus,
    };

    fn task(slot: i64, created: &str, state: TaskState, node: &str, port: Option<i64>) -> Task {
        Task {
            id: Some(format!("t{slot}{created}")),
            slot: Some(slot),
            node_id: Some(node.to_owned()),
            created_at: Some(created.to_owned()),
            desired_state: Some(TaskState::RUNNING),
            status: Some(TaskStatus {
                state: Some(state),
                timestamp: Some(created.to_owned()),
                port_status: port.map(|p| PortStatus {
                    ports: Some(vec![EndpointPortConfig {
                        target_port: Some(3000),
                        published_port: Some(p),
                        ..Default::default()
                    }]),
                }),
                container_status: Some(ContainerStatus {
                    exit_code: Some(if state == TaskState::FAILED { 3 } else { 0 }),
                    ..Default::default()
                }),
                err: (state == TaskState::REJECTED).then(|| "No such image: x".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn nodes() -> NodeAddrs {
        let node = |id: &str, host: &str, addr: &str| Node {
            id: Some(id.into()),
            description: Some(NodeDescription {
                hostname: Some(host.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addr: Some(addr.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        NodeAddrs::new(&[
            node("n1", "manager", "10.0.0.11"),
            node("n2", "worker", "10.0.0.12"),
        ])
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([(PORT_LABEL.to_owned(), "3000".to_owned())])
    }

    #[test]
    fn instance_names_are_dns_labels() {
        assert_eq!(instance_name("shop-web", 2), "shop-web-2");
        let long = "a".repeat(63);
        let n = instance_name(&long, 12);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("a-12") && !n.contains('.'), "{n}");
    }

    #[test]
    fn instance_ids_round_trip() {
        assert_eq!(parse_instance_id(&instance_id("abc", 2)), ("abc", 2));
        assert_eq!(parse_instance_id("abc"), ("abc", 1));
        assert_eq!(parse_instance_id("abc.x"), ("abc.x", 1));
    }

    #[test]
    fn the_newest_task_of_a_slot_decides_and_older_ones_are_restarts() {
        let tasks = vec![
            task(
                1,
                "2024-05-01T10:00:02.5Z",
                TaskState::RUNNING,
                "n2",
                Some(30001),
            ),
            task(1, "2024-05-01T10:00:01Z", TaskState::FAILED, "n1", None),
            task(
                2,
                "2024-05-01T10:00:01Z",
                TaskState::RUNNING,
                "n1",
                Some(30002),
            ),
        ];
        let slots = by_slot(tasks);
        assert_eq!(slots.len(), 2);
        let s1 = slot_state("s.1", "web.1", &slots[&1], labels(), &nodes());
        assert_eq!(s1.status, InstanceStatus::Running);
        assert_eq!(s1.restart_count, 1);
        assert_eq!(s1.endpoint, Some("10.0.0.12:30001".parse().expect("addr")));
        let s2 = slot_state("s.2", "web.2", &slots[&2], labels(), &nodes());
        assert_eq!(s2.endpoint, Some("10.0.0.11:30002".parse().expect("addr")));
        assert_eq!(s2.restart_count, 0);
    }

    #[test]
    fn failed_and_rejected_tasks_report_code_and_node() {
        let failed = [task(
            1,
            "2024-05-01T10:00:01Z",
            TaskState::FAILED,
            "n1",
            None,
        )];
        let s = slot_state("s.1", "web.1", &failed, labels(), &nodes());
        assert_eq!(s.status, InstanceStatus::Exited { code: 3 });
        assert!(s.finished_at.is_some());
        assert_eq!(s.endpoint, None);
        let rejected = [task(
            1,
            "2024-05-01T10:00:01Z",
            TaskState::REJECTED,
            "n2",
            None,
        )];
        let s = slot_state("s.1", "web.1", &rejected, labels(), &nodes());
        assert_eq!(s.status, InstanceStatus::Exited { code: -1 });
        assert_eq!(
            s.error.as_deref(),
            Some("on node worker (10.0.0.12): No such image: x")
        );
    }

    #[test]
    fn a_replacement_not_yet_running_is_restarting() {
        let tasks = vec![
            task(1, "2024-05-01T10:00:01Z", TaskState::FAILED, "n1", None),
            task(1, "2024-05-01T10:00:05Z", TaskState::PREPARING, "n1", None),
        ];
        let slots = by_slot(tasks);
        let s = slot_state("s.1", "web.1", &slots[&1], labels(), &nodes());
        assert_eq!(s.status, InstanceStatus::Restarting);
        let first = [task(
            1,
            "2024-05-01T10:00:01Z",
            TaskState::PENDING,
            "",
            None,
        )];
        let s = slot_state("s.1", "web.1", &first, labels(), &nodes());
        assert_eq!(s.status, InstanceStatus::Pending);
        assert_eq!(s.error, None);
    }

    #[test]
    fn a_manager_reporting_no_address_uses_its_manager_address() {
        let node = Node {
            id: Some("m".into()),
            status: Some(NodeStatus {
                addr: Some("0.0.0.0".into()),
                ..Default::default()
            }),
            manager_status: Some(bollard::models::ManagerStatus {
                addr: Some("10.0.0.11:2377".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(node_ip(&node), Some("10.0.0.11".parse().expect("ip")));
    }
}

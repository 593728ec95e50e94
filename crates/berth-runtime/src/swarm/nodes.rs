//! The nodes of a swarm as berth shows them (`berth nodes list`), and their
//! availability (what `berth nodes drain|activate` changes).

use std::net::IpAddr;

use bollard::models::{Node, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState};

use super::tasks::{hostname, node_ip};

/// Whether Swarm may place tasks on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// New tasks may be placed there.
    Active,
    /// No new tasks; the running ones stay.
    Pause,
    /// No tasks: Swarm stops those running there.
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    pub(crate) fn to_engine(self) -> NodeSpecAvailabilityEnum {
        match self {
            Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
            Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
            Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
        }
    }

    fn from_engine(a: Option<NodeSpecAvailabilityEnum>) -> Self {
        match a {
            Some(NodeSpecAvailabilityEnum::PAUSE) => Availability::Pause,
            Some(NodeSpecAvailabilityEnum::DRAIN) => Availability::Drain,
            _ => Availability::Active,
        }
    }
}

/// One node of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// The address tasks' published ports are reached on.
    pub address: Option<IpAddr>,
    /// `manager` or `worker`.
    pub role: &'static str,
    /// `ready`, `down`, `disconnected` or `unknown`.
    pub status: &'static str,
    pub availability: Availability,
    /// The manager currently leading the swarm.
    pub leader: bool,
    /// berth instances whose current task runs (or is starting) there.
    pub instances: u32,
}

impl NodeInfo {
    pub(crate) fn from_engine(node: &Node, instances: u32) -> Self {
        let spec = node.spec.clone().unwrap_or_default();
        let role = match spec.role {
            Some(NodeSpecRoleEnum::MANAGER) => "manager",
            _ => "worker",
        };
        let status = match node.status.as_ref().and_then(|s| s.state) {
            Some(NodeState::READY) => "ready",
            Some(NodeState::DOWN) => "down",
            Some(NodeState::DISCONNECTED) => "disconnected",
            _ => "unknown",
        };
        NodeInfo {
            id: node.id.clone().unwrap_or_default(),
            hostname: hostname(node),
            address: node_ip(node),
            role,
            status,
            availability: Availability::from_engine(spec.availability),
            leader: node
                .manager_status
                .as_ref()
                .and_then(|m| m.leader)
                .unwrap_or(false),
            instances,
        }
    }

    /// Whether `query` names this node: its id, a unique id prefix is
    /// resolved by the caller, or its hostname.
    pub fn is_named(&self, query: &str) -> bool {
        self.id == query || self.hostname == query
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ManagerStatus, NodeDescription, NodeSpec, NodeStatus};

    #[test]
    fn engine_nodes_map_to_berth_words() {
        let node = Node {
            id: Some("abc".into()),
            spec: Some(NodeSpec {
                role: Some(NodeSpecRoleEnum::MANAGER),
                availability: Some(NodeSpecAvailabilityEnum::DRAIN),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some("box-1".into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                addr: Some("10.1.2.3".into()),
                ..Default::default()
            }),
            manager_status: Some(ManagerStatus {
                leader: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = NodeInfo::from_engine(&node, 2);
        assert_eq!(info.role, "manager");
        assert_eq!(info.status, "ready");
        assert_eq!(info.availability, Availability::Drain);
        assert_eq!(info.address, Some("10.1.2.3".parse().expect("ip")));
        assert!(info.leader);
        assert_eq!(info.instances, 2);
        assert!(info.is_named("box-1") && info.is_named("abc") && !info.is_named("ab"));
    }
}

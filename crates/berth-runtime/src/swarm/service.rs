//! The Swarm service an [`InstanceSpec`] becomes: replicated, endpoint mode
//! dnsrr (no VIP: the kernels berth runs on may have no IPVS), the instance
//! port published in host mode on whichever node runs the task (ephemeral
//! port, read back from the task), berth's labels on the service and on
//! every task's container, and the same hardening as the Docker runtime as
//! far as Swarm can express it.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};

use crate::docker::{CAP_ADD, LOG_MAX_FILE, LOG_MAX_SIZE};
use crate::spec::{InstanceSpec, RestartPolicy, OWNER_LABEL, PORT_LABEL};

/// Label on services berth made for a one-off run (never adopted as an app
/// instance).
pub const ONEOFF_LABEL: &str = "dev.berth.oneoff";

/// Default stop grace of a task (what `stop` asks for is applied by
/// updating the service first).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The service spec for `spec` with `replicas` tasks. A one-off publishes
/// no port and never restarts.
pub fn service_spec(spec: &InstanceSpec, replicas: u32, oneoff: bool) -> ServiceSpec {
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
    if oneoff {
        labels.insert(ONEOFF_LABEL.to_owned(), "true".to_owned());
    }
    let restart = if oneoff {
        RestartPolicy::Never
    } else {
        spec.restart
    };
    let restart_policy = match restart {
        RestartPolicy::Never => TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            ..Default::default()
        },
        RestartPolicy::OnFailure { max_retries } => TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
            max_attempts: Some(i64::from(max_retries)),
            delay: Some(nanos(Duration::from_secs(1))),
            ..Default::default()
        },
        RestartPolicy::Always => TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(nanos(Duration::from_secs(1))),
            ..Default::default()
        },
    };
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
    let memory = spec
        .limits
        .memory_bytes
        .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.clone()),
        labels: Some(labels.clone()),
        // The image's entrypoint is kept; only its command is replaced.
        args: spec.command.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        init: Some(true),
        capability_drop: Some(vec!["ALL".to_owned()]),
        capability_add: Some(CAP_ADD.iter().map(|c| format!("CAP_{c}")).collect()),
        stop_grace_period: Some(nanos(DEFAULT_STOP_GRACE)),
        mounts: (!mounts.is_empty()).then_some(mounts),
        tty: Some(false),
        open_stdin: Some(false),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: spec.limits.nano_cpus,
                memory_bytes: memory,
                pids: spec.limits.pids,
            }),
            ..Default::default()
        }),
        restart_policy: Some(restart_policy),
        log_driver: Some(TaskSpecLogDriver {
            name: Some("json-file".to_owned()),
            options: Some(HashMap::from([
                ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
            ])),
        }),
        ..Default::default()
    };
    let ports = port.map(|p| {
        vec![EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(i64::from(p)),
            // No published port: each task gets an ephemeral one on its node.
            published_port: None,
            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            name: None,
        }]
    });
    ServiceSpec {
        name: Some(service_name(&spec.name)),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(replicas)),
            }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports,
        }),
        ..Default::default()
    }
}

/// Longest service name Swarm accepts (a DNS label).
pub const MAX_SERVICE_NAME: usize = 63;

/// The Swarm service name of an instance name: Swarm wants a DNS label
/// (letters, digits, '-', at most 63). A name that is one already is kept;
/// another is lowercased, other characters become '-', and a long one is
/// cut and ends with a hash of the whole name, so distinct names stay
/// distinct.
pub fn service_name(name: &str) -> String {
    let is_label = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if is_label {
        return name.to_owned();
    }
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    // FNV-1a of the original name.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    clean.truncate(MAX_SERVICE_NAME - 9);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "berth" } else { clean };
    format!("{clean}-{hash:08x}")
}

/// A duration as Swarm's nanoseconds.
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Replicas a service spec asks for (0 when not replicated).
pub fn replicas_of(spec: &ServiceSpec) -> u32 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// `spec` with `replicas` tasks wanted.
pub fn with_replicas(mut spec: ServiceSpec, replicas: u32) -> ServiceSpec {
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(i64::from(replicas)),
        }),
        ..Default::default()
    });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{berth_labels, Limits, VolumeMount};

    fn spec() -> InstanceSpec {
        let mut spec = InstanceSpec::new("berth-shop-web-production-1a2b3c4d", "reg:5000/shop:abc");
        spec.labels = berth_labels("shop", "web", "production", "d1");
        spec.env = vec![("A".into(), "1".into())];
        spec.port = Some(3000);
        spec.command = Some(vec!["serve".into(), "--fast".into()]);
        spec.limits = Limits {
            memory_bytes: Some(256 << 20),
            nano_cpus: Some(500_000_000),
            pids: Some(128),
        };
        spec.restart = RestartPolicy::OnFailure { max_retries: 3 };
        spec
    }

    #[test]
    fn a_web_spec_is_a_replicated_dnsrr_service_publishing_in_host_mode() {
        let s = service_spec(&spec(), 2, false);
        assert_eq!(
            s.name.as_deref(),
            Some("berth-shop-web-production-1a2b3c4d")
        );
        assert_eq!(replicas_of(&s), 2);
        let endpoint = s.endpoint_spec.expect("endpoint");
        assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
        let port = &endpoint.ports.expect("ports")[0];
        assert_eq!(port.target_port, Some(3000));
        assert_eq!(port.published_port, None);
        assert_eq!(
            port.publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        let labels = s.labels.expect("labels");
        assert_eq!(labels[OWNER_LABEL], "true");
        assert_eq!(labels[PORT_LABEL], "3000");
        assert_eq!(labels["dev.berth.deployment"], "d1");
        let task = s.task_template.expect("task");
        let c = task.container_spec.expect("container");
        assert_eq!(c.labels.expect("task labels")[OWNER_LABEL], "true");
        assert_eq!(c.args, Some(vec!["serve".to_owned(), "--fast".to_owned()]));
        assert!(c.command.is_none(), "the image's entrypoint is kept");
        assert_eq!(c.init, Some(true));
        assert_eq!(c.capability_drop, Some(vec!["ALL".to_owned()]));
        assert!(c
            .capability_add
            .expect("caps")
            .contains(&"CAP_NET_BIND_SERVICE".to_owned()));
        assert_eq!(c.env, Some(vec!["A=1".to_owned()]));
        let limits = task.resources.expect("resources").limits.expect("limits");
        assert_eq!(limits.memory_bytes, Some(256 << 20));
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.pids, Some(128));
        let restart = task.restart_policy.expect("restart");
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(restart.max_attempts, Some(3));
        assert_eq!(
            task.log_driver.expect("log").options.expect("opts")["max-size"],
            LOG_MAX_SIZE
        );
    }

    #[test]
    fn service_names_are_dns_labels_and_stay_distinct() {
        assert_eq!(
            service_name("berth-shop-web-prod-1a2b"),
            "berth-shop-web-prod-1a2b"
        );
        let long_a = format!("berth-{}-a", "x".repeat(70));
        let long_b = format!("berth-{}-b", "x".repeat(70));
        for name in [&long_a, &long_b, &"Web_App.1".to_owned(), &"--".to_owned()] {
            let s = service_name(name);
            assert!(s.len() <= MAX_SERVICE_NAME, "{s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{s}"
            );
            assert!(!s.starts_with('-') && !s.ends_with('-'), "{s}");
        }
        assert_ne!(service_name(&long_a), service_name(&long_b));
        assert!(service_name("Web_App.1").starts_with("web-app-1-"));
    }

    #[test]
    fn a_oneoff_publishes_nothing_and_never_restarts() {
        let s = service_spec(&spec(), 1, true);
        assert!(s.endpoint_spec.expect("endpoint").ports.is_none());
        let labels = s.labels.expect("labels");
        assert!(!labels.contains_key(PORT_LABEL));
        assert_eq!(labels[ONEOFF_LABEL], "true");
        assert_eq!(
            s.task_template
                .expect("task")
                .restart_policy
                .expect("restart")
                .condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
    }

    #[test]
    fn named_volumes_become_volume_mounts_and_replicas_can_change() {
        let mut sp = spec();
        sp.mounts.push(VolumeMount {
            volume: "shop-data".into(),
            target: "/data".into(),
            read_only: false,
        });
        let s = service_spec(&sp, 1, false);
        let c = s
            .task_template
            .clone()
            .expect("task")
            .container_spec
            .expect("container");
        let mounts = c.mounts.expect("mounts");
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("shop-data"));
        assert_eq!(replicas_of(&with_replicas(s, 0)), 0);
    }
}

//! Step 6: the candidate's instance: its spec (environment, labels, limits)
//! and its start beside the active deployment.

use super::{fail, Flow, INSTANCE_LABEL};
use crate::config::RuntimeKind;
use crate::deployer::Deployer;
use berth_core::config::{ServiceConfig, ServiceKind};
use berth_core::model::{Deployment, ImageInfo, RuntimeInfo, StepName, StepStatus};
use berth_core::state::Event;
use berth_runtime::{instance_name, InstanceSpec, Limits, RestartPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Asks the runtime for a microVM when the service wants one.
pub(crate) fn isolation_label(service: &ServiceConfig, labels: &mut BTreeMap<String, String>) {
    if service.isolation == berth_core::config::Isolation::MicroVm {
        labels.insert(
            berth_runtime::microvm::ISOLATION_LABEL.into(),
            berth_runtime::microvm::MICROVM.into(),
        );
    }
}

/// The limits an instance of `service` runs with.
pub(crate) fn limits_for(service: &ServiceConfig) -> Limits {
    Limits {
        memory_bytes: service.resources.memory_bytes,
        nano_cpus: service.resources.cpus.map(|c| (c * 1e9) as i64),
        pids: Some(512),
    }
}

/// What a deployment's record says about `instance` of `service` on a
/// server running `runtime`: the kind of instance and the resources it got
/// (for a microVM the guest's, with the VM runtime's defaults where the
/// service sets none).
pub(crate) fn runtime_info(
    runtime: RuntimeKind,
    service: &ServiceConfig,
    instance: &berth_runtime::Instance,
) -> RuntimeInfo {
    let limits = limits_for(service);
    let vm = runtime == RuntimeKind::MicroVm
        || (runtime == RuntimeKind::Docker
            && service.isolation == berth_core::config::Isolation::MicroVm);
    let (kind, memory_bytes, cpus) = if vm {
        let (mib, cpus) = berth_runtime::microvm::guest_resources(&limits);
        ("microvm", Some(mib * 1024 * 1024), Some(f64::from(cpus)))
    } else {
        let kind = if runtime == RuntimeKind::Swarm {
            "swarm"
        } else {
            "container"
        };
        (kind, limits.memory_bytes, service.resources.cpus)
    };
    RuntimeInfo {
        instance_id: instance.id.clone(),
        instance_name: instance.name.clone(),
        address: instance.endpoint.as_ref().map(|a| a.to_string()),
        kind: Some(kind.into()),
        memory_bytes,
        cpus,
    }
}

impl Deployer {
    pub(crate) fn env_for(
        &self,
        d: &Deployment,
        port: Option<u16>,
        vars: &[berth_store::ResolvedVar],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vars
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        if let Some(p) = port {
            env.push(("PORT".into(), p.to_string()));
        }
        env.push(("BERTH_DEPLOYMENT_ID".into(), d.id.clone()));
        env.push((
            "BERTH_GIT_SHA".into(),
            d.commit.as_ref().map(|c| c.sha.clone()).unwrap_or_default(),
        ));
        env.push(("BERTH_SERVICE".into(), d.service_name.clone()));
        env.push(("BERTH_ENVIRONMENT".into(), d.environment_name.clone()));
        env.push(("BERTH_PROJECT".into(), d.project_name.clone()));
        // OTEL_*, SENTRY_*, SOURCE_VERSION: the user's values win
        berth_core::telemetry::add_telemetry_env(
            &mut env,
            &berth_core::telemetry::Identity {
                project: &d.project_name,
                service: &d.service_name,
                environment: &d.environment_name,
                deployment_id: &d.id,
                sha: d.commit.as_ref().map(|c| c.sha.as_str()),
            },
        );
        env
    }

    pub(crate) fn labels_for(&self, d: &Deployment) -> BTreeMap<String, String> {
        let mut l = berth_runtime::berth_labels(
            &d.project_name,
            &d.service_name,
            &d.environment_name,
            &d.id,
        );
        l.insert(INSTANCE_LABEL.into(), self.instance.clone());
        l
    }

    pub(crate) fn instance_spec(
        &self,
        d: &Deployment,
        service: &ServiceConfig,
        image: &ImageInfo,
        vars: &[berth_store::ResolvedVar],
    ) -> InstanceSpec {
        let port = (service.kind == ServiceKind::Web).then_some(service.port);
        let mut spec = InstanceSpec::new(
            instance_name(
                &[&d.project_name, &d.service_name, &d.environment_name],
                &d.id,
            ),
            image.reference.clone(),
        );
        spec.env = self.env_for(d, port, vars);
        spec.labels = self.labels_for(d);
        isolation_label(service, &mut spec.labels);
        spec.port = port;
        spec.command = service
            .start_command
            .as_deref()
            .map(berth_runtime::shell_command);
        spec.limits = limits_for(service);
        spec.restart = RestartPolicy::Always;
        spec.mounts = self.volume_mounts(&d.project_name, &d.environment_name, service);
        spec
    }

    /// Step 6: start the candidate beside the active deployment and follow
    /// its output.
    pub(super) async fn start_candidate(
        self: &Arc<Self>,
        d: &mut Deployment,
        service: &ServiceConfig,
        image: &ImageInfo,
        vars: &[berth_store::ResolvedVar],
    ) -> Flow<()> {
        self.apply(d, Event::CandidateStarting).await;
        self.start_step(d, StepName::Deploy);
        if let Err(e) = self
            .ensure_volumes(&d.project_name, &d.environment_name, service)
            .await
        {
            return fail(StepName::Deploy, e);
        }
        let spec = self.instance_spec(d, service, image, vars);
        d.replicas = service.replicas.max(1);
        let engine = std::time::Instant::now();
        let instances = match self.runtime.start_replicas(&spec, d.replicas).await {
            Ok(i) if !i.is_empty() => i,
            Ok(_) => return fail(StepName::Deploy, "cannot start container: none started"),
            Err(e) => return fail(StepName::Deploy, format!("cannot start container: {e}")),
        };
        super::replicas::record_instances(
            d,
            self.cfg.runtime,
            service,
            &instances,
            berth_core::state::Health::Pending,
        );
        for instance in &instances {
            let tag = (instances.len() > 1).then_some(instance.name.as_str());
            self.monitors
                .follow_replica_logs(self, &d.id, &instance.id, None, tag);
        }
        let engine_ms = engine.elapsed().as_millis();
        let names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        self.finish_step(
            d,
            StepName::Deploy,
            StepStatus::Succeeded,
            Some(&format!(
                "{} {} started from {} in {engine_ms} ms (engine create + start)",
                if names.len() == 1 {
                    "container"
                } else {
                    "containers"
                },
                names.join(", "),
                image.reference
            )),
        );
        self.apply(d, Event::CandidateStarted).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::config::Isolation;

    fn instance() -> berth_runtime::Instance {
        berth_runtime::Instance {
            id: "i1".into(),
            name: "app-web-production-d1".into(),
            image: "img".into(),
            labels: BTreeMap::new(),
            endpoint: Some(berth_runtime::Endpoint::new("127.0.0.1", 4000)),
            running: true,
        }
    }

    #[test]
    fn runtime_info_names_the_kind_and_the_resources_the_instance_got() {
        let mut svc = ServiceConfig::default();
        // A container without limits: nothing is made up.
        let c = runtime_info(RuntimeKind::Docker, &svc, &instance());
        assert_eq!(c.kind.as_deref(), Some("container"));
        assert_eq!((c.memory_bytes, c.cpus), (None, None));
        assert_eq!(c.instance_id, "i1");
        assert_eq!(c.address.as_deref(), Some("127.0.0.1:4000"));

        // A microVM without limits gets the VM runtime's defaults.
        svc.isolation = Isolation::MicroVm;
        let vm = runtime_info(RuntimeKind::Docker, &svc, &instance());
        assert_eq!(vm.kind.as_deref(), Some("microvm"));
        assert_eq!(
            vm.memory_bytes,
            Some(berth_runtime::microvm::DEFAULT_MEMORY_MIB << 20)
        );
        assert_eq!(vm.cpus, Some(1.0));

        // Limits as the VM really gets them: memory raised to the minimum,
        // CPUs rounded up.
        svc.resources.memory_bytes = Some(64 << 20);
        svc.resources.cpus = Some(1.5);
        let vm = runtime_info(RuntimeKind::Docker, &svc, &instance());
        assert_eq!(
            vm.memory_bytes,
            Some(berth_runtime::microvm::MIN_MEMORY_MIB << 20)
        );
        assert_eq!(vm.cpus, Some(2.0));
        svc.resources.memory_bytes = Some(512 << 20);
        let vm = runtime_info(RuntimeKind::Docker, &svc, &instance());
        assert_eq!(vm.memory_bytes, Some(512 << 20));

        // `--runtime microvm` makes every instance a VM; a container keeps
        // the service's own limits; swarm is named as such.
        svc.isolation = Isolation::Container;
        let all = runtime_info(RuntimeKind::MicroVm, &svc, &instance());
        assert_eq!(all.kind.as_deref(), Some("microvm"));
        let c = runtime_info(RuntimeKind::Docker, &svc, &instance());
        assert_eq!(c.kind.as_deref(), Some("container"));
        assert_eq!((c.memory_bytes, c.cpus), (Some(512 << 20), Some(1.5)));
        let s = runtime_info(RuntimeKind::Swarm, &svc, &instance());
        assert_eq!(s.kind.as_deref(), Some("swarm"));
    }
}

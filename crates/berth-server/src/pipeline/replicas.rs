//! A deployment's instances (`replicas = N`) as the record lists them and
//! as the edge sees them: one target per instance, all under the
//! deployment's id, so weights and drains apply to the deployment whatever
//! its replica count.

use crate::config::RuntimeKind;
use berth_core::config::ServiceConfig;
use berth_core::model::{Deployment, InstanceInfo};
use berth_core::state::Health;
use berth_edge::{Policy, TargetSpec};

/// The record of `instance` of `service`, its health not known yet.
pub(crate) fn instance_info(instance: &berth_runtime::Instance, health: Health) -> InstanceInfo {
    InstanceInfo {
        id: instance.id.clone(),
        name: instance.name.clone(),
        node: instance.labels.get(berth_runtime::NODE_LABEL).cloned(),
        address: instance.endpoint.as_ref().map(|a| a.to_string()),
        health,
    }
}

/// Records `instances` (the first one also as `d.runtime`) on `d`.
pub(crate) fn record_instances(
    d: &mut Deployment,
    runtime: RuntimeKind,
    service: &ServiceConfig,
    instances: &[berth_runtime::Instance],
    health: Health,
) {
    d.runtime = instances
        .first()
        .map(|i| super::runtime_info(runtime, service, i));
    d.instances = instances.iter().map(|i| instance_info(i, health)).collect();
}

/// The instance ids of `d`: its `instances`, or the one of `runtime` in
/// records written before berth kept instances.
pub(crate) fn instance_ids(d: &Deployment) -> Vec<String> {
    let mut ids: Vec<String> = d.instances.iter().map(|i| i.id.clone()).collect();
    if let Some(rt) = &d.runtime {
        if !ids.contains(&rt.instance_id) {
            ids.insert(0, rt.instance_id.clone());
        }
    }
    ids
}

/// Edge target id of `d`'s instance number `index` (from 0): the
/// deployment id for the first, so a one-replica deployment keeps the
/// target id it always had.
pub(crate) fn target_id(deployment_id: &str, index: usize) -> String {
    if index == 0 {
        deployment_id.to_owned()
    } else {
        format!("{deployment_id}~{}", index + 1)
    }
}

/// Every target id `d` may have at the edge (for drains and counters).
pub(crate) fn target_ids(d: &Deployment) -> Vec<String> {
    let n = d.instances.len().max(1).max(d.replicas as usize);
    (0..n).map(|i| target_id(&d.id, i)).collect()
}

/// The edge targets of `d`, each of `weight`: one per instance with an
/// address that is not unhealthy (all of them when every one is, so the
/// route keeps trying rather than answering 503).
pub(crate) fn targets(d: &Deployment, weight: u32) -> Vec<TargetSpec> {
    let sha = d.commit.as_ref().map(|c| c.sha.clone());
    let target = |index: usize, upstream: String| TargetSpec {
        id: target_id(&d.id, index),
        upstream,
        weight,
        deployment_id: Some(d.id.clone()),
        sha: sha.clone(),
    };
    if d.instances.is_empty() {
        return d
            .runtime
            .as_ref()
            .and_then(|r| r.address.clone())
            .map(|a| vec![target(0, a)])
            .unwrap_or_default();
    }
    let with_addr: Vec<(usize, &InstanceInfo)> = d
        .instances
        .iter()
        .enumerate()
        .filter(|(_, i)| i.address.is_some())
        .collect();
    let serving: Vec<&(usize, &InstanceInfo)> = with_addr
        .iter()
        .filter(|(_, i)| i.health != Health::Unhealthy)
        .collect();
    let chosen: Vec<&(usize, &InstanceInfo)> = if serving.is_empty() {
        with_addr.iter().collect()
    } else {
        serving
    };
    chosen
        .into_iter()
        .map(|(index, i)| target(*index, i.address.clone().unwrap_or_default()))
        .collect()
}

/// Number of targets [`targets`] gives `d` (at least 1, for weights).
pub(crate) fn target_count(d: &Deployment) -> u32 {
    (targets(d, 1).len() as u32).max(1)
}

/// The secret holding a preview's `user:password` (`preview_auth = "basic"`).
pub(crate) const PREVIEW_AUTH_SECRET: &str = "BERTH_PREVIEW_AUTH";

/// The edge policy of `d`'s routes, from `[services.<name>.edge]` as
/// recorded with `d` (so it changes with the deployment that carries it,
/// in the same table swap). `preview`: the policy of its preview hostname,
/// which with `preview_auth = "basic"` asks for the user and password of
/// `preview_secret` (the value of [`PREVIEW_AUTH_SECRET`]); without a
/// usable secret the preview answers 401 to everyone rather than opening.
pub(crate) fn policy(d: &Deployment, preview: Option<Option<&str>>) -> Policy {
    let edge = super::source::service_from_record(d).edge;
    let basic_auth = match preview {
        Some(secret) if edge.preview_auth => Some(match secret.and_then(|s| s.split_once(':')) {
            Some((user, password)) => berth_edge::basic_auth_digest(user, password),
            None => berth_edge::basic_auth_digest(&crate::ids::new_id(), &crate::ids::new_id()),
        }),
        _ => None,
    };
    Policy {
        allow: edge.allow,
        rate_limit: edge.rate_limit,
        max_body: edge.max_body,
        basic_auth,
        maintenance: false,
    }
}

impl crate::deployer::Deployer {
    /// The policy of `d`'s preview hostname (see [`policy`]), reading the
    /// preview secret only when the service asks for it.
    /// With the maintenance flag of its service (see `maintenance.rs`).
    pub(crate) async fn preview_policy(&self, d: &Deployment) -> Policy {
        let mut p = self.preview_policy_of_config(d).await;
        p.maintenance = self.in_maintenance(d).await;
        p
    }

    async fn preview_policy_of_config(&self, d: &Deployment) -> Policy {
        if !super::source::service_from_record(d).edge.preview_auth {
            return policy(d, Some(None));
        }
        let secret = self
            .store
            .resolve_variables(&d.project_name, &d.environment_name)
            .await
            .ok()
            .and_then(|vars| vars.into_iter().find(|v| v.key == PREVIEW_AUTH_SECRET))
            .map(|v| v.value);
        if secret.is_none() {
            tracing::warn!(deployment = %d.id, "preview_auth is \"basic\" but the secret {PREVIEW_AUTH_SECRET} (user:password) is not set: the preview refuses everyone");
        }
        policy(d, Some(secret.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(instances: &[(&str, Option<&str>, Health)]) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "id": "d1", "projectName": "p", "serviceName": "web", "environmentName": "production",
            "status": "running", "promotionStage": "active", "health": "healthy", "isActive": true,
            "routeUrl": null, "previewUrl": null, "failureMessage": null,
            "createdAt": "2026-01-01T00:00:00Z", "startedAt": null, "completedAt": null,
            "ref": "main", "commit": null, "trigger": "manual", "sourceDeploymentId": null,
            "image": null, "build": {"provider": null, "framework": null, "runtime": null,
            "port": null, "startCommand": null, "cacheHit": false}, "steps": [],
            "canaryWeight": null
        }))
        .unwrap();
        d.instances = instances
            .iter()
            .map(|(id, addr, h)| InstanceInfo {
                id: (*id).into(),
                name: format!("n-{id}"),
                node: None,
                address: addr.map(Into::into),
                health: *h,
            })
            .collect();
        d.replicas = (instances.len() as u32).max(1);
        d
    }

    #[test]
    fn policies_come_from_the_recorded_config() {
        let mut d = dep(&[]);
        assert!(policy(&d, None).is_open(), "no config: open");
        d.build.config = Some(
            "[services.web.edge]\nallow = [\"10.0.0.0/8\"]\nrate_limit = 5\nmax_body = \"1k\"\npreview_auth = \"basic\"\n"
                .into(),
        );
        d.service_name = "web".into();
        let p = policy(&d, None);
        assert_eq!(p.allow, ["10.0.0.0/8"]);
        assert_eq!((p.rate_limit, p.max_body), (Some(5), Some(1024)));
        assert_eq!(p.basic_auth, None, "slot hosts ask for no password");
        let preview = policy(&d, Some(Some("ann:s3cret")));
        assert_eq!(
            preview.basic_auth,
            Some(berth_edge::basic_auth_digest("ann", "s3cret"))
        );
        // no usable secret: closed, not open
        for secret in [None, Some("no-colon")] {
            let closed = policy(&d, Some(secret)).basic_auth.unwrap();
            assert_ne!(closed, berth_edge::basic_auth_digest("", ""));
            assert_eq!(closed.len(), 64);
        }
    }

    #[test]
    fn old_records_read_as_one_replica() {
        let d = dep(&[]);
        assert_eq!(d.replicas, 1);
        assert!(d.instances.is_empty());
        assert_eq!(target_ids(&d), vec!["d1".to_string()]);
        assert!(targets(&d, 100).is_empty());
    }

    #[test]
    fn one_target_per_serving_instance_under_the_deployment() {
        let d = dep(&[
            ("a", Some("127.0.0.1:1"), Health::Healthy),
            ("b", Some("127.0.0.1:2"), Health::Unhealthy),
            ("c", Some("127.0.0.1:3"), Health::Pending),
            ("d", None, Health::Healthy),
        ]);
        let t = targets(&d, 7);
        let ids: Vec<&str> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["d1", "d1~3"]);
        assert!(t
            .iter()
            .all(|t| t.weight == 7 && t.deployment_id.as_deref() == Some("d1")));
        assert_eq!(target_count(&d), 2);
        assert_eq!(target_ids(&d), ["d1", "d1~2", "d1~3", "d1~4"]);
        assert_eq!(instance_ids(&d), ["a", "b", "c", "d"]);
    }

    #[test]
    fn all_unhealthy_still_routes_to_every_instance() {
        let d = dep(&[
            ("a", Some("127.0.0.1:1"), Health::Unhealthy),
            ("b", Some("127.0.0.1:2"), Health::Unhealthy),
        ]);
        assert_eq!(targets(&d, 100).len(), 2);
    }
}

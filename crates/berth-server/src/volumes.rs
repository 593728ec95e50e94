//! Persistent volumes (`[services.<name>.volumes]`).
//!
//! A volume belongs to one environment of a project: its engine name
//! (`berth_core::volumes::engine_name`) is derived from the project, the
//! environment, the volume's name and this berth's engine identity, so
//! every deployment of the environment mounts the same one — a new
//! deployment, a rollback to an old one, an instance re-created after a
//! restart of berth — and no other environment ever does. During a cutover
//! (and a bake window) the old and the new deployment both mount it.
//! Retention removes images and containers, never volumes; a volume goes
//! only with its environment (a preview's teardown removes the preview
//! environment's own volumes, never another's).
//!
//! Volumes are the local engine's (see `berth_runtime::volumes`): a
//! container mounts one, a microVM (`--runtime microvm` or `isolation =
//! "microvm"`) shares the same directory through virtio-fs
//! (`berth_runtime::microvm::virtiofs`), so a container and a VM, or two
//! VMs, can use it side by side during a cutover. A deployment asking for
//! one on Swarm fails at its deploy step with the reason.
//!
//! Backups and restores are in [`crate::backups`].

use std::collections::BTreeMap;

use berth_core::config::ServiceConfig;
use berth_core::volumes::{engine_name, VolumeInfo, VolumeMountInfo};
use berth_runtime::{VolumeMount, ENVIRONMENT_LABEL, OWNER_LABEL, PROJECT_LABEL};

use crate::config::RuntimeKind;
use crate::deployer::Deployer;
use crate::pipeline::INSTANCE_LABEL;

/// Label holding a volume's name in `berth.toml`.
pub const VOLUME_LABEL: &str = "dev.berth.volume";

impl Deployer {
    /// The engine's name of `volume` in `project`'s `environment`.
    pub fn volume_engine_name(&self, project: &str, environment: &str, volume: &str) -> String {
        engine_name(project, environment, volume, &self.instance)
    }

    /// The labels a volume is made with (and listed by).
    pub(crate) fn volume_labels(
        &self,
        project: &str,
        environment: &str,
        volume: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (OWNER_LABEL.to_owned(), "true".to_owned()),
            (PROJECT_LABEL.to_owned(), project.to_owned()),
            (ENVIRONMENT_LABEL.to_owned(), environment.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
        ]);
        if let Some(v) = volume {
            l.insert(VOLUME_LABEL.to_owned(), v.to_owned());
        }
        l
    }

    /// The mounts of an instance of `service` in `project`'s `environment`.
    pub(crate) fn volume_mounts(
        &self,
        project: &str,
        environment: &str,
        service: &ServiceConfig,
    ) -> Vec<VolumeMount> {
        service
            .volumes
            .iter()
            .map(|(path, volume)| VolumeMount {
                volume: self.volume_engine_name(project, environment, volume),
                target: path.clone(),
                read_only: false,
            })
            .collect()
    }

    /// Makes the service's volumes exist (labelled) before an instance
    /// mounts them; the reason, on one line, when this server cannot.
    pub(crate) async fn ensure_volumes(
        &self,
        project: &str,
        environment: &str,
        service: &ServiceConfig,
    ) -> Result<(), String> {
        if service.volumes.is_empty() {
            return Ok(());
        }
        let volumes = self.volumes_seam()?;
        for volume in service.volumes.values() {
            let name = self.volume_engine_name(project, environment, volume);
            volumes
                .ensure(
                    &name,
                    &self.volume_labels(project, environment, Some(volume)),
                )
                .await
                .map_err(|e| format!("cannot create volume {volume}: {e}"))?;
        }
        Ok(())
    }

    /// The volume seam, or why this server has none.
    pub(crate) fn volumes_seam(
        &self,
    ) -> Result<&std::sync::Arc<dyn berth_runtime::Volumes>, String> {
        self.volumes.get().ok_or_else(|| match self.cfg.runtime {
            RuntimeKind::Swarm => "volumes need --runtime docker: a Swarm volume is local to one node, so an instance moved to another node would not find its data".to_owned(),
            RuntimeKind::MicroVm => "volumes need the container engine (microVMs share its volumes' directories), which is not reachable".to_owned(),
            RuntimeKind::Docker => "volumes need the container engine, which is not reachable".to_owned(),
        })
    }

    /// The volumes of `project` (in `environment`, or all): every volume
    /// the engine holds for it, and the services whose active deployment
    /// mounts each.
    pub async fn list_volumes(
        &self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<VolumeInfo>, String> {
        let seam = self.volumes_seam()?;
        let mut labels = BTreeMap::from([
            (PROJECT_LABEL.to_owned(), project.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
        ]);
        if let Some(env) = environment {
            labels.insert(ENVIRONMENT_LABEL.to_owned(), env.to_owned());
        }
        let found = seam.list(&labels).await.map_err(|e| e.to_string())?;
        let active = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(project.to_owned()),
                environment: environment.map(str::to_owned),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for v in found {
            let (Some(name), Some(env)) =
                (v.labels.get(VOLUME_LABEL), v.labels.get(ENVIRONMENT_LABEL))
            else {
                continue;
            };
            let mut mounts: Vec<VolumeMountInfo> = active
                .iter()
                .filter(|d| d.is_active && &d.environment_name == env)
                .filter_map(|d| {
                    let svc = crate::pipeline::service_from_record(d);
                    svc.volumes
                        .iter()
                        .find(|(_, vol)| *vol == name)
                        .map(|(path, _)| VolumeMountInfo {
                            service_name: d.service_name.clone(),
                            path: path.clone(),
                        })
                })
                .collect();
            mounts.sort_by(|a, b| a.service_name.cmp(&b.service_name));
            mounts.dedup();
            out.push(VolumeInfo {
                name: name.clone(),
                project_name: project.to_owned(),
                environment_name: env.clone(),
                engine_name: v.name,
                mounts,
                created_at: v.created_at,
            });
        }
        out.sort_by(|a, b| (&a.environment_name, &a.name).cmp(&(&b.environment_name, &b.name)));
        Ok(out)
    }

    /// Removes the volumes of `project`'s `environment` (its teardown);
    /// one still mounted by a container is kept and logged.
    pub(crate) async fn remove_environment_volumes(&self, project: &str, environment: &str) {
        let Some(seam) = self.volumes.get() else {
            return;
        };
        let labels = self.volume_labels(project, environment, None);
        let found = match seam.list(&labels).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(project, environment, error = %e, "cannot list the volumes of a torn-down environment");
                return;
            }
        };
        for v in found {
            if let Err(e) = seam.remove(&v.name).await {
                tracing::warn!(volume = %v.name, error = %e, "cannot remove the volume of a torn-down environment");
            }
        }
    }
}

//! [`Isolating`]: one [`Runtime`] over containers and microVMs, choosing per
//! instance. A spec labelled [`ISOLATION_LABEL`]`=microvm` (or every spec,
//! on a server started with `--runtime microvm`) runs in a VM; the rest in
//! containers. Instances are found again by id: a VM's id is its name and
//! its state is on disk, so the VM backend is asked first.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;

use super::MicroVmRuntime;
use crate::images::Images;
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::{Instance, InstanceSpec, InstanceState, LogChunk, LogOptions, OneOffOutcome};

/// Label asking for an isolation level; the only value acted on is
/// [`MICROVM`].
pub const ISOLATION_LABEL: &str = "dev.berth.isolation";
/// [`ISOLATION_LABEL`]'s value for a microVM.
pub const MICROVM: &str = "microvm";

/// Containers by default, microVMs where asked (see the module docs).
pub struct Isolating {
    containers: Arc<dyn Runtime>,
    /// The containers' image store (VMs boot from images kept there too).
    container_images: Arc<dyn Images>,
    /// `Err` says why this server cannot run microVMs.
    vms: Result<MicroVmRuntime, String>,
    /// `--runtime microvm`: every instance is a VM.
    all_vms: bool,
}

impl Isolating {
    pub fn new(
        containers: Arc<dyn Runtime>,
        container_images: Arc<dyn Images>,
        vms: Result<MicroVmRuntime, String>,
        all_vms: bool,
    ) -> Self {
        Isolating {
            containers,
            container_images,
            vms,
            all_vms,
        }
    }

    fn wants_vm(&self, spec: &InstanceSpec) -> bool {
        self.all_vms || spec.labels.get(ISOLATION_LABEL).map(String::as_str) == Some(MICROVM)
    }

    /// The VM backend for a spec that asks for one, or why there is none.
    fn vm_for(&self, spec: &InstanceSpec) -> Result<&MicroVmRuntime, RuntimeError> {
        self.vms.as_ref().map_err(|why| RuntimeError::Backend {
            op: "microvm runtime",
            message: format!(
                "{} asks for isolation = \"microvm\" but this server cannot run microVMs: {why}",
                spec.name
            ),
        })
    }

    /// `ids` split into the VMs' and the containers'.
    fn split(&self, ids: &[String]) -> (Vec<String>, Vec<String>) {
        ids.iter().cloned().partition(|id| match &self.vms {
            Ok(vms) => vms.knows(id),
            Err(_) => false,
        })
    }

    /// The VM backend (the containers' when there is none: then no id is
    /// a VM's, see [`Isolating::split`]).
    fn vms_or_containers(&self) -> &dyn Runtime {
        match &self.vms {
            Ok(vms) => vms,
            Err(_) => self.containers.as_ref(),
        }
    }

    /// The backend holding instance `id`.
    fn holder(&self, id: &str) -> &dyn Runtime {
        match &self.vms {
            Ok(vms) if vms.knows(id) => vms,
            _ => self.containers.as_ref(),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Isolating {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        if self.wants_vm(spec) {
            self.vm_for(spec)?.start(spec).await
        } else {
            self.containers.start(spec).await
        }
    }

    async fn start_replicas(
        &self,
        spec: &InstanceSpec,
        replicas: u32,
    ) -> Result<Vec<Instance>, RuntimeError> {
        if self.wants_vm(spec) {
            self.vm_for(spec)?.start_replicas(spec, replicas).await
        } else {
            // The container backend's own way (Swarm: one service).
            self.containers.start_replicas(spec, replicas).await
        }
    }

    async fn stop_all(&self, ids: &[String], grace: Duration) -> Result<(), RuntimeError> {
        let (vms, containers) = self.split(ids);
        let (a, b) = futures::join!(
            self.vms_or_containers().stop_all(&vms, grace),
            self.containers.stop_all(&containers, grace)
        );
        a.and(b)
    }

    async fn remove_all(&self, ids: &[String]) -> Result<(), RuntimeError> {
        let (vms, containers) = self.split(ids);
        let (a, b) = futures::join!(
            self.vms_or_containers().remove_all(&vms),
            self.containers.remove_all(&containers)
        );
        a.and(b)
    }

    async fn inspect(&self, id: &str) -> Result<InstanceState, RuntimeError> {
        self.holder(id).inspect(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.holder(id).stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.holder(id).remove(id).await
    }

    async fn list_owned(&self) -> Result<Vec<Instance>, RuntimeError> {
        let mut all = match &self.vms {
            Ok(vms) => vms.list_owned().await?,
            Err(_) => Vec::new(),
        };
        match self.containers.list_owned().await {
            Ok(containers) => all.extend(containers),
            // A VM-only server may run without a reachable engine's containers.
            Err(e) if !self.all_vms => return Err(e),
            Err(_) => {}
        }
        Ok(all)
    }

    fn logs(
        &self,
        id: &str,
        opts: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        self.holder(id).logs(id, opts)
    }

    async fn run_oneoff(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        if self.wants_vm(spec) {
            self.vm_for(spec)?.run_oneoff(spec, timeout).await
        } else {
            self.containers.run_oneoff(spec, timeout).await
        }
    }

    async fn run_attached(
        &self,
        spec: &InstanceSpec,
        io: crate::Attach,
        timeout: Duration,
    ) -> Result<OneOffOutcome, RuntimeError> {
        if self.wants_vm(spec) {
            self.vm_for(spec)?.run_attached(spec, io, timeout).await
        } else {
            self.containers.run_attached(spec, io, timeout).await
        }
    }
}

#[async_trait::async_trait]
impl Images for Isolating {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        self.container_images.exists(image).await
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        match &self.vms {
            // Also drops the cached root disk and refuses while a VM runs it.
            Ok(vms) => Images::remove(vms, image).await,
            Err(_) => self.container_images.remove(image).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRuntime;

    fn spec(labelled: bool) -> InstanceSpec {
        let mut spec = InstanceSpec::new("web-1", "img");
        if labelled {
            spec.labels.insert(ISOLATION_LABEL.into(), MICROVM.into());
        }
        spec
    }

    #[tokio::test]
    async fn unlabelled_specs_run_in_containers() {
        let fake = Arc::new(FakeRuntime::new());
        fake.add_image("img");
        let rt = Isolating::new(
            fake.clone(),
            fake.clone(),
            Err("qemu not found".into()),
            false,
        );
        let instance = rt.start(&spec(false)).await.expect("start");
        assert!(rt.inspect(&instance.id).await.is_ok());
        assert_eq!(rt.list_owned().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn microvm_specs_on_a_server_without_vms_fail_naming_why() {
        let fake = Arc::new(FakeRuntime::new());
        fake.add_image("img");
        let rt = Isolating::new(
            fake.clone(),
            fake.clone(),
            Err("qemu not found (install qemu-system-x86)".into()),
            false,
        );
        let err = rt.start(&spec(true)).await.unwrap_err().to_string();
        assert!(err.contains("isolation = \"microvm\""), "{err}");
        assert!(err.contains("qemu not found"), "{err}");
        let err = rt
            .run_oneoff(&spec(true), Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("qemu not found"), "{err}");
        // Nothing was started anywhere.
        assert!(rt.list_owned().await.unwrap().is_empty());
        // --runtime microvm: even unlabelled specs ask for a VM.
        let all = Isolating::new(fake.clone(), fake, Err("no kernel".into()), true);
        assert!(all
            .start(&spec(false))
            .await
            .unwrap_err()
            .to_string()
            .contains("no kernel"));
    }
}

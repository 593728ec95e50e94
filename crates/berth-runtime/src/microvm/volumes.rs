//! [`WithVms`]: the engine's [`Volumes`] made aware of microVMs.
//!
//! A VM mounts a named volume of the engine (its directory, through
//! virtio-fs; see [`super::virtiofs`]) without the engine knowing, so the
//! engine alone would let a volume in use by a VM be removed or replaced.
//! This wrapper counts the VMs that mount a volume (their `meta.json`
//! names it) among its users: backups and restores find, stop and start
//! them again like containers, and removing or replacing the volume is
//! refused while one exists.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::MicroVmRuntime;
use crate::runtime::RuntimeError;
use crate::volumes::{VolumeState, VolumeUser, Volumes};

/// [`Volumes`] of the engine plus the VMs of a [`MicroVmRuntime`] as users.
pub struct WithVms {
    engine: Arc<dyn Volumes>,
    vms: MicroVmRuntime,
}

impl WithVms {
    pub fn new(engine: Arc<dyn Volumes>, vms: MicroVmRuntime) -> Self {
        WithVms { engine, vms }
    }

    fn refuse_in_use(&self, name: &str) -> Result<(), RuntimeError> {
        let vms = self.vms.volume_users(name);
        if vms.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = vms.iter().map(|u| u.name.as_str()).collect();
        Err(RuntimeError::Conflict(format!(
            "volume {name} is in use by microvm {}",
            names.join(", ")
        )))
    }
}

#[async_trait::async_trait]
impl Volumes for WithVms {
    async fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeState, RuntimeError> {
        self.engine.ensure(name, labels).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<VolumeState>, RuntimeError> {
        self.engine.inspect(name).await
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<VolumeState>, RuntimeError> {
        self.engine.list(labels).await
    }

    /// The VMs mounting it, then the engine's containers.
    async fn users(&self, name: &str) -> Result<Vec<VolumeUser>, RuntimeError> {
        let mut users = self.vms.volume_users(name);
        users.extend(self.engine.users(name).await?);
        Ok(users)
    }

    async fn export(
        &self,
        name: &str,
        image: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, RuntimeError> {
        self.engine.export(name, image, out).await
    }

    async fn replace(
        &self,
        name: &str,
        image: &str,
        tar: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<(), RuntimeError> {
        self.refuse_in_use(name)?;
        self.engine.replace(name, image, tar).await
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.refuse_in_use(name)?;
        self.engine.remove(name).await
    }

    async fn remove_leaked_helpers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, RuntimeError> {
        self.engine.remove_leaked_helpers(labels).await
    }
}

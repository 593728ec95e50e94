//! Named volumes on the engine: the [`Volumes`] seam and [`DockerVolumes`].
//!
//! A volume's content is read and written through the engine's archive
//! endpoints (`GET`/`PUT /containers/{id}/archive`) on a **helper
//! container** that is created from an image already on the engine (the
//! deployment's own), with the volume mounted at [`HELPER_PATH`], and never
//! started. Nothing runs inside it, so this works with any image — one
//! built `FROM scratch` holding a single static binary included — and
//! needs no image to be pulled. The helper is removed in every case.
//!
//! Archives are plain tar streams whose entries sit under `berth-volume/`
//! (the engine names them after the directory asked for); writing one back
//! at `/` of a helper puts the files back into the volume.
//!
//! Volumes are the local engine's: a container mounts one, a microVM shares
//! its directory through virtio-fs (see `microvm::virtiofs`, and
//! `microvm::volumes::WithVms` for VMs as users). A Swarm volume is local
//! to a node (a task rescheduled elsewhere would find another, empty one),
//! so the server refuses volumes there.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ListContainersOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::docker::map_err;
use crate::runtime::RuntimeError;
use crate::spec::OWNER_LABEL;

/// Where a helper container mounts the volume; archive entries are named
/// `berth-volume/...`.
pub const HELPER_PATH: &str = "/berth-volume";

/// Label on helper containers (value `volume-helper`), besides
/// [`OWNER_LABEL`].
pub const ROLE_LABEL: &str = "dev.berth.role";

/// Label on a helper container naming the berth process that made it
/// ([`process_tag`]: `<host>:<pid>:<start time>`), so that a helper left
/// behind by a process that died mid-way (kill -9 during a backup) can be
/// told from one in use ([`Volumes::remove_leaked_helpers`]).
pub const HELPER_PROCESS_LABEL: &str = "dev.berth.helper-process";

/// This process as [`HELPER_PROCESS_LABEL`] names it.
pub fn process_tag() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        host_name(),
        start_time(pid).unwrap_or_default()
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A process's start time (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`), or `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process a helper's [`HELPER_PROCESS_LABEL`] names may still
/// be using it: a process on another host (or a tag that does not parse)
/// is assumed alive; on this host, alive means the pid exists with the
/// same start time (a reused pid is another process).
pub fn helper_owner_alive(tag: &str) -> bool {
    let mut parts = tag.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    if host != host_name() {
        return true;
    }
    start_time(pid) == Some(start)
}

/// A volume as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// A container (running or not) that mounts a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUser {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
}

/// Named volumes: create, list, find their users, read and replace their
/// content. Every volume berth makes carries [`OWNER_LABEL`]; one without
/// it is never changed.
#[async_trait::async_trait]
pub trait Volumes: Send + Sync {
    /// Creates `name` with `labels` (plus [`OWNER_LABEL`]) unless it exists.
    /// An existing volume without [`OWNER_LABEL`] is refused
    /// ([`RuntimeError::Conflict`]).
    async fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeState, RuntimeError>;

    /// The volume, or `None` when it does not exist.
    async fn inspect(&self, name: &str) -> Result<Option<VolumeState>, RuntimeError>;

    /// berth's volumes carrying every label of `labels`.
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<VolumeState>, RuntimeError>;

    /// Every container, running or not, that mounts `name`.
    async fn users(&self, name: &str) -> Result<Vec<VolumeUser>, RuntimeError>;

    /// Writes the volume's content as a tar stream to `out`, read through
    /// a helper container made from `image`. Returns the bytes written.
    async fn export(
        &self,
        name: &str,
        image: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, RuntimeError>;

    /// Replaces the volume's content with `tar` (an archive [`export`]
    /// wrote): the volume is removed — refused with
    /// [`RuntimeError::Conflict`] while any container mounts it — made
    /// again with its labels, and the archive written into it through a
    /// helper made from `image`.
    ///
    /// [`export`]: Volumes::export
    async fn replace(
        &self,
        name: &str,
        image: &str,
        tar: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<(), RuntimeError>;

    /// Removes the volume (idempotent); refused while a container mounts it.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;

    /// Removes the helper containers carrying every label of `labels`
    /// whose process is gone ([`helper_owner_alive`]): a backup or restore
    /// cut off mid-way. Returns the names removed.
    async fn remove_leaked_helpers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, RuntimeError>;
}

/// [`Volumes`] on a Docker Engine.
#[derive(Debug, Clone)]
pub struct DockerVolumes {
    docker: Docker,
    /// Put on every helper container besides berth's own labels.
    helper_labels: BTreeMap<String, String>,
}

impl DockerVolumes {
    pub fn from_docker(docker: Docker) -> Self {
        Self {
            docker,
            helper_labels: BTreeMap::new(),
        }
    }

    /// Helpers get `labels` too (the server's instance, so that it finds
    /// its own leaked helpers and no other server's).
    pub fn with_helper_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.helper_labels = labels;
        self
    }

    /// Creates (never starts) a helper container from `image` with `volume`
    /// at [`HELPER_PATH`]; returns its id.
    async fn helper(&self, volume: &str, image: &str) -> Result<String, RuntimeError> {
        let name = format!(
            "berth-volume-helper-{:016x}",
            rand_u64() ^ u64::from(std::process::id())
        );
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            // Never started: the command only has to be present for the
            // engine to accept an image that has none.
            cmd: Some(vec!["/berth-volume-helper".to_owned()]),
            labels: Some(
                self.helper_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([
                        (OWNER_LABEL.to_owned(), "true".to_owned()),
                        (ROLE_LABEL.to_owned(), "volume-helper".to_owned()),
                        (HELPER_PROCESS_LABEL.to_owned(), process_tag()),
                    ])
                    .collect(),
            ),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(volume.to_owned()),
                    target: Some(HELPER_PATH.to_owned()),
                    read_only: Some(false),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| match map_err("create volume helper", image, e) {
                RuntimeError::NotFound(_) => RuntimeError::ImageNotFound(image.to_owned()),
                e => e,
            })?;
        Ok(created.id)
    }

    async fn remove_helper(&self, id: &str) {
        let _ = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: false,
                    ..Default::default()
                }),
            )
            .await;
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn state(v: bollard::models::Volume) -> VolumeState {
    VolumeState {
        name: v.name,
        labels: v.labels.into_iter().collect(),
        created_at: v
            .created_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    }
}

#[async_trait::async_trait]
impl Volumes for DockerVolumes {
    async fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeState, RuntimeError> {
        if let Some(v) = self.inspect(name).await? {
            if v.labels.get(OWNER_LABEL).map(String::as_str) != Some("true") {
                return Err(RuntimeError::Conflict(format!(
                    "volume {name} exists and was not made by berth"
                )));
            }
            return Ok(v);
        }
        let mut labels: HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(OWNER_LABEL.to_owned(), "true".to_owned());
        let v = self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_owned()),
                driver: Some("local".to_owned()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| map_err("create volume", name, e))?;
        Ok(state(v))
    }

    async fn inspect(&self, name: &str) -> Result<Option<VolumeState>, RuntimeError> {
        match self.docker.inspect_volume(name).await {
            Ok(v) => Ok(Some(state(v))),
            Err(e) => match map_err("inspect volume", name, e) {
                RuntimeError::NotFound(_) => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<VolumeState>, RuntimeError> {
        let mut filter = vec![format!("{OWNER_LABEL}=true")];
        filter.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let resp = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(HashMap::from([("label".to_owned(), filter)])),
            }))
            .await
            .map_err(|e| map_err("list volumes", "volumes", e))?;
        let mut out: Vec<VolumeState> = resp
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(state)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn users(&self, name: &str) -> Result<Vec<VolumeUser>, RuntimeError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "volume".to_owned(),
                    vec![name.to_owned()],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| map_err("list containers", name, e))?;
        Ok(list
            .into_iter()
            .map(|c| VolumeUser {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            })
            .collect())
    }

    async fn export(
        &self,
        name: &str,
        image: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, RuntimeError> {
        if self.inspect(name).await?.is_none() {
            return Err(RuntimeError::NotFound(format!("volume {name}")));
        }
        let helper = self.helper(name, image).await?;
        let mut written = 0u64;
        let mut stream = self.docker.download_from_container(
            &helper,
            Some(DownloadFromContainerOptions {
                path: HELPER_PATH.to_owned(),
            }),
        );
        let result = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| map_err("read volume", name, e))?;
                out.write_all(&chunk).map_err(|e| RuntimeError::Backend {
                    op: "write volume archive",
                    message: e.to_string(),
                })?;
                written += chunk.len() as u64;
            }
            Ok::<_, RuntimeError>(())
        }
        .await;
        drop(stream);
        self.remove_helper(&helper).await;
        result.map(|()| written)
    }

    async fn replace(
        &self,
        name: &str,
        image: &str,
        tar: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<(), RuntimeError> {
        let Some(old) = self.inspect(name).await? else {
            return Err(RuntimeError::NotFound(format!("volume {name}")));
        };
        if old.labels.get(OWNER_LABEL).map(String::as_str) != Some("true") {
            return Err(RuntimeError::Conflict(format!(
                "volume {name} was not made by berth"
            )));
        }
        // The image must be there before the old content goes.
        self.docker.inspect_image(image).await.map_err(|e| {
            match map_err("inspect image", image, e) {
                RuntimeError::NotFound(_) => RuntimeError::ImageNotFound(image.to_owned()),
                e => e,
            }
        })?;
        let users = self.users(name).await?;
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            return Err(RuntimeError::Conflict(format!(
                "volume {name} is in use by {}",
                names.join(", ")
            )));
        }
        self.remove(name).await?;
        self.ensure(name, &old.labels).await?;
        let helper = self.helper(name, image).await?;
        let result = self
            .docker
            .upload_to_container(
                &helper,
                Some(UploadToContainerOptions {
                    path: "/".to_owned(),
                    ..Default::default()
                }),
                bollard::body_try_stream(tar),
            )
            .await
            .map_err(|e| map_err("write volume", name, e));
        self.remove_helper(&helper).await;
        result
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match map_err("remove volume", name, e) {
                RuntimeError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn remove_leaked_helpers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut filter = vec![
            format!("{OWNER_LABEL}=true"),
            format!("{ROLE_LABEL}=volume-helper"),
        ];
        filter.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_owned(), filter)])),
                ..Default::default()
            }))
            .await
            .map_err(|e| map_err("list containers", "volume helpers", e))?;
        let mut removed = Vec::new();
        for c in list {
            let tag = c
                .labels
                .as_ref()
                .and_then(|l| l.get(HELPER_PROCESS_LABEL))
                .cloned()
                .unwrap_or_default();
            if helper_owner_alive(&tag) {
                continue;
            }
            let Some(id) = c.id else { continue };
            self.remove_helper(&id).await;
            removed.push(
                c.names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or(id),
            );
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_leaked_only_when_its_process_is_gone() {
        // This process: alive.
        assert!(helper_owner_alive(&process_tag()));
        let pid = std::process::id();
        let host = host_name();
        let start = start_time(pid).unwrap();
        // The same pid with another start time: a reused pid, gone.
        assert!(!helper_owner_alive(&format!("{host}:{pid}:{}", start + 1)));
        // No such pid on this host: gone.
        assert!(!helper_owner_alive(&format!("{host}:4194305:1")));
        // Another host, or a tag that does not parse: kept.
        assert!(helper_owner_alive("another-host:4194305:1"));
        assert!(helper_owner_alive(""));
        assert!(helper_owner_alive("garbage"));
        assert!(helper_owner_alive(&format!("{host}:x:1")));
    }
}

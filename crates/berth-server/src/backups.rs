//! Volume backups and restores (`berth volumes backup|backups|restore`).
//!
//! A backup is the volume's content as a gzip-compressed tar archive in
//! `<data-dir>/backups/<project>/<environment>/<volume>/<id>.tar.gz`
//! (directories 0700, file 0600), read out of the volume through a helper
//! container (`berth_runtime::Volumes::export`) while the app keeps
//! running. Its record (`berth_core::volumes::Backup`) says `succeeded`
//! only after the written file was read back: its SHA-256 must equal the
//! one computed while writing, and it must decompress and list as a tar
//! archive. Anything else ends `failed` with the reason. With
//! `--backup-url` the archive is an object in an S3-compatible bucket
//! ([`crate::s3`]): written to a staging file, uploaded, downloaded again
//! and read back the same way; restore downloads it and verifies it first.
//!
//! ```text
//! restore(volume, backup):
//!   the archive's checksum verified           (mismatch → refused, backup marked failed, nothing touched)
//!   containers mounting the volume: berth's own deployment instances only
//!                                             (a run going, a foreign container → refused)
//!   health monitors of those deployments stopped; warm ones end their bake
//!   instances stopped, then the current content backed up (trigger pre_restore)
//!   instances removed; the volume removed, made again, the archive written in
//!   active deployments: their instances started again, recorded, routed, watched
//! ```
//!
//! One volume operation runs at a time on a server ([`VOLUME_OPS`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::model::Deployment;
use berth_core::state::Health;
use berth_core::volumes::{Backup, BackupStatus, BackupTrigger};
use berth_runtime::{DEPLOYMENT_LABEL, OWNER_LABEL};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deployer::Deployer;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::pipeline::INSTANCE_LABEL;
use crate::s3::BackupTarget;

/// How often the leader looks for due scheduled backups.
pub const SCHEDULE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Who a scheduled backup is recorded as requested by.
pub const SCHEDULER: &str = "scheduler";

/// Serialises backups and restores on this server.
static VOLUME_OPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What `restore` did: the backup put back and the one that keeps the
/// content it replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreOutcome {
    pub restored: Backup,
    pub previous: Backup,
    /// Deployments whose instances were stopped and started again.
    pub restarted: Vec<String>,
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn checksum_of(hash: Sha256) -> String {
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// Reads an archive back: its checksum, and that it decompresses and lists
/// as a tar archive. Returns the checksum and the number of entries.
pub fn read_back(path: &Path) -> Result<(String, u64), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| format!("the archive does not read back: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("the archive does not read back: {e}"))?;
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| format!("the archive does not read back: {e}"))?;
        entries += 1;
    }
    if entries == 0 {
        return Err("the archive holds no entry".into());
    }
    Ok((checksum_of(hash), entries))
}

/// A new file only its owner reads (0600).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// [`create_private`], for async code.
pub(crate) async fn create_private_async(path: &Path) -> std::io::Result<tokio::fs::File> {
    let p = path.to_owned();
    let f = tokio::task::spawn_blocking(move || create_private(&p))
        .await
        .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(f))
}

fn private_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut d = Some(dir);
        while let Some(p) = d {
            if p.file_name().is_none() || p.ends_with("backups") {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                break;
            }
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            d = p.parent();
        }
    }
    Ok(())
}

/// A staging file, removed when dropped.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Deployer {
    /// The bucket backups go to (`--backup-url`), if any.
    fn backup_target(&self) -> Option<BackupTarget> {
        self.cfg.backup_target().ok().flatten()
    }

    /// The S3 credentials of an environment (its secrets).
    async fn s3_credentials(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<rusty_s3::Credentials, String> {
        let vars = self
            .store
            .resolve_variables(project, environment)
            .await
            .map_err(|e| e.to_string())?;
        crate::s3::credentials(&vars).map_err(|e| e.to_string())
    }

    /// A file under `<data-dir>/backups/.staging/` for an archive on its
    /// way to or from the bucket.
    fn staging_path(&self, id: &str, what: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("backups")
            .join(".staging")
            .join(format!("{id}.{what}.tar.gz"))
    }

    fn backup_path(&self, b: &Backup) -> PathBuf {
        self.cfg
            .data_dir
            .join("backups")
            .join(&b.project_name)
            .join(&b.environment_name)
            .join(&b.volume)
            .join(format!("{}.tar.gz", b.id))
    }

    /// Checks the names and that the volume exists; returns its engine name.
    async fn volume_for(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
    ) -> ApiResult<String> {
        berth_core::names::volume_name(volume)?;
        self.store.get_environment(project, environment).await?;
        let seam = self.volumes_seam().map_err(ApiError::conflict)?;
        let engine = self.volume_engine_name(project, environment, volume);
        match seam.inspect(&engine).await {
            Ok(Some(_)) => Ok(engine),
            Ok(None) => Err(ApiError::not_found(format!(
                "volume {volume} not found in {project}/{environment} (it is made by the first deployment that mounts it)"
            ))),
            Err(e) => Err(ApiError::unavailable(format!("cannot inspect volume {volume}: {e}"))),
        }
    }

    /// The deployments of the environment whose recorded settings mount
    /// `volume`, newest first.
    async fn deployments_mounting(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
    ) -> ApiResult<Vec<Deployment>> {
        let all = self
            .store
            .list_deployments(&berth_store::DeploymentQuery {
                project: Some(project.to_owned()),
                environment: Some(environment.to_owned()),
                ..Default::default()
            })
            .await?;
        Ok(all
            .into_iter()
            .filter(|d| {
                crate::pipeline::service_from_record(d)
                    .volumes
                    .values()
                    .any(|v| v == volume)
            })
            .collect())
    }

    /// An image the engine has to make the helper container from: the
    /// active deployment's, else the newest one's that mounted the volume.
    async fn helper_image(&self, candidates: &[Deployment]) -> ApiResult<String> {
        let mut ordered: Vec<&Deployment> = candidates.iter().filter(|d| d.is_active).collect();
        ordered.extend(candidates.iter().filter(|d| !d.is_active));
        for d in ordered {
            if let Some(img) = &d.image {
                if matches!(self.images.exists(&img.reference).await, Ok(true)) {
                    return Ok(img.reference.clone());
                }
            }
        }
        Err(ApiError::conflict(
            "no image of a deployment that mounts this volume is on the engine to read it with",
        ))
    }

    /// `berth volumes backup`: archives the volume's content. The record
    /// comes back `succeeded` (read back and verified) or `failed` with
    /// the reason.
    pub async fn backup_volume(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
        requested_by: &str,
    ) -> ApiResult<Backup> {
        let _one = VOLUME_OPS.lock().await;
        let engine = self.volume_for(project, environment, volume).await?;
        let mounting = self
            .deployments_mounting(project, environment, volume)
            .await?;
        let image = self.helper_image(&mounting).await?;
        self.backup_locked(
            project,
            environment,
            volume,
            &engine,
            &image,
            requested_by,
            BackupTrigger::Manual,
        )
        .await
    }

    /// Makes one backup (the caller holds [`VOLUME_OPS`]).
    #[allow(clippy::too_many_arguments)]
    async fn backup_locked(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
        engine: &str,
        image: &str,
        requested_by: &str,
        trigger: BackupTrigger,
    ) -> ApiResult<Backup> {
        let seam = self.volumes_seam().map_err(ApiError::conflict)?.clone();
        let mut b = Backup {
            id: new_id(),
            project_name: project.to_owned(),
            environment_name: environment.to_owned(),
            volume: volume.to_owned(),
            status: BackupStatus::Running,
            trigger,
            size_bytes: None,
            checksum: None,
            location: None,
            requested_by: requested_by.to_owned(),
            error: None,
            created_at: now(),
            completed_at: None,
        };
        self.store.insert_backup(&b).await?;
        let target = self.backup_target();
        let key = target
            .as_ref()
            .map(|t| t.key(project, environment, volume, &b.id));
        // With a bucket the archive is written to a staging file, uploaded,
        // and downloaded again to be verified; else it is the backup file.
        let (path, _staged) = match &target {
            Some(_) => {
                let p = self.staging_path(&b.id, "upload");
                (p.clone(), Some(Staged(p)))
            }
            None => (self.backup_path(&b), None),
        };
        b.location = Some(match (&target, &key) {
            (Some(t), Some(k)) => t.location(k),
            _ => path.display().to_string(),
        });
        let mut uploaded = None;
        let result: Result<(u64, String), String> = async {
            let creds = match &target {
                Some(_) => Some(self.s3_credentials(project, environment).await?),
                None => None,
            };
            private_dirs(path.parent().expect("backup path has a parent"))
                .map_err(|e| format!("cannot create the backup directory: {e}"))?;
            let file = create_private(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = Hashing {
                inner: flate2::write::GzEncoder::new(
                    Hashing {
                        inner: file,
                        hash: Sha256::new(),
                        bytes: 0,
                    },
                    flate2::Compression::default(),
                ),
                hash: Sha256::new(),
                bytes: 0,
            };
            seam.export(engine, image, &mut out)
                .await
                .map_err(|e| format!("cannot read the volume: {e}"))?;
            let file = out
                .inner
                .finish()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            file.inner
                .sync_all()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let (size, written) = (file.bytes, checksum_of(file.hash));
            // Read it back: only a verified archive is a backup.
            let check = match (&target, &key, &creds) {
                (Some(t), Some(k), Some(c)) => {
                    uploaded = Some((t.clone(), k.clone(), c.clone()));
                    t.put_file(c, k, &path).await.map_err(|e| e.to_string())?;
                    let _ = std::fs::remove_file(&path);
                    let back = self.staging_path(&b.id, "check");
                    let guard = Staged(back.clone());
                    t.get_file(c, k, &back).await.map_err(|e| e.to_string())?;
                    Some((back, guard))
                }
                _ => None,
            };
            let p = check.as_ref().map_or(path.clone(), |(p, _)| p.clone());
            let (read, _) = tokio::task::spawn_blocking(move || read_back(&p))
                .await
                .map_err(|e| e.to_string())??;
            if read != written {
                return Err(format!(
                    "checksum mismatch reading the archive back (wrote {written}, read {read})"
                ));
            }
            Ok((size, written))
        }
        .await;
        match result {
            Ok((size, checksum)) => {
                b.status = BackupStatus::Succeeded;
                b.size_bytes = Some(size);
                b.checksum = Some(checksum);
            }
            Err(e) => {
                tracing::warn!(backup = %b.id, volume, error = %e, "backup failed");
                b.status = BackupStatus::Failed;
                b.error = Some(e);
                let _ = std::fs::remove_file(&path);
                if let Some((t, k, c)) = uploaded {
                    let _ = t.delete(&c, &k).await;
                }
                b.location = None;
            }
        }
        b.completed_at = Some(now());
        self.store.save_backup(&b).await?;
        Ok(b)
    }

    /// `berth volumes backups`: the volume's backups, newest first.
    pub async fn volume_backups(
        &self,
        project: &str,
        environment: &str,
        volume: &str,
    ) -> ApiResult<Vec<Backup>> {
        berth_core::names::volume_name(volume)?;
        self.store.get_project(project).await?;
        Ok(self
            .store
            .list_backups(project, Some(environment), Some(volume))
            .await?)
    }

    /// `berth volumes restore`: see the module's algorithm.
    pub async fn restore_volume(
        self: &Arc<Self>,
        project: &str,
        environment: &str,
        volume: &str,
        backup_id: &str,
        requested_by: &str,
    ) -> ApiResult<RestoreOutcome> {
        let _one = VOLUME_OPS.lock().await;
        let mut backup = self.store.get_backup(backup_id).await?;
        if backup.project_name != project
            || backup.environment_name != environment
            || backup.volume != volume
        {
            return Err(ApiError::not_found(format!(
                "backup {backup_id} is not a backup of volume {volume} in {project}/{environment}"
            )));
        }
        if backup.status != BackupStatus::Succeeded {
            return Err(ApiError::conflict(format!(
                "backup {backup_id} is {}: only a succeeded backup can be restored",
                backup.status
            )));
        }
        let engine = self.volume_for(project, environment, volume).await?;
        // 1. The archive must read back with its checksum (from the
        // bucket: downloaded to a staging file first).
        let location = backup.location.clone().unwrap_or_default();
        let (path, _staged) = if crate::s3::is_object(&location) {
            let target = self.backup_target().ok_or_else(|| {
                ApiError::conflict(format!(
                    "backup {backup_id} is in {location} and this server has no --backup-url"
                ))
            })?;
            let key = target.key_of(&location).ok_or_else(|| {
                ApiError::conflict(format!(
                    "backup {backup_id} is in {location}, not in this server's --backup-url bucket"
                ))
            })?;
            let creds = self
                .s3_credentials(project, environment)
                .await
                .map_err(ApiError::conflict)?;
            let staged = self.staging_path(&new_id(), "restore");
            private_dirs(staged.parent().expect("staging path has a parent")).map_err(|e| {
                ApiError::internal(format!("cannot create the staging directory: {e}"))
            })?;
            let guard = Staged(staged.clone());
            match target.get_file(&creds, key, &staged).await {
                Ok(_) => {}
                Err(crate::s3::S3Error::Missing(why)) => {
                    backup.status = BackupStatus::Failed;
                    backup.error = Some(format!("cannot be read back: {why}"));
                    self.store.save_backup(&backup).await?;
                    return Err(ApiError::conflict(format!(
                        "backup {backup_id} cannot be restored, nothing was changed: {why}"
                    )));
                }
                Err(e) => return Err(ApiError::unavailable(e.to_string())),
            }
            (staged, Some(guard))
        } else {
            (self.backup_path(&backup), None)
        };
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || read_back(&p))
            .await
            .map_err(ApiError::internal)?;
        let verdict = match read {
            Ok((sum, _)) if Some(&sum) == backup.checksum.as_ref() => Ok(()),
            Ok((sum, _)) => Err(format!(
                "checksum mismatch: recorded {}, the archive reads {sum}",
                backup.checksum.as_deref().unwrap_or("none")
            )),
            Err(e) => Err(e),
        };
        if let Err(why) = verdict {
            backup.status = BackupStatus::Failed;
            backup.error = Some(format!("cannot be read back: {why}"));
            self.store.save_backup(&backup).await?;
            return Err(ApiError::conflict(format!(
                "backup {backup_id} cannot be restored, nothing was changed: {why}"
            )));
        }
        // 2. Who mounts the volume: berth's own deployment instances only.
        let seam = self.volumes_seam().map_err(ApiError::conflict)?.clone();
        let users = seam
            .users(&engine)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let mounting = self
            .deployments_mounting(project, environment, volume)
            .await?;
        let image = self.helper_image(&mounting).await?;
        let mut affected: Vec<Deployment> = Vec::new();
        for u in &users {
            let ours = u.labels.get(OWNER_LABEL).map(String::as_str) == Some("true")
                && u.labels.get(INSTANCE_LABEL) == Some(&self.instance);
            let deployment = u
                .labels
                .get(DEPLOYMENT_LABEL)
                .and_then(|id| mounting.iter().find(|d| &d.id == id))
                .or_else(|| {
                    mounting
                        .iter()
                        .find(|d| crate::pipeline::replicas::instance_ids(d).contains(&u.id))
                });
            match (ours, deployment) {
                (true, Some(d)) => {
                    if !affected.iter().any(|a| a.id == d.id) {
                        affected.push(d.clone());
                    }
                }
                _ => {
                    return Err(ApiError::conflict(format!(
                        "volume {volume} is in use by container {} (a run, or not one of this server's deployments); try again when it has ended",
                        u.name
                    )))
                }
            }
        }
        // 3. Stop them (monitors first, so nothing replaces an instance).
        for d in &affected {
            self.monitors.stop(&d.id);
            if crate::pipeline::is_warm(d) {
                self.end_bake(&d.id, "volume restore").await;
            }
            self.logs.event(
                &d.id,
                &format!("volume {volume}: restoring backup {backup_id}; stopping the instances"),
            );
        }
        let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        let grace = affected
            .iter()
            .map(|d| crate::pipeline::service_from_record(d).stop_timeout)
            .max()
            .unwrap_or(berth_core::config::DEFAULT_STOP_TIMEOUT);
        let _ = self.runtime.stop_all(&ids, grace).await;
        // 4. Keep what is there now.
        let previous = self
            .backup_locked(
                project,
                environment,
                volume,
                &engine,
                &image,
                requested_by,
                BackupTrigger::PreRestore,
            )
            .await;
        let result: ApiResult<Backup> = match previous {
            Ok(prev) if prev.status == BackupStatus::Succeeded => {
                // 5. Replace the content.
                let _ = self.runtime.remove_all(&ids).await;
                let body = archive_stream(path);
                match seam.replace(&engine, &image, body).await {
                    Ok(()) => Ok(prev),
                    Err(e) => Err(ApiError::conflict(format!(
                        "cannot restore volume {volume}: {e}; its previous content is backup {}",
                        prev.id
                    ))),
                }
            }
            Ok(prev) => Err(ApiError::conflict(format!(
                "the content before the restore could not be backed up ({}); nothing was restored",
                prev.error.unwrap_or_default()
            ))),
            Err(e) => Err(e),
        };
        // 6. Start the active deployments again, whatever happened.
        let _ = self.runtime.remove_all(&ids).await;
        let mut restarted = Vec::new();
        for d in affected.iter().filter(|d| d.is_active) {
            if self.start_again(d, volume).await {
                restarted.push(d.id.clone());
            }
        }
        let previous = result?;
        Ok(RestoreOutcome {
            restored: backup,
            previous,
            restarted,
        })
    }

    /// Starts an active deployment's instances again after a restore:
    /// recorded, followed, routed and watched.
    async fn start_again(self: &Arc<Self>, d: &Deployment, volume: &str) -> bool {
        let Ok(mut d) = self.store.get_deployment(&d.id).await else {
            return false;
        };
        if !d.is_active {
            return false;
        }
        let service = crate::pipeline::service_from_record(&d);
        let (Some(image), Ok(vars)) = (
            d.image.clone(),
            self.store
                .resolve_variables(&d.project_name, &d.environment_name)
                .await,
        ) else {
            return false;
        };
        let spec = self.instance_spec(&d, &service, &image, &vars);
        match self.runtime.start_replicas(&spec, d.replicas.max(1)).await {
            Ok(started) => {
                let names: Vec<&str> = started.iter().map(|i| i.name.as_str()).collect();
                self.logs.event(
                    &d.id,
                    &format!("volume {volume} restored; started {}", names.join(", ")),
                );
                let infos = started
                    .iter()
                    .map(|i| crate::pipeline::replicas::instance_info(i, Health::Pending))
                    .collect();
                self.record_instances(&d, infos).await;
                if let Ok(fresh) = self.store.get_deployment(&d.id).await {
                    d = fresh;
                }
                for inst in &started {
                    let tag = (started.len() > 1).then_some(inst.name.as_str());
                    self.monitors
                        .follow_replica_logs(self, &d.id, &inst.id, None, tag);
                }
                self.monitors.watch(self, &d, &service);
                true
            }
            Err(e) => {
                self.logs.event(
                    &d.id,
                    &format!("volume {volume} restored; cannot start the instances again: {e}"),
                );
                false
            }
        }
    }
}

/// Scheduled backups (`[services.<name>.backups]`): every
/// [`SCHEDULE_EVERY`], on the leader, [`Deployer::scheduled_backups`].
pub async fn run_schedules(deployer: Arc<Deployer>) {
    loop {
        tokio::time::sleep(SCHEDULE_EVERY).await;
        if deployer.leadership.is_leader() && deployer.volumes.get().is_some() {
            let fence = deployer.leadership.fence();
            berth_store::cluster::fenced(fence, deployer.scheduled_backups(now())).await;
        }
    }
}

impl Deployer {
    /// One round of scheduled backups at `at`: for each active
    /// deployment whose recorded settings have `[services.<name>.backups]`,
    /// each of its volumes whose firing is due (`berth_core::volumes::
    /// backup_due`: the latest firing, less than one period late, not
    /// before the deployment, not already backed up) is backed up, then
    /// the volume's scheduled backups beyond `keep` are removed (file and
    /// record). Returns the backups made.
    pub async fn scheduled_backups(&self, at: chrono::DateTime<chrono::Utc>) -> Vec<Backup> {
        let Ok(all) = self
            .store
            .list_deployments(&berth_store::DeploymentQuery::default())
            .await
        else {
            return Vec::new();
        };
        let mut made = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for d in all.iter().filter(|d| d.is_active) {
            let service = crate::pipeline::service_from_record(d);
            let (Some(plan), Some(image)) = (service.backups.as_ref(), d.image.as_ref()) else {
                continue;
            };
            for volume in service.volumes.values() {
                if !seen.insert((
                    d.project_name.clone(),
                    d.environment_name.clone(),
                    volume.clone(),
                )) {
                    continue;
                }
                let Ok(list) = self
                    .store
                    .list_backups(&d.project_name, Some(&d.environment_name), Some(volume))
                    .await
                else {
                    continue;
                };
                let last = list
                    .iter()
                    .find(|b| b.trigger == BackupTrigger::Scheduled)
                    .map(|b| b.created_at);
                if berth_core::volumes::backup_due(&plan.schedule, at, Some(d.created_at), last)
                    .is_none()
                {
                    continue;
                }
                let _one = VOLUME_OPS.lock().await;
                let engine = self.volume_engine_name(&d.project_name, &d.environment_name, volume);
                match self
                    .backup_locked(
                        &d.project_name,
                        &d.environment_name,
                        volume,
                        &engine,
                        &image.reference,
                        SCHEDULER,
                        BackupTrigger::Scheduled,
                    )
                    .await
                {
                    Ok(b) => made.push(b),
                    Err(e) => {
                        tracing::warn!(project = %d.project_name, volume, error = %e.message, "scheduled backup failed");
                        continue;
                    }
                }
                let Ok(list) = self
                    .store
                    .list_backups(&d.project_name, Some(&d.environment_name), Some(volume))
                    .await
                else {
                    continue;
                };
                for old in berth_core::volumes::backups_to_prune(&list, plan.keep) {
                    if let Err(e) = self.remove_archive(old).await {
                        tracing::warn!(backup = %old.id, error = %e, "cannot remove a pruned backup's archive; its record is kept");
                        continue;
                    }
                    let _ = self.store.delete_backup(&old.id).await;
                }
            }
        }
        made
    }
}

impl Deployer {
    /// Removes a backup's archive: its file, or its object in the bucket.
    async fn remove_archive(&self, b: &Backup) -> Result<(), String> {
        let Some(location) = &b.location else {
            return Ok(());
        };
        if !crate::s3::is_object(location) {
            let _ = std::fs::remove_file(location);
            return Ok(());
        }
        let target = self
            .backup_target()
            .ok_or("the archive is in a bucket and this server has no --backup-url")?;
        let key = target
            .key_of(location)
            .ok_or("the archive is in another bucket than --backup-url's")?;
        let creds = self
            .s3_credentials(&b.project_name, &b.environment_name)
            .await?;
        match target.delete(&creds, key).await {
            Ok(()) | Err(crate::s3::S3Error::Missing(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The decompressed tar of the archive at `path`, as a stream.
fn archive_stream(
    path: PathBuf,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut gz = flate2::read::GzDecoder::new(file);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match gz.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("a.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn read_back_checks_the_sum_and_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(
            dir.path(),
            &[("berth-volume/a", "hello"), ("berth-volume/b", "x")],
        );
        let bytes = std::fs::read(&path).unwrap();
        let (sum, entries) = read_back(&path).unwrap();
        assert_eq!(
            sum,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(entries, 2);
        // One flipped byte in the middle: another sum, or no archive at all.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        match read_back(&path) {
            Ok((other, _)) => assert_ne!(other, sum),
            Err(e) => assert!(e.contains("does not read back"), "{e}"),
        }
        // Cut short.
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        assert!(read_back(&path).is_err());
        assert!(read_back(&dir.path().join("missing.tar.gz")).is_err());
    }
}

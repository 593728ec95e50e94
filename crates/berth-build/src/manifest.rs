//! Build manifest (004): path, size and sha256 of every regular file of the
//! output, sorted by path. Bounded: past `max_files` files the rest are
//! counted, not hashed, and the manifest says it is truncated.
//!
//! [`image_manifest`] exports the filesystem of a created, never started
//! container of the image (removed afterwards); [`output_manifest`] reads a
//! directory.

use std::io::Read;
use std::path::Path;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::BuildError;

/// One file of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestEntry {
    /// Absolute in an image (`/app/server.js`), relative for a directory.
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// Files of a build output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
    /// Files left out because of `max_files`.
    pub skipped: u64,
}

impl Manifest {
    pub fn truncated(&self) -> bool {
        self.skipped > 0
    }

    /// A note for logs when files were left out.
    pub fn note(&self) -> Option<String> {
        self.truncated().then(|| {
            format!(
                "manifest truncated: {} files listed, {} more skipped",
                self.entries.len(),
                self.skipped
            )
        })
    }
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOptions {
    /// Only files under this path (e.g. `/app` or `/www`); `None` = everything.
    pub root: Option<String>,
    pub max_files: usize,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            root: None,
            max_files: 10_000,
        }
    }
}

fn hash_reader(mut r: impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// The manifest of a directory (symlinks are not followed).
pub fn output_manifest(dir: &Path, opts: &ManifestOptions) -> Result<Manifest, BuildError> {
    let mut m = Manifest::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| BuildError::Io(format!("cannot read {}: {e}", d.display())))?;
        for entry in rd.filter_map(Result::ok) {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    for f in files {
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('\\', "/");
        if let Some(root) = &opts.root {
            let root = root.trim_matches('/');
            if !root.is_empty() && rel != root && !rel.starts_with(&format!("{root}/")) {
                continue;
            }
        }
        if m.entries.len() >= opts.max_files {
            m.skipped += 1;
            continue;
        }
        let file = std::fs::File::open(&f)
            .map_err(|e| BuildError::Io(format!("cannot read {rel}: {e}")))?;
        let (size, sha256) =
            hash_reader(file).map_err(|e| BuildError::Io(format!("cannot read {rel}: {e}")))?;
        m.entries.push(ManifestEntry {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(m)
}

/// The manifest of an image's filesystem.
pub async fn image_manifest(
    docker: &Docker,
    image: &str,
    opts: &ManifestOptions,
) -> Result<Manifest, BuildError> {
    let created = docker
        .create_container(
            None::<CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(image.to_string()),
                // Never started; a command is only needed for images without CMD.
                cmd: Some(vec!["/berth-manifest".into()]),
                labels: Some([("berth.manifest".to_string(), "1".to_string())].into()),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let id = created.id;
    let result = export_manifest(docker, &id, opts).await;
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    result
}

async fn export_manifest(
    docker: &Docker,
    container: &str,
    opts: &ManifestOptions,
) -> Result<Manifest, BuildError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let opts2 = opts.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_tar(
            ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
            &opts2,
        )
    });
    let mut export = docker.export_container(container);
    while let Some(chunk) = export.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    reader.await.map_err(|e| BuildError::Io(e.to_string()))?
}

/// A blocking `Read` over chunks arriving on a channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

fn read_tar(r: impl Read, opts: &ManifestOptions) -> Result<Manifest, BuildError> {
    let mut m = Manifest::default();
    let root = opts
        .root
        .as_deref()
        .map(|r| r.trim_matches('/').to_string());
    let mut ar = tar::Archive::new(r);
    let entries = ar
        .entries()
        .map_err(|e| BuildError::Io(format!("image export: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::Io(format!("image export: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path() else { continue };
        let rel = path.to_string_lossy().trim_start_matches("./").to_string();
        if let Some(root) = &root {
            if !root.is_empty() && rel != *root && !rel.starts_with(&format!("{root}/")) {
                continue;
            }
        }
        if m.entries.len() >= opts.max_files {
            m.skipped += 1;
            continue;
        }
        let (size, sha256) =
            hash_reader(entry).map_err(|e| BuildError::Io(format!("image export: {e}")))?;
        m.entries.push(ManifestEntry {
            path: format!("/{rel}"),
            size,
            sha256,
        });
    }
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(m)
}

/// Remove manifest containers (never started, label `berth.manifest=1`)
/// created more than `older_than` ago: what an interrupted
/// [`image_manifest`] (a server killed mid-export) left behind. Returns how
/// many were removed.
pub async fn remove_stale_manifest_containers(
    docker: &Docker,
    older_than: std::time::Duration,
) -> Result<usize, BuildError> {
    let mut filters = std::collections::HashMap::new();
    filters.insert("label".to_string(), vec!["berth.manifest=1".to_string()]);
    filters.insert("status".to_string(), vec!["created".to_string()]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| BuildError::Docker(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let cutoff = now - older_than.as_secs() as i64;
    let mut removed = 0;
    for c in list {
        let (Some(id), Some(created)) = (c.id, c.created) else {
            continue;
        };
        if created > cutoff {
            continue;
        }
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        if docker.remove_container(&id, Some(opts)).await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_manifest_hashes_and_bounds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("www/css")).unwrap();
        std::fs::write(d.path().join("www/index.html"), "hello").unwrap();
        std::fs::write(d.path().join("www/css/a.css"), "").unwrap();
        std::fs::write(d.path().join("other.txt"), "x").unwrap();
        let m = output_manifest(
            d.path(),
            &ManifestOptions {
                root: Some("/www".into()),
                max_files: 10,
            },
        )
        .unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries[0].path, "www/css/a.css");
        assert_eq!(
            m.entries[0].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(m.entries[1].path, "www/index.html");
        assert_eq!(m.entries[1].size, 5);
        assert_eq!(
            m.entries[1].sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(!m.truncated());
        let m = output_manifest(
            d.path(),
            &ManifestOptions {
                root: None,
                max_files: 1,
            },
        )
        .unwrap();
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.skipped, 2);
        assert!(m.note().unwrap().contains("2 more skipped"));
    }
}

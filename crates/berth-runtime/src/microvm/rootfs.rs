//! Image → root disk: the image's filesystem, exported from a created (never
//! started) container through the engine API, unpacked and written into an
//! ext4 image with `mkfs.ext4 -d` (e2fsprogs ≥ 1.43; no loop mount, no
//! root needed for the image itself). Cached per image id under
//! `<state>/images/<id>.ext4`; [`remove_cached`] drops it with the image.

use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::runtime::RuntimeError;
use crate::spec::OWNER_LABEL;

/// Free space given to the app on top of the image's content.
const HEADROOM_BYTES: u64 = 256 * 1024 * 1024;

fn err(op: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend {
        op,
        message: e.to_string(),
    }
}

/// File name of an image id's root disk (`sha256:` dropped).
pub fn disk_name(image_id: &str) -> String {
    let hex = image_id.rsplit(':').next().unwrap_or(image_id);
    format!("{hex}.ext4")
}

/// The root disk of `image_id`, built when missing.
pub async fn ensure(
    docker: &Docker,
    images_dir: &Path,
    image: &str,
    image_id: &str,
) -> Result<PathBuf, RuntimeError> {
    let disk = images_dir.join(disk_name(image_id));
    if disk.is_file() {
        return Ok(disk);
    }
    tokio::fs::create_dir_all(images_dir)
        .await
        .map_err(|e| err("create image cache dir", e))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(images_dir)
        .map_err(|e| err("create rootfs work dir", e))?;
    let tar_path = work.path().join("fs.tar");
    export(docker, image, &tar_path).await?;
    let tree = work.path().join("tree");
    let tmp_disk = work.path().join("disk.ext4");
    let (tree_c, tar_c, disk_c) = (tree.clone(), tar_path.clone(), tmp_disk.clone());
    tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
        unpack(&tar_c, &tree_c)?;
        let _ = std::fs::remove_file(&tar_c);
        mkfs(&tree_c, &disk_c)
    })
    .await
    .map_err(|e| err("build root disk", e))??;
    tokio::fs::rename(&tmp_disk, &disk)
        .await
        .map_err(|e| err("store root disk", e))?;
    Ok(disk)
}

/// Removes the cached root disk of `image_id`; missing is fine.
pub fn remove_cached(images_dir: &Path, image_id: &str) {
    let _ = std::fs::remove_file(images_dir.join(disk_name(image_id)));
}

async fn export(docker: &Docker, image: &str, tar_path: &Path) -> Result<(), RuntimeError> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        // Never started; the command only has to exist for create.
        cmd: Some(vec!["/berth-export".to_owned()]),
        labels: Some(
            [(OWNER_LABEL.to_owned(), "export".to_owned())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| err("create export container", e))?;
    let result = async {
        let mut file = tokio::fs::File::create(tar_path)
            .await
            .map_err(|e| err("write image export", e))?;
        let mut stream = docker.export_container(&created.id);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err("export image filesystem", e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| err("write image export", e))?;
        }
        file.flush().await.map_err(|e| err("write image export", e))
    }
    .await;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await;
    result
}

fn unpack(tar_path: &Path, tree: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(tree).map_err(|e| err("unpack image", e))?;
    let file = std::fs::File::open(tar_path).map_err(|e| err("unpack image", e))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(is_root());
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(|e| err("unpack image", e))? {
        let mut entry = entry.map_err(|e| err("unpack image", e))?;
        // Device nodes come from the guest's devtmpfs.
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        entry.unpack_in(tree).map_err(|e| err("unpack image", e))?;
    }
    Ok(())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total += meta.len() + 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

fn mkfs(tree: &Path, disk: &Path) -> Result<(), RuntimeError> {
    let content = tree_bytes(tree);
    let size_mib = (content + content / 4 + HEADROOM_BYTES).div_ceil(1024 * 1024);
    let output = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-d"])
        .arg(tree)
        .arg(disk)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|e| err("run mkfs.ext4 (install e2fsprogs)", e))?;
    if !output.status.success() {
        return Err(err(
            "mkfs.ext4",
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_drop_the_digest_algorithm() {
        assert_eq!(disk_name("sha256:abc"), "abc.ext4");
        assert_eq!(disk_name("abc"), "abc.ext4");
    }
}

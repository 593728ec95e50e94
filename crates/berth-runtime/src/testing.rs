//! Test support, for this crate's tests and (with the `testing` feature)
//! other crates': a busybox image built `FROM scratch` through the engine's
//! legacy builder (no registry needed), and a guard that removes what a
//! test created even when it panics.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use bollard::query_parameters::{BuildImageOptions, RemoveContainerOptions, RemoveImageOptions};
use bollard::Docker;
use futures::StreamExt;

/// Tag of the shared busybox test image. Its default command is
/// `httpd -f -p 3000 -h /www`, serving `/www/index.html` (`hello from berth`).
pub const TEST_IMAGE: &str = "berth-test/busybox-httpd:latest";
/// Label put on test images and meant for test containers, so leftovers
/// can be found (`docker ps -a --filter label=dev.berth.test`).
pub const TEST_LABEL: &str = "dev.berth.test";
/// Body of `/www/index.html` in the test image.
pub const INDEX_BODY: &str = "hello from berth\n";

/// busybox applets linked into `/bin` of the test image.
const APPLETS: &[&str] = &[
    "sh", "echo", "httpd", "sleep", "cat", "ls", "env", "true", "false", "kill", "printf", "wget",
    "id", "touch", "mkdir", "rm", "seq",
];

/// Why the test image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    #[error("busybox not found at /bin/busybox (install busybox-static)")]
    NoBusybox,
    #[error("build context: {0}")]
    Context(#[from] io::Error),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("image build failed: {0}")]
    Build(String),
}

/// A client for tests: local defaults, version negotiated (the engine here
/// is older than bollard's default API version).
pub async fn connect() -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
}

static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds [`TEST_IMAGE`] unless present; returns its tag.
pub async fn ensure_test_image(docker: &Docker) -> Result<String, TestImageError> {
    let _guard = BUILD_LOCK.lock().await;
    match docker.inspect_image(TEST_IMAGE).await {
        Ok(_) => return Ok(TEST_IMAGE.to_owned()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    build_busybox_image(docker, TEST_IMAGE, &BTreeMap::new()).await?;
    Ok(TEST_IMAGE.to_owned())
}

/// Builds the busybox image under `tag`, with `labels` added (distinct
/// labels give a distinct image id). The image always carries
/// `TEST_LABEL=true`.
pub async fn build_busybox_image(
    docker: &Docker,
    tag: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), TestImageError> {
    let context = busybox_context()?;
    let mut all_labels: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all_labels.insert(TEST_LABEL.to_owned(), "true".to_owned());
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_owned(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        labels: Some(all_labels),
        ..Default::default()
    };
    let mut progress = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => TestImageError::Build(error),
            e => TestImageError::Docker(e),
        })?;
        if let Some(detail) = info.error_detail {
            return Err(TestImageError::Build(detail.message.unwrap_or_default()));
        }
    }
    Ok(())
}

/// The tar build context: `Dockerfile` and `rootfs/` with busybox, applet
/// links, `/www/index.html` and `/tmp`.
pub fn busybox_context() -> Result<Vec<u8>, TestImageError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(TestImageError::NoBusybox)?;
    let dockerfile = "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]\n";
    let mut tar = tar::Builder::new(Vec::new());
    append_file(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    append_dir(&mut tar, "rootfs/bin", 0o755)?;
    append_file(
        &mut tar,
        "rootfs/bin/busybox",
        &std::fs::read(busybox)?,
        0o755,
    )?;
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, format!("rootfs/bin/{applet}"), "busybox")?;
    }
    append_dir(&mut tar, "rootfs/www", 0o755)?;
    append_file(
        &mut tar,
        "rootfs/www/index.html",
        INDEX_BODY.as_bytes(),
        0o644,
    )?;
    append_dir(&mut tar, "rootfs/tmp", 0o1777)?;
    Ok(tar.into_inner()?)
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut header, path, io::empty())
}

/// A short random-enough suffix for unique names in tests.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Force-removes the containers and images registered with it when dropped
/// (also on panic), on a private runtime in its own thread.
#[derive(Debug, Default)]
pub struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
    volumes: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a container (id or name).
    pub fn container(&mut self, id: impl Into<String>) {
        self.containers.push(id.into());
    }

    /// Registers an image reference.
    pub fn image(&mut self, image: impl Into<String>) {
        self.images.push(image.into());
    }

    /// Registers a volume (removed after the containers).
    pub fn volume(&mut self, name: impl Into<String>) {
        self.volumes.push(name.into());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.containers.is_empty() && self.images.is_empty() && self.volumes.is_empty() {
            return;
        }
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        let volumes = std::mem::take(&mut self.volumes);
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = connect().await else { return };
                for id in containers {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        link: false,
                    };
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
                for volume in volumes {
                    let _ = docker
                        .remove_volume(
                            &volume,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
                for image in images {
                    let options = RemoveImageOptions {
                        force: true,
                        noprune: false,
                        platforms: None,
                    };
                    let _ = docker.remove_image(&image, Some(options), None).await;
                }
            });
        });
        let _ = worker.join();
    }
}

//! The guest kernel and the modules it needs.
//!
//! Debian's cloud kernel builds virtio as modules (`CONFIG_VIRTIO_PCI=m`,
//! `CONFIG_VIRTIO_BLK=m`, `CONFIG_VIRTIO_NET=m`, `CONFIG_VIRTIO_CONSOLE=m`;
//! ext4 and the 8250 serial console are built in), so berth carries them in
//! each VM's initramfs, dependencies first, read from the kernel's
//! `modules.dep`. A kernel with them built in needs none.

use std::path::{Path, PathBuf};

/// The drivers a guest needs: PCI transport, root disk, network, ports.
pub const NEEDED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio_console"];

/// The drivers a guest with volumes needs besides (virtio-fs, with fuse
/// as its dependency; `CONFIG_VIRTIO_FS=m` in Debian's cloud kernel).
pub const VOLUME_MODULES: &[&str] = &["virtiofs"];

/// Why the kernel or its modules could not be found.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no guest kernel found (looked for /boot/vmlinuz-*; install linux-image-cloud-amd64 or pass --microvm-kernel)")]
    NoKernel,
    #[error("guest kernel {0} not found")]
    Missing(PathBuf),
    #[error("kernel module {module} is neither in {dir}/modules.dep nor built in")]
    NoModule { module: String, dir: PathBuf },
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A kernel image and the modules (in load order) its guests need.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub image: PathBuf,
    /// Absolute paths of the `.ko` files, in load order.
    pub modules: Vec<PathBuf>,
    /// The `.ko` files a guest with volumes loads after `modules` (none
    /// already among them), or why the kernel has no virtio-fs.
    pub volume_modules: Result<Vec<PathBuf>, String>,
}

impl GuestKernel {
    /// `image`, or the newest `/boot/vmlinuz-*-cloud-amd64` (else any
    /// `/boot/vmlinuz-*`); modules from `/lib/modules/<version>`.
    pub fn find(image: Option<&Path>) -> Result<Self, KernelError> {
        let image = match image {
            Some(path) if path.is_file() => path.to_owned(),
            Some(path) => return Err(KernelError::Missing(path.to_owned())),
            None => newest_boot_kernel().ok_or(KernelError::NoKernel)?,
        };
        let version = image
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_owned);
        let (modules, volume_modules) = match version.map(|v| Path::new("/lib/modules").join(v)) {
            Some(dir) if dir.join("modules.dep").is_file() => {
                let read = |name: &str| {
                    let path = dir.join(name);
                    std::fs::read_to_string(&path)
                        .map_err(|source| KernelError::Io { path, source })
                };
                let dep = read("modules.dep")?;
                let builtin = read("modules.builtin").unwrap_or_default();
                let base = load_order(&dep, &builtin, NEEDED_MODULES).map_err(|module| {
                    KernelError::NoModule {
                        module,
                        dir: dir.clone(),
                    }
                })?;
                let volume = load_order(&dep, &builtin, VOLUME_MODULES)
                    .map(|order| {
                        order
                            .into_iter()
                            .filter(|m| !base.contains(m))
                            .map(|rel| dir.join(rel))
                            .collect()
                    })
                    .map_err(|module| {
                        KernelError::NoModule {
                            module,
                            dir: dir.clone(),
                        }
                        .to_string()
                    });
                (base.into_iter().map(|rel| dir.join(rel)).collect(), volume)
            }
            // A kernel without a modules tree: drivers assumed built in.
            _ => (Vec::new(), Ok(Vec::new())),
        };
        Ok(GuestKernel {
            image,
            modules,
            volume_modules,
        })
    }
}

fn newest_boot_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let cloud = kernels
        .iter()
        .rev()
        .find(|p| p.to_string_lossy().ends_with("-cloud-amd64"))
        .cloned();
    cloud.or_else(|| kernels.pop())
}

/// Module files (relative to the modules dir) to load, in order, for
/// `wanted`: each module's dependencies (last listed loads first) before
/// it, no duplicates; built-in modules are skipped. Err names a module
/// found nowhere.
pub fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let module_name = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    for want in wanted {
        let want = want.replace('-', "_");
        let line = dep.lines().find_map(|line| {
            let (path, deps) = line.split_once(':')?;
            (module_name(path) == want).then_some((path, deps))
        });
        match line {
            Some((path, deps)) => {
                for d in deps.split_whitespace().rev().chain([path]) {
                    if !order.iter().any(|o| o == d) {
                        order.push(d.to_owned());
                    }
                }
            }
            None if builtin.lines().any(|l| module_name(l) == want) => {}
            None => return Err(want),
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_load_first_without_duplicates() {
        let order = load_order(DEP, "", &["virtio_pci", "virtio_blk", "virtio-net"]).unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci_legacy_dev.ko",
                "virtio_pci.ko",
                "virtio_blk.ko",
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped_and_missing_ones_named() {
        let builtin = "kernel/drivers/char/virtio_console.ko\n";
        assert_eq!(
            load_order(DEP, builtin, &["virtio_console"]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            load_order(DEP, "", &["virtio_console"]),
            Err("virtio_console".to_owned())
        );
    }

    #[test]
    fn finds_this_hosts_cloud_kernel_when_installed() {
        match GuestKernel::find(None) {
            Ok(kernel) => {
                assert!(kernel.image.is_file());
                assert!(
                    kernel.modules.iter().all(|m| m.is_file()),
                    "{:?}",
                    kernel.modules
                );
                // virtio-fs for volumes, fuse first, nothing loaded twice.
                let volume = kernel.volume_modules.as_ref().unwrap();
                let names: Vec<_> = volume
                    .iter()
                    .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
                    .collect();
                if !names.is_empty() {
                    assert_eq!(names.last().unwrap(), "virtiofs.ko", "{names:?}");
                    assert!(names.iter().any(|n| n == "fuse.ko"), "{names:?}");
                }
                assert!(volume.iter().all(|m| !kernel.modules.contains(m)));
            }
            Err(KernelError::NoKernel) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: no guest kernel under /boot");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

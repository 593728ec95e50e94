//! Test support for the microVM runtime: the static berth-init binary
//! (built on demand) and a runtime on a temporary state dir, or a skip
//! notice when QEMU or a guest kernel is missing (a failure under
//! `CI=true`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{kernel::GuestKernel, Accel, MicroVmConfig, MicroVmRuntime};

/// Target triple the init is built for (static glibc; no musl target here).
pub const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static berth-init: `$BERTH_INIT` when set, else built with cargo
/// (`--release`, `+crt-static`) into `target/berth-init/`.
pub fn init_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("BERTH_INIT") {
        return Ok(PathBuf::from(path));
    }
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let root = workspace_root();
    let target_dir = root.join("target/berth-init");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "berth-init",
            "--target",
            INIT_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("run cargo to build berth-init: {e}"))?;
    if !status.success() {
        return Err(format!("building berth-init failed: {status}"));
    }
    let path = target_dir.join(INIT_TARGET).join("release/berth-init");
    *built = Some(path.clone());
    Ok(path)
}

/// What a microVM test needs on the host, or why it is missing.
pub fn host_ready() -> Result<(), String> {
    let qemu = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    if !qemu {
        return Err("qemu-system-x86_64 not found (install qemu-system-x86)".into());
    }
    GuestKernel::find(None).map_err(|e| e.to_string())?;
    Ok(())
}

/// What a microVM test with volumes needs besides [`host_ready`]: virtiofsd.
pub fn volumes_ready() -> Result<(), String> {
    host_ready()?;
    super::virtiofs::find()
        .map(|_| ())
        .ok_or_else(|| "virtiofsd not found (install qemu-system-common)".to_owned())
}

/// `Some(())` when microVM tests can run; otherwise prints why and returns
/// `None`, or panics under `CI=true`.
pub fn require_host(test: &str) -> Option<()> {
    require(test, host_ready())
}

/// [`require_host`] for a test with volumes ([`volumes_ready`]).
pub fn require_volumes(test: &str) -> Option<()> {
    require(test, volumes_ready())
}

fn require(test: &str, ready: Result<(), String>) -> Option<()> {
    match ready {
        Ok(()) => Some(()),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: {why} (CI=true: microVM tests must run)")
        }
        Err(why) => {
            eprintln!("skipped {test}: {why}");
            None
        }
    }
}

/// A TCG runtime on `state_dir`.
pub async fn runtime(state_dir: &Path, accel: Accel) -> MicroVmRuntime {
    let docker = crate::testing::connect().await.expect("connect to docker");
    MicroVmRuntime::new(
        docker,
        MicroVmConfig {
            state_dir: state_dir.to_owned(),
            kernel: None,
            init: init_binary().expect("berth-init"),
            accel,
            qemu: PathBuf::from("qemu-system-x86_64"),
        },
    )
    .await
    .expect("microvm runtime")
}

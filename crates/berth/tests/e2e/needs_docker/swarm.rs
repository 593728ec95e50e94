//! `--runtime swarm` through the binary. The machine's engine is only
//! asked whether it is a swarm manager (read only); nothing joins a swarm.

use crate::harness::*;

/// The engine is not a swarm manager: the server does not start, and says
/// in one line how to make it one.
#[test]
fn swarm_runtime_on_an_engine_that_is_no_manager_refuses_to_start() {
    let info = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
    if info.trim() == "true" {
        eprintln!("SKIPPED: this engine is a swarm manager");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--token",
            "x",
            "--runtime",
            "swarm",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("--runtime swarm"))
        .unwrap_or_else(|| panic!("no --runtime swarm line: {err}"));
    assert!(line.contains("not a swarm manager"), "{line}");
    assert!(line.contains("docker swarm init"), "{line}");
}

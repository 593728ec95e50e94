//! Integration tests of berth-build. Docker tests live in `needs_docker`.

mod clone;
mod needs_docker;
mod plans;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_build::LogSink;

/// `examples/apps/<name>` of the repository.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps")
        .join(name)
}

/// A sink that keeps every line.
pub fn recording_sink() -> (LogSink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    (
        Arc::new(move |line: &str| l2.lock().unwrap().push(line.to_string())),
        lines,
    )
}

/// A test whose tool `what` is missing: under `CI=true` a failure, never a
/// silent pass; elsewhere the caller returns (skips) after this notice.
pub fn missing_tool(what: &str, install: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing and CI=true: {install} (scripts/ensure-deps.sh does it)");
    }
    eprintln!("SKIPPED: {what} is missing ({install}); under CI=true this fails");
}

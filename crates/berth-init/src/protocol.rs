//! The records the init and the host exchange over virtio-console ports.

use serde::{Deserialize, Serialize};

/// Port carrying the app's stdout ([`crate::lines`] records).
pub const STDOUT_PORT: &str = "berth.stdout";
/// Port carrying the app's stderr ([`crate::lines`] records).
pub const STDERR_PORT: &str = "berth.stderr";
/// Guest → host [`Status`] records, one JSON object per line.
pub const STATUS_PORT: &str = "berth.status";
/// Host → guest [`Control`] records, one JSON object per line.
pub const CONTROL_PORT: &str = "berth.control";

/// What the init reports about the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Status {
    /// A probe boot got through stage 1.
    ProbeOk,
    /// The app's process was started (guest clock, ms since the epoch),
    /// with where the boot time went: the kernel's uptime when the init
    /// began (`init_uptime_ms`: kernel boot) and when the app was spawned
    /// (`app_uptime_ms`; the difference is the init's work).
    Started {
        pid: i32,
        at_ms: i64,
        #[serde(default)]
        init_uptime_ms: u64,
        #[serde(default)]
        app_uptime_ms: u64,
    },
    /// The app exited: its code (128 + signal when killed) and whether the
    /// kernel's OOM killer ran meanwhile.
    Exited { code: i32, oom: bool, at_ms: i64 },
    /// The app exited (`code`, `oom` and `at_ms` as in `Exited`) and the
    /// restart policy starts it again in the same VM after `delay_ms`; this
    /// is restart number `restarts`. A `Started` record follows, or an
    /// `Exited` one when the host stops the VM meanwhile.
    Restarting {
        code: i32,
        oom: bool,
        at_ms: i64,
        restarts: u32,
        delay_ms: u64,
    },
    /// The init could not start the app (or failed before it); an
    /// `Exited` record follows.
    Error { message: String },
}

/// What the host asks the init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Send `signal` to the app (SIGKILL kills every process in the VM).
    Signal { signal: i32 },
}

/// One record as a line (JSON + `\n`).
pub fn encode<T: Serialize>(record: &T) -> String {
    let mut line = serde_json::to_string(record).expect("records always serialize");
    line.push('\n');
    line
}

/// Every well-formed record in `text`, in order; torn or foreign lines are
/// skipped (the host may read a file while the guest is writing it).
pub fn decode_all<T: for<'de> Deserialize<'de>>(text: &str) -> Vec<T> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip_and_skip_torn_lines() {
        let records = vec![
            Status::Started {
                pid: 7,
                at_ms: 1,
                init_uptime_ms: 3000,
                app_uptime_ms: 3500,
            },
            Status::Error {
                message: "entrypoint \"/nope\" not found".into(),
            },
            Status::Restarting {
                code: 3,
                oom: false,
                at_ms: 2,
                restarts: 1,
                delay_ms: 100,
            },
            Status::Exited {
                code: 137,
                oom: true,
                at_ms: 2,
            },
        ];
        let mut text: String = records.iter().map(encode).collect();
        text.push_str("{\"event\":\"exi");
        assert_eq!(decode_all::<Status>(&text), records);
    }

    #[test]
    fn control_wire_format_is_stable() {
        assert_eq!(
            encode(&Control::Signal { signal: 15 }),
            "{\"op\":\"signal\",\"signal\":15}\n"
        );
        assert_eq!(
            decode_all::<Control>("{\"op\":\"signal\",\"signal\":9}\ngarbage\n"),
            vec![Control::Signal { signal: 9 }]
        );
    }
}

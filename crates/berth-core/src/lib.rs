//! berth-core: the domain of berth, with no IO.
//!
//! It holds the records ([`model`]), the deployment state machine
//! ([`state::transition`], the only way a deployment's status, stage and
//! health change), `berth.toml` ([`config`]), name rules ([`names`]),
//! durations and sizes ([`units`]), the hostnames deployments get
//! ([`hosts`]), the cron schedules of jobs ([`schedule`]) and the telemetry variables every instance gets
//! ([`telemetry`]).
//!
//! Invariants: nothing here touches the network, disk, clock or random
//! numbers — callers pass timestamps and ids in — so every function is
//! deterministic and tested by table. Illegal input is an error value,
//! never a panic.
pub mod access;
pub mod api;
pub mod canary;
pub mod config;
pub mod hosts;
pub mod model;
pub mod names;
pub mod notify;
pub mod ops;
pub mod redact;
pub mod schedule;
pub mod state;
pub mod telemetry;
pub mod units;
pub mod volumes;

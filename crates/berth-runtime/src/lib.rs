//! berth-runtime: how berth runs app instances.
//!
//! The [`Runtime`] trait is the whole interface the server's pipeline uses
//! to run instances: start one from an [`InstanceSpec`], inspect, stop,
//! remove, list the ones berth owns, stream their logs, run a one-off
//! command to completion. [`Images`] is the image seam beside it (check or
//! remove an image where the runtime starts from): [`EngineImages`] for a
//! local engine's store, [`RegistryImages`] for a registry a remote runtime
//! pulls from. Both are backend-neutral (no engine types, no engine words
//! cross them: an instance is reached at an [`Endpoint`], named by
//! [`instance_name`], restarted per [`RestartPolicy`], reported as an
//! [`InstanceStatus`]) so a swarm or microVM runtime implements them too;
//! [`DockerRuntime`] implements `Runtime` on a Docker Engine (API 1.41+),
//! [`MicroVmRuntime`] with one QEMU microVM per instance ([`microvm`]), and
//! [`microvm::Isolating`] picks one of them per instance. This crate
//! depends on no other berth crate but `berth-init` (the guest init's wire
//! formats): the server wires it.
//!
//! Invariants every backend keeps (see [`Runtime`] for the per-method ones):
//!
//! - **Ownership**: every instance carries [`OWNER_LABEL`]`=true` plus the
//!   project/service/environment/deployment labels the caller passes
//!   ([`berth_labels`]); `list_owned` returns exactly those, so the
//!   reconciler never touches anything else on the host.
//! - **Reachable from the edge, nothing more**: an instance's [`Endpoint`]
//!   is where berth's proxy connects (Docker: `spec.port` published on
//!   127.0.0.1 with an ephemeral host port, read back after start). The
//!   endpoint belongs to one run: after a restart (restart policy, engine
//!   restart) it may differ, so callers re-read it from
//!   `inspect`/`list_owned`.
//! - **Names are DNS labels** (≤ 63, lowercase letters, digits, '-'), made
//!   by [`instance_name`] only.
//! - **Hardening** (Docker): `no-new-privileges`, all capabilities dropped
//!   except [`docker::CAP_ADD`], an init process as PID 1 (SIGTERM works for
//!   apps that ignore it as PID 1), memory (no swap), CPU and PID limits,
//!   json-file logs capped at 3 × 10 MB. Specs are validated first
//!   ([`InstanceSpec::validate`]): host paths and the engine socket are never
//!   mounted.
//! - **Idempotent teardown**: `stop` of a stopped instance and `remove` of a
//!   missing one succeed; a failed `start` leaves nothing behind; a one-off
//!   is always removed.
//! - **Bounded output**: log lines are cut at [`logs::MAX_LINE_BYTES`];
//!   one-off output keeps the last [`ONEOFF_MAX_LINES`] lines.
//!
//! [`SwarmRuntime`] implements it on a Docker Swarm manager: one Swarm
//! service per deployment, instances are its slots, reached at
//! `<node address>:<host-mode published port>` (see [`swarm`]; its
//! endpoints are reachable from the edge, not loopback).
//!
//! [`Volumes`] is the seam for named volumes (create, list, read and
//! replace their content through a never-started helper container);
//! [`DockerVolumes`] implements it, the other backends have none.
//!
//! [`health`] probes an instance over HTTP at its endpoint. With
//! the `testing` feature, `testing` builds the busybox test image and `fake`
//! holds `FakeRuntime`, a recording in-memory runtime for pipeline tests.

pub mod docker;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod health;
pub mod images;
pub mod logs;
pub mod microvm;
pub mod runtime;
pub mod spec;
pub mod swarm;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod volumes;

pub use docker::{DockerRuntime, EngineImages};
pub use health::{probe, ProbeFailure, ProbeResult, ProbeSchedule};
pub use images::{Images, RegistryImages};
pub use microvm::{MicroVmConfig, MicroVmRuntime};
pub use runtime::{Attach, AttachTty, Runtime, RuntimeError, TtySize};
pub use spec::{
    berth_labels, instance_name, is_dns_label, replica_name, shell_command, BadEndpoint, Endpoint,
    Instance, InstanceSpec, InstanceState, InstanceStatus, Limits, LogChunk, LogOptions, LogStream,
    OneOffOutcome, RestartPolicy, SpecError, VolumeMount, DEPLOYMENT_LABEL, ENVIRONMENT_LABEL,
    MAX_NAME_LEN, NODE_LABEL, ONEOFF_MAX_LINES, OWNER_LABEL, PORT_LABEL, PROJECT_LABEL,
    SERVICE_LABEL,
};
pub use swarm::{SwarmConfig, SwarmRuntime};
pub use volumes::{DockerVolumes, VolumeState, VolumeUser, Volumes};

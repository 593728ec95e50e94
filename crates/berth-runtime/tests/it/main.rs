//! Integration tests of berth-runtime against a real Docker Engine.
//! Everything that needs Docker sits in `needs_docker`, so a fast run can
//! skip it with `cargo test -- --skip needs_docker`; `swarm` makes its own
//! two-node swarm (root, network namespaces) and is skipped the same way.

mod needs_docker;
mod needs_qemu;
mod registry;
mod swarm;

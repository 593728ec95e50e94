//! Integration tests of berth-runtime against a real Docker Engine.
//! Everything that needs Docker sits in `needs_docker`, so a fast run can
//! skip it with `cargo test -- --skip needs_docker`.

mod needs_docker;
mod needs_qemu;

//! berth-core: the domain of berth, with no IO.
pub mod config;

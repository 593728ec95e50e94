//! berth.toml: per-service settings (placeholder, being written).

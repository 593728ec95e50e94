//! berth-server: the control plane.
pub mod config;

pub use config::ServerConfig;

/// Run `berth server` until SIGTERM or Ctrl-C.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let _ = cfg;
    anyhow::bail!("not yet")
}

//! One module per verb group; each takes a [`Ctx`] and its clap arguments.

use crate::client::{ApiClient, Reply};
use crate::output::emitln;

pub mod admin;
pub mod cluster;
pub mod deploy;
pub mod domains;
pub mod env;
pub mod envs;
pub mod inspect;
pub mod jobs;
pub mod logs;
pub mod maintenance;
pub mod nodes;
pub mod notify;
pub mod projects;
pub mod routes;
pub mod run;
pub mod server;
pub mod status;
pub mod tokens;
pub mod volumes;

/// What every client verb needs.
pub struct Ctx {
    pub client: ApiClient,
    /// Print the API's JSON instead of human output.
    pub json: bool,
}

impl Ctx {
    /// Print an answer as pretty JSON, exactly as the API returned it.
    pub fn print_json<T>(&self, reply: &Reply<T>) -> anyhow::Result<()> {
        emitln(&reply.pretty()?);
        Ok(())
    }
}

/// `yes` / `no`
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `-` for nothing.
pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// The deployments of `tests/fixtures/deployments.json`.
#[cfg(test)]
pub(crate) fn fixture_deployments() -> Vec<berth_core::model::Deployment> {
    serde_json::from_str(include_str!("../../tests/fixtures/deployments.json"))
        .expect("fixture parses")
}

//! `berth`: the command-line client of berth, and `berth server`.
//!
//! Every verb but `server` is a thin client of the HTTP API under
//! `/api/v1`: it uses only the request and response types of `berth-core`
//! ([`berth_core::api`], [`berth_core::model`]) and HTTP, never the store.
//!
//! Invariants:
//! - `--json` prints the API's answer exactly as returned (pretty-printed,
//!   keys in the server's order) and nothing else on stdout.
//! - On any failure the exit code is 1 and stderr ends with one line
//!   `error: <message>`; bad or unexpected server answers are errors, never
//!   panics.
//! - Secret variable values are never printed.
//!
//! Code map: [`client`] (one typed method per endpoint), `cmd/<verb>.rs`
//! (one file per verb group), [`output`] (tables, ages, the live step
//! display), [`args`] (flag value parsers).

mod client;
mod cmd;
mod output;
mod terminal;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Deploy apps from Git to your own server, with zero downtime and instant rollback"
)]
struct Cli {
    /// Base URL of the berth API.
    #[arg(
        long,
        global = true,
        env = "BERTH_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,
    /// API bearer token (for `server`: the token to accept). When unset, the
    /// client reads `<data-dir>/admin.token`.
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// berth's data directory [default: ./berth-data].
    #[arg(long, global = true, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print the API's JSON answer instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane, the API, the edge proxy and the console.
    Server(Box<cmd::server::ServerArgs>),
    /// Create, list, show and change projects.
    #[command(subcommand)]
    Projects(cmd::projects::ProjectsCmd),
    /// Create, list and delete environments of a project.
    #[command(subcommand)]
    Envs(cmd::envs::EnvsCmd),
    /// Set, unset and list environment variables.
    #[command(subcommand)]
    Env(cmd::env::EnvCmd),
    /// Deploy a service from its Git ref.
    Deploy(cmd::deploy::DeployArgs),
    /// Put the previously active deployment back.
    Rollback(cmd::deploy::RollbackArgs),
    /// Make a historic deployment active again.
    Promote(cmd::deploy::IdWaitArgs),
    /// Deploy the same commit again.
    Redeploy(cmd::deploy::IdWaitArgs),
    /// Cancel a queued or running deployment.
    Cancel(cmd::deploy::IdArgs),
    /// List deployments, newest first.
    Status(cmd::status::StatusArgs),
    /// Show one deployment in detail.
    Inspect(cmd::inspect::InspectArgs),
    /// Print or follow logs of a deployment, a service or a run.
    Logs(cmd::logs::LogsArgs),
    /// Run a command in a new instance of the active deployment's image.
    Run(cmd::run::RunArgs),
    /// Scheduled jobs (`[jobs.<name>]` in berth.toml): list, run now, logs.
    #[command(subcommand)]
    Jobs(cmd::jobs::JobsCmd),
    /// Signed POSTs to a URL (Slack-compatible) on deployment events.
    #[command(subcommand)]
    Notify(cmd::notify::NotifyCmd),
    /// Answer a service's (or an environment's) hostnames with berth's
    /// maintenance page (503 with Retry-After).
    #[command(subcommand)]
    Maintenance(cmd::maintenance::MaintenanceCmd),
    /// Hostnames served by upstreams berth does not run.
    #[command(subcommand)]
    Routes(cmd::routes::RoutesCmd),
    /// Custom domains of a project.
    #[command(subcommand)]
    Domains(cmd::domains::DomainsCmd),
    /// Persistent volumes and their backups.
    #[command(subcommand)]
    Volumes(cmd::volumes::VolumesCmd),
    /// The swarm's nodes (`berth server --runtime swarm`).
    #[command(subcommand)]
    Nodes(cmd::nodes::NodesCmd),
    /// The berth servers sharing one database (PostgreSQL).
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCmd),
    /// API tokens: admin, deployer or viewer, optionally for one project.
    #[command(subcommand)]
    Tokens(cmd::tokens::TokensCmd),
    /// Every change made through the API, the console and git push.
    Audit(cmd::tokens::AuditArgs),
    /// Check that the API answers.
    Health,
    /// Operations on the store itself (run on the server's machine).
    #[command(subcommand)]
    Admin(cmd::admin::AdminCmd),
}

const DEFAULT_DATA_DIR: &str = "./berth-data";

/// The token from the flag or env, else from `<data-dir>/admin.token`.
fn resolve_token(token: Option<String>, data_dir: Option<&Path>) -> Option<String> {
    if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    let dir = data_dir.unwrap_or(Path::new(DEFAULT_DATA_DIR));
    let t = std::fs::read_to_string(dir.join("admin.token")).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Server(a) = cli.command {
        let data_dir = cli.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        return cmd::server::run(*a, data_dir, cli.token).await;
    }
    if let Command::Admin(c) = cli.command {
        return cmd::admin::run(c, cli.data_dir.as_deref(), cli.json).await;
    }
    let token = resolve_token(cli.token, cli.data_dir.as_deref());
    let client = client::ApiClient::new(&cli.api, token)?;
    let ctx = cmd::Ctx {
        client,
        json: cli.json,
    };
    match cli.command {
        Command::Server(_) | Command::Admin(_) => unreachable!("handled above"),
        Command::Projects(c) => cmd::projects::run(&ctx, c).await,
        Command::Envs(c) => cmd::envs::run(&ctx, c).await,
        Command::Env(c) => cmd::env::run(&ctx, c).await,
        Command::Deploy(a) => cmd::deploy::deploy(&ctx, a).await,
        Command::Rollback(a) => cmd::deploy::rollback(&ctx, a).await,
        Command::Promote(a) => cmd::deploy::action(&ctx, a, "promote").await,
        Command::Redeploy(a) => cmd::deploy::action(&ctx, a, "redeploy").await,
        Command::Cancel(a) => cmd::deploy::cancel(&ctx, a).await,
        Command::Status(a) => cmd::status::run(&ctx, a).await,
        Command::Inspect(a) => cmd::inspect::run(&ctx, a).await,
        Command::Logs(a) => cmd::logs::run(&ctx, a).await,
        Command::Run(a) => {
            let code = cmd::run::run(&ctx, a).await?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Jobs(c) => {
            let code = cmd::jobs::run(&ctx, c).await?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Command::Routes(c) => cmd::routes::run(&ctx, c).await,
        Command::Notify(c) => cmd::notify::run(&ctx, c).await,
        Command::Maintenance(c) => cmd::maintenance::run(&ctx, c).await,
        Command::Domains(c) => cmd::domains::run(&ctx, c).await,
        Command::Nodes(c) => cmd::nodes::run(&ctx, c).await,
        Command::Volumes(c) => cmd::volumes::run(&ctx, c).await,
        Command::Cluster(c) => cmd::cluster::run(&ctx, c).await,
        Command::Tokens(c) => cmd::tokens::run(&ctx, c).await,
        Command::Audit(a) => cmd::tokens::audit(&ctx, a).await,
        Command::Health => {
            let reply = ctx.client.health().await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            output::emitln(&format!("berth API at {} is up", ctx.client.base()));
            Ok(())
        }
    }
}

/// A usage error as one line: `error: <what>; see --help`.
fn usage_error_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let body: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let text = client::one_line(&body.join(" "));
    let text = text.strip_prefix("error:").unwrap_or(&text).trim();
    format!("error: {text}; see --help")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                eprintln!("{}", usage_error_line(&e));
                return ExitCode::FAILURE;
            }
        },
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", client::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_falls_back_to_admin_token_file() {
        let dir = std::env::temp_dir().join(format!("berth-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "tok123\n").unwrap();
        assert_eq!(resolve_token(None, Some(&dir)).as_deref(), Some("tok123"));
        assert_eq!(
            resolve_token(Some("flag".into()), Some(&dir)).as_deref(),
            Some("flag")
        );
        assert_eq!(resolve_token(None, Some(&dir.join("missing"))), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dns_server_takes_several_addresses_comma_separated_or_repeated() {
        let cli = Cli::try_parse_from([
            "berth",
            "server",
            "--dns-server",
            "127.0.0.1:53,127.0.0.2:5353",
            "--dns-server",
            "[::1]:53",
        ])
        .unwrap();
        let Command::Server(args) = cli.command else {
            panic!("not server")
        };
        let cfg = args.config(PathBuf::from("/tmp/unused"), None);
        let got: Vec<String> = cfg.dns_servers.iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.1:53", "127.0.0.2:5353", "[::1]:53"]);
        let e = Cli::try_parse_from(["berth", "server", "--dns-server", "127.0.0.1:53,nope"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn usage_errors_are_one_line() {
        let e = Cli::try_parse_from(["berth", "logs"]).unwrap_err();
        let line = usage_error_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("error: ") && line.contains("<ID>"),
            "{line}"
        );
        let e = Cli::try_parse_from(["berth", "logs", "x", "--stream", "nope"]).unwrap_err();
        let line = usage_error_line(&e);
        assert!(line.contains("unknown stream \"nope\""), "{line}");
    }

    #[test]
    fn verbs_parse() {
        let ok = |args: &[&str]| {
            let mut v = vec!["berth"];
            v.extend(args);
            Cli::try_parse_from(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        ok(&[
            "projects",
            "create",
            "shop",
            "--repo",
            "/r",
            "--retain-images",
            "5",
        ])
        .unwrap();
        ok(&[
            "deploy",
            "--project",
            "shop",
            "--service",
            "web",
            "--env",
            "staging",
            "--ref",
            "main",
            "--wait",
            "--json",
        ])
        .unwrap();
        ok(&["status", "--project", "shop", "--json"]).unwrap();
        ok(&["logs", "dep_1", "--follow", "--stream", "stdout,stderr"]).unwrap();
        ok(&[
            "logs",
            "--project",
            "shop",
            "--service",
            "web",
            "--since",
            "10m",
        ])
        .unwrap();
        ok(&["env", "set", "--project", "shop", "--secret", "A=1", "B="]).unwrap();
        ok(&["routes", "add", "x.example", "--upstream", "127.0.0.1:9000"]).unwrap();
        ok(&[
            "rollback",
            "--project",
            "shop",
            "--service",
            "web",
            "--env",
            "production",
        ])
        .unwrap();
        ok(&[
            "server",
            "--data-dir",
            "/tmp/x",
            "--api-listen",
            "127.0.0.1:0",
            "--build-memory",
            "2g",
            "--drain-timeout",
            "30s",
        ])
        .unwrap();
        assert!(ok(&["server", "--build-memory", "lots"]).is_err());
        // The rules of berth-core's `units`, as in berth.toml and the API.
        assert!(ok(&["server", "--build-memory", "1.5g", "--preview-ttl", "0"]).is_ok());
        assert!(ok(&["server", "--preview-ttl", "7d", "--build-timeout", "30m"]).is_ok());
        let e = ok(&["server", "--drain-timeout", "30"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"30\" has no unit"), "{e}");
        assert!(ok(&["server", "--runtime", "microvm", "--microvm-accel", "tcg"]).is_ok());
        let e = ok(&["server", "--runtime", "vm"]).unwrap_err().to_string();
        assert!(e.contains("use docker, swarm or microvm"), "{e}");
        let e = ok(&["server", "--microvm-accel", "xen"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("use auto, kvm or tcg"), "{e}");
        assert!(ok(&["logs", "--stream", "nope", "dep_1"]).is_err());
        ok(&[
            "tokens",
            "create",
            "ci",
            "--project",
            "shop",
            "--role",
            "deployer",
            "--expires",
            "30d",
        ])
        .unwrap();
        let e = ok(&["tokens", "create", "ci", "--role", "root"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("use admin, deployer or viewer"), "{e}");
        ok(&["audit", "--project", "shop", "--json"]).unwrap();
        assert!(ok(&["projects", "create", "shop"]).is_err());
    }
}

//! `berth env set|unset|list`: environment variables of one environment.
//! Secret values are sent, never printed.

use super::Ctx;
use crate::output::{emit, emitln, timestamp, Table};
use berth_core::api::SetVariable;
use berth_core::model::PRODUCTION;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EnvCmd {
    /// Set variables: KEY=VALUE... (`KEY=` sets an empty value).
    Set {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env", default_value = PRODUCTION)]
        environment: String,
        /// Store the values sealed; they are never shown again.
        #[arg(long)]
        secret: bool,
        /// Give the values to builds too: a plain value as a build
        /// argument, a secret as a BuildKit secret
        /// (`RUN --mount=type=secret,id=KEY`), never as an image layer.
        #[arg(long)]
        build: bool,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove variables.
    Unset {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env", default_value = PRODUCTION)]
        environment: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// List variables (secrets shown as ***).
    List {
        #[arg(long, env = "BERTH_PROJECT")]
        project: String,
        #[arg(long = "env", default_value = PRODUCTION)]
        environment: String,
    },
}

/// Split `KEY=VALUE` at the first `=`.
pub fn parse_pair(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('=') {
        Some((k, _)) if k.trim().is_empty() => Err(format!("missing variable name in {s:?}")),
        Some((k, v)) => Ok((k, v)),
        None => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn run(ctx: &Ctx, cmd: EnvCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        EnvCmd::Set {
            project,
            environment,
            secret,
            build,
            pairs,
        } => {
            // Validate every pair before changing anything.
            let parsed = pairs
                .iter()
                .map(|p| parse_pair(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let mut answers = Vec::new();
            for (key, value) in parsed {
                let body = SetVariable {
                    value: value.to_string(),
                    secret,
                    build,
                };
                let reply = c.set_variable(&project, &environment, key, &body).await?;
                if ctx.json {
                    answers.push(reply.pretty()?);
                } else {
                    let v = reply.parse()?;
                    let kind = match (v.secret, v.build) {
                        (true, true) => " (secret, build)",
                        (true, false) => " (secret)",
                        (false, true) => " (build)",
                        (false, false) => "",
                    };
                    emitln(&format!("set {}{kind} in {project}/{environment}", v.key));
                }
            }
            if ctx.json {
                emitln(&format!("[{}]", answers.join(",\n")));
            }
            if !ctx.json {
                emitln("takes effect on the next deploy");
            }
        }
        EnvCmd::Unset {
            project,
            environment,
            keys,
        } => {
            for key in &keys {
                c.delete_variable(&project, &environment, key).await?;
                if !ctx.json {
                    emitln(&format!("unset {key} in {project}/{environment}"));
                }
            }
            if ctx.json {
                emitln(&serde_json::json!({ "unset": keys }).to_string());
            }
        }
        EnvCmd::List {
            project,
            environment,
        } => {
            let reply = c.list_variables(&project, &environment).await?;
            if ctx.json {
                return ctx.print_json(&reply);
            }
            let mut t = Table::new(["KEY", "VALUE", "SECRET", "BUILD", "UPDATED"]);
            for v in reply.parse()? {
                // Never show a secret, even if a server sent its value.
                let value = match (&v.value, v.secret) {
                    (Some(val), false) => val.clone(),
                    _ => "***".to_string(),
                };
                t.row([
                    v.key,
                    crate::client::one_line(&value),
                    if v.secret { "yes" } else { "no" }.to_string(),
                    if v.build { "yes" } else { "no" }.to_string(),
                    timestamp(v.updated_at),
                ]);
            }
            if t.is_empty() {
                emitln(&format!("no variables in {project}/{environment}"));
            } else {
                emit(&t.render());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_first_equals() {
        assert_eq!(parse_pair("A=1"), Ok(("A", "1")));
        assert_eq!(
            parse_pair("URL=postgres://u:p@h/db?x=y"),
            Ok(("URL", "postgres://u:p@h/db?x=y"))
        );
        assert_eq!(parse_pair("EMPTY="), Ok(("EMPTY", "")));
        assert_eq!(parse_pair("A==b"), Ok(("A", "=b")));
        let e = parse_pair("NOEQUALS").unwrap_err();
        assert!(e.contains("NOEQUALS") && !e.contains('\n'), "{e}");
        assert!(parse_pair("=value").is_err());
    }
}

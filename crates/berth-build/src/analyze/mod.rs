//! Analyze: turn a checkout into a [`BuildPlan`].
//!
//! Every [`Provider`] looks at the checkout; among those that detect it, the
//! one with the highest [`Provider::priority`] makes the plan (never the order
//! of the list). Priorities: Dockerfile 100, Node 50, Python 40, Go 30,
//! Rust 20, static site 10. Overrides apply in this order: berth.toml
//! `start_command`, then a Procfile `web:` line, then what the provider infers;
//! the port is always the service's (`berth.toml` `port`, default 3000) and a
//! generated Dockerfile sets `ENV PORT=<port>`.
//!
//! Generated Dockerfiles copy the dependency manifests and install the
//! dependencies before copying the rest, so an unchanged manifest reuses the
//! dependency layer. They use `RUN --mount=type=cache` only when
//! [`AnalyzeOptions::buildkit`] is set (the legacy builder rejects it), and
//! carry a [`BUILD_ARGS_MARKER`] line where `build()` declares the build args.

mod dockerfile;
mod go;
mod node;
mod python;
mod rust;
mod static_site;

use std::path::Path;

use berth_core::config::ServiceConfig;
use serde::Serialize;

use crate::BuildError;

/// Name of the generated Dockerfile inside the build context.
pub const GENERATED_DOCKERFILE: &str = "Dockerfile.berth";

/// Line of a generated Dockerfile after which `ARG` lines for the build args
/// are inserted.
pub const BUILD_ARGS_MARKER: &str = "# berth: build args";

/// Base images of generated Dockerfiles. Configurable so that a server
/// without internet can point them at local images (e.g. `local/node:18`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages {
    pub node: String,
    pub python: String,
    pub go: String,
    pub rust: String,
    /// Serves static files; must have busybox `httpd` (the busybox image).
    pub static_: String,
    /// Runtime of compiled binaries (Go, Rust).
    pub runtime_debian: String,
}

impl Default for BaseImages {
    fn default() -> Self {
        BaseImages {
            node: "node:20-slim".into(),
            python: "python:3.12-slim".into(),
            go: "golang:1.22".into(),
            rust: "rust:1".into(),
            static_: "busybox:1.36".into(),
            runtime_debian: "debian:bookworm-slim".into(),
        }
    }
}

/// How to analyze.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyzeOptions {
    pub base_images: BaseImages,
    /// Whether the builder is BuildKit (enables cache mounts). Default false:
    /// berth builds with the legacy builder.
    pub buildkit: bool,
}

/// The intermediate representation of a build: what was detected and the
/// Dockerfile that builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildPlan {
    /// `dockerfile`, `node`, `python`, `go`, `rust` or `static`.
    pub provider: String,
    /// e.g. `vite`, `express`, `flask`, `fastapi`.
    pub framework: Option<String>,
    /// e.g. `node 20`, `npm`, `python`, `go 1.22`.
    pub runtime: Option<String>,
    pub port: u16,
    /// The command that starts the app, when known (the image's CMD otherwise).
    pub start_command: Option<String>,
    /// The Dockerfile contents, read or generated.
    pub dockerfile: String,
    /// Path of the repository's Dockerfile, relative to the checkout, when it
    /// was read; `None` when generated (it goes in as [`GENERATED_DOCKERFILE`]).
    pub dockerfile_path: Option<String>,
    pub generated: bool,
}

/// What a provider sees.
pub struct Context<'a> {
    pub dir: &'a Path,
    pub service: &'a ServiceConfig,
    pub opts: &'a AnalyzeOptions,
    /// The command of a Procfile `web:` line.
    pub procfile_web: Option<String>,
}

impl Context<'_> {
    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.dir.join(rel).exists()
    }

    pub(crate) fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(rel)).ok()
    }

    /// berth.toml `start_command`, else the Procfile's `web:`, else `inferred`.
    pub(crate) fn start_command(&self, inferred: Option<String>) -> Option<String> {
        self.service
            .start_command
            .clone()
            .or_else(|| self.procfile_web.clone())
            .or(inferred)
    }

    /// The files of `names` that exist, in order.
    pub(crate) fn existing<'n>(&self, names: &[&'n str]) -> Vec<&'n str> {
        names.iter().copied().filter(|n| self.exists(n)).collect()
    }
}

/// A way to build a kind of repository.
pub trait Provider {
    fn name(&self) -> &'static str;
    /// Higher wins when several providers detect the same checkout.
    fn priority(&self) -> u8;
    fn detect(&self, cx: &Context<'_>) -> bool;
    fn plan(&self, cx: &Context<'_>) -> Result<BuildPlan, BuildError>;
}

/// Every provider (order irrelevant: [`Provider::priority`] decides).
fn providers() -> Vec<Box<dyn Provider>> {
    vec![
        Box::new(static_site::StaticSite),
        Box::new(rust::Rust),
        Box::new(go::Go),
        Box::new(python::Python),
        Box::new(node::Node),
        Box::new(dockerfile::DockerfileProvider),
    ]
}

/// Makes the build plan of the checkout in `dir` for `service`.
pub fn analyze(
    dir: &Path,
    service: &ServiceConfig,
    opts: &AnalyzeOptions,
) -> Result<BuildPlan, BuildError> {
    if let Some(path) = &service.dockerfile {
        if !dir.join(path).is_file() {
            return Err(BuildError::Analyze(format!(
                "dockerfile \"{path}\" set in berth.toml does not exist"
            )));
        }
    }
    let cx = Context {
        dir,
        service,
        opts,
        procfile_web: procfile_web(dir),
    };
    let chosen = providers()
        .into_iter()
        .filter(|p| p.detect(&cx))
        .max_by_key(|p| p.priority())
        .ok_or_else(|| {
            BuildError::Analyze(
                "no supported stack found (add a Dockerfile, package.json, requirements.txt, pyproject.toml, go.mod, Cargo.toml or index.html)"
                    .into(),
            )
        })?;
    chosen.plan(&cx)
}

/// The command of the Procfile's `web:` line.
fn procfile_web(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Procfile")).ok()?;
    text.lines().find_map(|l| {
        let (name, cmd) = l.split_once(':')?;
        (name.trim() == "web" && !cmd.trim().is_empty()).then(|| cmd.trim().to_string())
    })
}

/// `CMD` running a shell command with `exec`, so the app is PID 1's child
/// chain end and receives signals.
pub(crate) fn cmd_line(command: &str) -> String {
    let script = format!("exec {command}");
    format!(
        "CMD [\"/bin/sh\", \"-c\", {}]",
        serde_json::Value::String(script)
    )
}

/// `RUN` with an optional cache mount.
pub(crate) fn run_cached(opts: &AnalyzeOptions, cache_target: &str, command: &str) -> String {
    if opts.buildkit {
        format!("RUN --mount=type=cache,target={cache_target} {command}")
    } else {
        format!("RUN {command}")
    }
}

/// `COPY a b ./` for the files that exist.
pub(crate) fn copy_line(files: &[&str], dest: &str) -> String {
    format!("COPY {} {dest}", files.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = d.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, c).unwrap();
        }
        d
    }

    fn provider_of(files: &[(&str, &str)]) -> String {
        let d = dir_with(files);
        analyze(
            d.path(),
            &ServiceConfig::default(),
            &AnalyzeOptions::default(),
        )
        .unwrap()
        .provider
    }

    #[test]
    fn priorities_are_explicit_and_distinct() {
        let mut seen: Vec<(u8, &str)> = providers()
            .iter()
            .map(|p| (p.priority(), p.name()))
            .collect();
        seen.sort();
        let names: Vec<_> = seen.iter().map(|s| s.1).collect();
        assert_eq!(
            names,
            ["static", "rust", "go", "python", "node", "dockerfile"]
        );
        seen.dedup_by_key(|s| s.0);
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn priority_table() {
        let pkg = ("package.json", r#"{"scripts":{"start":"node s.js"}}"#);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("Dockerfile", "FROM scratch"), pkg], "dockerfile"),
            (&[pkg, ("requirements.txt", "flask")], "node"),
            (&[pkg, ("index.html", "<p>")], "node"),
            (
                &[
                    ("requirements.txt", "flask"),
                    ("app.py", ""),
                    ("go.mod", "module x"),
                ],
                "python",
            ),
            (
                &[
                    ("go.mod", "module x"),
                    ("Cargo.toml", "[package]\nname='x'"),
                ],
                "go",
            ),
            (
                &[("Cargo.toml", "[package]\nname='x'"), ("index.html", "<p>")],
                "rust",
            ),
            (&[("index.html", "<p>")], "static"),
            (
                &[("pyproject.toml", "[project]\nname='x'"), ("main.py", "")],
                "python",
            ),
        ];
        for (files, want) in cases {
            assert_eq!(provider_of(files), *want, "{files:?}");
        }
    }

    #[test]
    fn nothing_detected_is_an_error() {
        let d = dir_with(&[("README.md", "hi")]);
        let err = analyze(
            d.path(),
            &ServiceConfig::default(),
            &AnalyzeOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no supported stack"), "{err}");
    }

    #[test]
    fn configured_dockerfile_must_exist() {
        let d = dir_with(&[("index.html", "<p>")]);
        let svc = ServiceConfig {
            dockerfile: Some("deploy/web.Dockerfile".into()),
            ..Default::default()
        };
        let err = analyze(d.path(), &svc, &AnalyzeOptions::default()).unwrap_err();
        assert!(err.to_string().contains("deploy/web.Dockerfile"), "{err}");
    }

    #[test]
    fn start_command_overrides() {
        let files = [
            ("package.json", r#"{"scripts":{"start":"node s.js"}}"#),
            ("Procfile", "worker: node w.js\nweb: node web.js --fast\n"),
        ];
        let d = dir_with(&files);
        let opts = AnalyzeOptions::default();
        let mut svc = ServiceConfig::default();
        let plan = analyze(d.path(), &svc, &opts).unwrap();
        assert_eq!(plan.start_command.as_deref(), Some("node web.js --fast"));
        svc.start_command = Some("node other.js".into());
        svc.port = 8080;
        let plan = analyze(d.path(), &svc, &opts).unwrap();
        assert_eq!(plan.start_command.as_deref(), Some("node other.js"));
        assert_eq!(plan.port, 8080);
        assert!(
            plan.dockerfile.contains(" PORT=8080"),
            "{}",
            plan.dockerfile
        );
        assert!(plan.dockerfile.contains("exec node other.js"));
    }

    #[test]
    fn cache_mounts_only_with_buildkit() {
        let d = dir_with(&[
            ("package.json", r#"{"scripts":{"start":"node s.js"}}"#),
            ("package-lock.json", "{}"),
        ]);
        let svc = ServiceConfig::default();
        let legacy = analyze(d.path(), &svc, &AnalyzeOptions::default()).unwrap();
        assert!(!legacy.dockerfile.contains("--mount"));
        let bk = AnalyzeOptions {
            buildkit: true,
            ..Default::default()
        };
        let plan = analyze(d.path(), &svc, &bk).unwrap();
        assert!(
            plan.dockerfile.contains("RUN --mount=type=cache"),
            "{}",
            plan.dockerfile
        );
    }

    #[test]
    fn base_images_are_configurable() {
        let d = dir_with(&[("package.json", r#"{"scripts":{"start":"node s.js"}}"#)]);
        let mut opts = AnalyzeOptions::default();
        opts.base_images.node = "local/node:18".into();
        let plan = analyze(d.path(), &ServiceConfig::default(), &opts).unwrap();
        assert!(plan.dockerfile.contains("FROM local/node:18"));
        assert!(!plan.dockerfile.contains("node:20-slim"));
    }
}

//! Node.js: `package.json`. The package manager follows the lockfile (pnpm,
//! yarn, npm). With a build script and no start script, the build output
//! (`dist/`, Vite's default) is served as a static site.

use serde_json::Value;

use super::static_site::serve_stage;
use super::{cmd_line, copy_line, run_cached, BuildPlan, Context, Provider, BUILD_ARGS_MARKER};
use crate::BuildError;

pub struct Node;

#[derive(Clone, Copy)]
enum Pm {
    Npm,
    Yarn,
    Pnpm,
}

impl Pm {
    fn name(self) -> &'static str {
        match self {
            Pm::Npm => "npm",
            Pm::Yarn => "yarn",
            Pm::Pnpm => "pnpm",
        }
    }

    fn lockfile(self) -> &'static str {
        match self {
            Pm::Npm => "package-lock.json",
            Pm::Yarn => "yarn.lock",
            Pm::Pnpm => "pnpm-lock.yaml",
        }
    }

    fn install(self, locked: bool) -> &'static str {
        match (self, locked) {
            (Pm::Npm, true) => "npm ci",
            (Pm::Npm, false) => "npm install",
            (Pm::Yarn, _) => "corepack enable && yarn install --frozen-lockfile",
            (Pm::Pnpm, _) => "corepack enable && pnpm install --frozen-lockfile",
        }
    }

    fn run(self, script: &str) -> String {
        format!("{} run {script}", self.name())
    }

    fn cache_dir(self) -> &'static str {
        match self {
            Pm::Npm => "/root/.npm",
            Pm::Yarn => "/usr/local/share/.cache/yarn",
            Pm::Pnpm => "/root/.local/share/pnpm/store",
        }
    }
}

impl Provider for Node {
    fn name(&self) -> &'static str {
        "node"
    }

    fn priority(&self) -> u8 {
        50
    }

    fn detect(&self, cx: &Context<'_>) -> bool {
        cx.exists("package.json")
    }

    fn plan(&self, cx: &Context<'_>) -> Result<BuildPlan, BuildError> {
        let text = cx.read("package.json").unwrap_or_default();
        let pkg: Value = serde_json::from_str(&text)
            .map_err(|e| BuildError::Analyze(format!("package.json is not valid JSON: {e}")))?;
        let script = |name: &str| {
            pkg.pointer(&format!("/scripts/{name}"))
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string)
        };
        let has_dep = |name: &str| {
            ["dependencies", "devDependencies"]
                .iter()
                .any(|k| pkg.get(*k).and_then(|d| d.get(name)).is_some())
        };
        let pm = if cx.exists("pnpm-lock.yaml") {
            Pm::Pnpm
        } else if cx.exists("yarn.lock") {
            Pm::Yarn
        } else {
            Pm::Npm
        };
        let locked = cx.exists(pm.lockfile());
        let framework = [
            ("next", "next"),
            ("nuxt", "nuxt"),
            ("@remix-run/node", "remix"),
            ("astro", "astro"),
            ("@nestjs/core", "nestjs"),
            ("fastify", "fastify"),
            ("express", "express"),
            ("vite", "vite"),
        ]
        .into_iter()
        .find(|(dep, _)| has_dep(dep))
        .map(|(_, name)| name.to_string());
        let node_version = pkg
            .pointer("/engines/node")
            .and_then(Value::as_str)
            .map(str::to_string);
        let build_cmd = cx
            .service
            .build_command
            .clone()
            .or_else(|| script("build").map(|_| pm.run("build")));
        let start = cx.start_command(script("start").map(|_| pm.run("start")).or_else(|| {
            ["server.js", "index.js", "app.js", "main.js"]
                .into_iter()
                .find(|f| cx.exists(f))
                .map(|f| format!("node {f}"))
        }));
        let serve_static = start.is_none() && build_cmd.is_some();
        if start.is_none() && !serve_static {
            return Err(BuildError::Analyze(
                "package.json has neither a start script nor a build script (add one, a Procfile web: line, or start_command in berth.toml)".into(),
            ));
        }

        let o = cx.opts;
        let port = cx.service.port;
        let mut manifests = vec!["package.json"];
        if locked {
            manifests.push(pm.lockfile());
        }
        for extra in [".npmrc", ".yarnrc.yml", "pnpm-workspace.yaml"] {
            if cx.exists(extra) {
                manifests.push(extra);
            }
        }
        let build_line = match &build_cmd {
            Some(b) => format!("RUN {b}\n"),
            None => String::new(),
        };
        let build_stage = format!(
            "FROM {node} AS build\n\
             WORKDIR /app\n\
             {copy}\n\
             {install}\n\
             COPY . .\n\
             {BUILD_ARGS_MARKER}\n\
             {build_line}",
            node = o.base_images.node,
            copy = copy_line(&manifests, "./"),
            install = run_cached(o, pm.cache_dir(), pm.install(locked)),
        );
        let (dockerfile, runtime_start, framework) = if serve_static {
            let out = "dist";
            (
                format!(
                    "# generated by berth: node ({pm}), static output\n{build_stage}\n{serve}",
                    pm = pm.name(),
                    serve = serve_stage(cx, &format!("COPY --from=build /app/{out} /www")),
                ),
                None,
                framework.or(Some("static".into())),
            )
        } else {
            let start = start.clone().unwrap_or_default();
            let (prune, enable) = match pm {
                Pm::Npm => ("RUN npm prune --omit=dev\n", ""),
                // yarn and pnpm come through corepack, in every stage that runs them.
                Pm::Yarn | Pm::Pnpm => ("", "RUN corepack enable\n"),
            };
            (
                format!(
                    "# generated by berth: node ({pm})\n{build_stage}{prune}\n\
                     FROM {node}\n\
                     {enable}\
                     WORKDIR /app\n\
                     ENV NODE_ENV=production PORT={port}\n\
                     COPY --from=build /app /app\n\
                     EXPOSE {port}\n\
                     {cmd}\n",
                    pm = pm.name(),
                    node = o.base_images.node,
                    cmd = cmd_line(&start),
                ),
                Some(start),
                framework,
            )
        };
        Ok(BuildPlan {
            provider: self.name().into(),
            framework,
            runtime: Some(match node_version {
                Some(v) => format!("node {v}, {}", pm.name()),
                None => format!("node, {}", pm.name()),
            }),
            port,
            start_command: runtime_start,
            dockerfile,
            dockerfile_path: None,
            generated: true,
        })
    }
}

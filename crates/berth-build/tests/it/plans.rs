//! One snapshot of the generated plan per example app.

use berth_build::{analyze, AnalyzeOptions};
use berth_core::config::ServiceConfig;
use serde::Serialize;

use crate::example;

fn plan_snapshot(name: &str) {
    let plan = analyze(
        &example(name),
        &ServiceConfig::default(),
        &AnalyzeOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    // The Dockerfile as a list of lines, so that the snapshot reads well.
    #[derive(Serialize)]
    struct View<'a> {
        provider: &'a str,
        framework: Option<&'a str>,
        runtime: Option<&'a str>,
        port: u16,
        start_command: Option<&'a str>,
        dockerfile_path: Option<&'a str>,
        generated: bool,
        dockerfile: Vec<&'a str>,
    }
    let view = View {
        provider: &plan.provider,
        framework: plan.framework.as_deref(),
        runtime: plan.runtime.as_deref(),
        port: plan.port,
        start_command: plan.start_command.as_deref(),
        dockerfile_path: plan.dockerfile_path.as_deref(),
        generated: plan.generated,
        dockerfile: plan.dockerfile.lines().collect(),
    };
    insta::assert_yaml_snapshot!(name, view);
}

#[test]
fn plan_node_npm() {
    plan_snapshot("node-npm");
}

#[test]
fn plan_node_vite_static() {
    plan_snapshot("node-vite-static");
}

#[test]
fn plan_node_pnpm() {
    plan_snapshot("node-pnpm");
}

#[test]
fn plan_python_requirements() {
    plan_snapshot("python-requirements");
}

#[test]
fn plan_python_procfile() {
    plan_snapshot("python-procfile");
}

#[test]
fn plan_go() {
    plan_snapshot("go");
}

#[test]
fn plan_rust() {
    plan_snapshot("rust");
}

#[test]
fn plan_static() {
    plan_snapshot("static");
}

#[test]
fn plan_dockerfile_busybox() {
    plan_snapshot("dockerfile-busybox");
}

#[test]
fn plan_dockerfile_secrets() {
    plan_snapshot("dockerfile-secrets");
}

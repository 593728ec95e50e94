//! The console's pages, rendered from records (no IO here) with
//! `maud::html!`: every value is escaped by default.

use super::html::{
    action, badge, duration_ms, ext_link, opt_time, page, seg, short_time, time, Frame,
};
use berth_core::access::AuditEntry;
use berth_core::model::{
    Deployment, Environment, EnvironmentKind, LogLine, ManifestEntry, Project, Step, StepStatus,
    Variable,
};
use berth_core::ops::Job;
use berth_core::state::Stage;
use chrono::Utc;
use maud::{html, Markup};
use std::collections::BTreeMap;

/// Log lines rendered with the deployment page (the newest); the live
/// stream continues after the last of them.
pub const LOG_LINES: u32 = 500;
/// Files listed in a manifest page, at most.
pub const MANIFEST_ENTRIES: usize = 200;

fn dep_link(d: &Deployment) -> Markup {
    html! { a.mono href={ "/console/deployments/" (seg(&d.id)) } { (d.id) } }
}

fn project_link(name: &str) -> Markup {
    html! { a href={ "/console/projects/" (seg(name)) } { (name) } }
}

fn commit_cell(d: &Deployment) -> Markup {
    html! {
        @match &d.commit {
            Some(c) => {
                span.mono { (d.short_sha().unwrap_or("")) }
                " "
                span.msg title=(c.message) { (c.message.lines().next().unwrap_or("")) }
            }
            None => span.muted.mono { (d.reference) },
        }
    }
}

fn total_ms(d: &Deployment) -> Option<i64> {
    let start = d.started_at.unwrap_or(d.created_at);
    d.completed_at.map(|end| (end - start).num_milliseconds())
}

fn state_badges(d: &Deployment) -> Markup {
    html! {
        (badge("status", d.status.as_str())) " "
        (badge("promotion stage", d.promotion_stage.as_str())) " "
        (badge("health", d.health.as_str()))
    }
}

fn live_pill() -> Markup {
    html! { " " span.pill.live { "live" } }
}

/// What the page script compares to decide that a deployment changed.
fn watch_key(d: &Deployment) -> String {
    let steps: Vec<&str> = d.steps.iter().map(|s| s.status.as_str()).collect();
    format!(
        "{}|{}|{}|{}|{}",
        d.status.as_str(),
        d.promotion_stage.as_str(),
        d.health.as_str(),
        d.is_active,
        steps.join(",")
    )
}

pub fn login(next: &str, error: Option<&str>) -> String {
    let body = html! {
        section.card.login {
            h1 { "Sign in to berth" }
            p.muted {
                "Paste the server's API token (" code { "--token" } ", " code { "BERTH_TOKEN" }
                " or " code { "<data-dir>/admin.token" } ")."
            }
            @if let Some(e) = error {
                p.flash.bad role="alert" { (e) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token name="token" type="password" autocomplete="current-password" required autofocus;
                button.btn.primary #signin type="submit" { "Sign in" }
            }
        }
    };
    page(
        &Frame {
            title: "Sign in",
            crumbs: &[],
            csrf: None,
        },
        body,
    )
}

/// An error shown as a page.
pub fn error(status: &str, message: &str) -> String {
    let body = html! {
        section.card.error {
            h1 { (status) }
            p { (message) }
            p { a href="/console" data-back { "← Back" } " · " a href="/console" { "Projects" } }
        }
    };
    page(
        &Frame {
            title: "Error",
            crumbs: &[],
            csrf: None,
        },
        body,
    )
}

pub fn projects(csrf: &str, projects: &[Project], recent: &[Deployment]) -> String {
    let body = html! {
        div.head { h1 { "Projects" } }
        @if projects.is_empty() {
            section.card.empty {
                p { "No projects yet. Create one with " code { "berth projects create NAME --repo URL" } "." }
            }
        } @else {
            section.card {
                table.grid {
                    thead { tr {
                        th { "Project" } th { "Repository" } th { "Default branch" }
                        th { "Services live" } th { "Last deployment" } th { "Created" }
                    } }
                    tbody {
                        @for p in projects {
                            @let mine: Vec<&Deployment> = recent.iter().filter(|d| d.project_name == p.name).collect();
                            tr {
                                td.strong { (project_link(&p.name)) }
                                td.mono { (berth_core::model::mask_url(&p.repo)) }
                                td.mono { (p.default_branch) }
                                td.num { (mine.iter().filter(|d| d.is_active).count()) }
                                td {
                                    @match mine.first() {
                                        Some(d) => { (badge("status", d.status.as_str())) " " (dep_link(d)) " " (time(&d.created_at)) }
                                        None => span.muted { "none" },
                                    }
                                }
                                td { (time(&p.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &Frame {
            title: "Projects",
            crumbs: &[],
            csrf: Some(csrf),
        },
        body,
    )
}

fn kind_word(k: EnvironmentKind) -> &'static str {
    match k {
        EnvironmentKind::Production => "production",
        EnvironmentKind::Branch => "branch",
        EnvironmentKind::Preview => "preview",
    }
}

/// `can_change`: the signed-in token may deploy (deployer or admin); a
/// viewer sees no button that would be refused.
pub fn project(
    csrf: &str,
    can_change: bool,
    p: &Project,
    envs: &[Environment],
    vars: &[Vec<Variable>],
    deployments: &[Deployment],
    jobs: &[Job],
) -> String {
    let busy = deployments
        .iter()
        .any(|d| !d.status.is_terminal() || d.promotion_stage == Stage::DrainingPrevious);
    let pl = format!("/console/projects/{}", seg(&p.name));
    let stored = match (p.has_repo_credentials, p.has_deploy_key) {
        (true, true) => " · repository token and deploy key stored",
        (true, false) => " · repository token stored",
        (false, true) => " · deploy key stored",
        (false, false) => "",
    };
    let body = html! {
        div.head data-refresh-while-busy=(busy) {
            h1 { (p.name) }
            p.sub {
                span.mono { (berth_core::model::mask_url(&p.repo)) }
                " · default branch " span.mono { (p.default_branch) }
                " · keeps " (p.retain_images) " images per service · webhook secret "
                (if p.has_webhook_secret { "set" } else { "not set" })
                (stored)
            }
        }
        h2 { "Environments and services" }
        @for e in envs {
            (env_section(csrf, can_change, &pl, e, deployments))
        }
        @if !jobs.is_empty() {
            (jobs_section(jobs))
        }
        h2 { "Deployments" }
        section.card {
            @if deployments.is_empty() {
                p.muted.pad { "No deployments yet." }
            } @else {
                table.grid #deployments {
                    thead { tr {
                        th { "Deployment" } th { "Service" } th { "Environment" } th { "Status" }
                        th { "Stage" } th { "Health" } th { "Commit" } th { "Trigger" }
                        th { "Created" } th.num { "Duration" }
                    } }
                    tbody {
                        @for d in deployments {
                            tr {
                                td { (dep_link(d)) @if d.is_active { (live_pill()) } }
                                td { (d.service_name) }
                                td { (d.environment_name) }
                                td { (badge("status", d.status.as_str())) }
                                td { (badge("promotion stage", d.promotion_stage.as_str())) }
                                td { (badge("health", d.health.as_str())) }
                                td { (commit_cell(d)) }
                                td { (d.trigger.as_str()) }
                                td { (short_time(&d.created_at)) }
                                td.num { (total_ms(d).map(duration_ms).unwrap_or_else(|| "—".into())) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Variables" }
        @for (e, vs) in envs.iter().zip(vars) {
            (vars_section(csrf, can_change, &pl, e, vs))
        }
    };
    page(
        &Frame {
            title: &p.name,
            crumbs: &[(&p.name, None)],
            csrf: Some(csrf),
        },
        body,
    )
}

/// One environment's services: the newest and the active deployment of each.
fn env_section(
    csrf: &str,
    can_change: bool,
    pl: &str,
    e: &Environment,
    deployments: &[Deployment],
) -> Markup {
    let mut services: BTreeMap<&str, (Option<&Deployment>, &Deployment)> = BTreeMap::new();
    for d in deployments.iter().filter(|d| d.environment_name == e.name) {
        let entry = services.entry(&d.service_name).or_insert((None, d));
        if d.is_active && entry.0.is_none() {
            entry.0 = Some(d);
        }
    }
    html! {
        section.card.env id={ "env-" (e.name) } {
            div.card-head {
                h3 {
                    (e.name)
                    @if e.name != kind_word(e.kind) { " " span.pill { (kind_word(e.kind)) } }
                }
                span.muted {
                    @if let Some(b) = &e.branch { " · branch " span.mono { (b) } }
                }
                div.spacer {}
                @if can_change { (deploy_form(csrf, pl, &e.name, None)) }
            }
            @if services.is_empty() {
                p.muted.pad { "No deployments in this environment yet." }
            } @else {
                table.grid {
                    thead { tr {
                        th { "Service" } th { "Active deployment" } th { "URL" } th { "Status" }
                        th { "Health" } th { "Latest" } th.right { "Actions" }
                    } }
                    tbody {
                        @for (name, (active, newest)) in &services {
                            tr {
                                td.strong {
                                    a.service href={ (pl) "/services/" (seg(&e.name)) "/" (seg(name)) } title="traffic charts" { (name) }
                                }
                                @match active {
                                    Some(a) => {
                                        td { (dep_link(a)) " " (commit_cell(a)) }
                                        td { @if let Some(u) = &a.route_url { (ext_link(u)) } }
                                        td { (badge("status", a.status.as_str())) }
                                        td { (badge("health", a.health.as_str())) }
                                    }
                                    None => {
                                        td { span.muted { "none" } }
                                        td {} td {} td {}
                                    }
                                }
                                td {
                                    @if active.is_some_and(|a| a.id == newest.id) {
                                        span.muted { "same" }
                                    } @else {
                                        (dep_link(newest)) " "
                                        (badge("status", newest.status.as_str())) " "
                                        (badge("promotion stage", newest.promotion_stage.as_str()))
                                    }
                                }
                                td.right.actions {
                                    @if can_change { (deploy_form(csrf, pl, &e.name, Some(name))) }
                                    @if can_change && active.is_some() { (slot_rollback_form(csrf, pl, &e.name, name)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One environment's variables, with the editor for those who may change them.
fn vars_section(
    csrf: &str,
    can_change: bool,
    pl: &str,
    e: &Environment,
    vs: &[Variable],
) -> Markup {
    html! {
        section.card id={ "vars-" (e.name) } {
            div.card-head { h3 { (e.name) } }
            @if vs.is_empty() {
                p.muted.pad { "No variables." }
            } @else {
                table.grid.vars {
                    thead { tr { th { "Key" } th { "Value" } th { "Updated" } th.right {} } }
                    tbody {
                        @for v in vs {
                            tr {
                                td.mono.strong { (v.key) }
                                td {
                                    @match (&v.value, v.secret) {
                                        (Some(val), false) => span.mono { (val) },
                                        _ => { span.secret title="secret: never shown" { "•••" } " " span.pill { "secret" } }
                                    }
                                    @if v.build { " " span.pill title="given to builds" { "build" } }
                                }
                                td { (time(&v.updated_at)) }
                                td.right {
                                    @if can_change {
                                        form.inline method="post" action={ (pl) "/variables/unset" }
                                            data-confirm={ "Unset " (v.key) " in " (e.name) "? Deployments from now on will not have it." } {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="environment" value=(e.name);
                                            input type="hidden" name="key" value=(v.key);
                                            button.btn.small.danger type="submit" { "Unset" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if can_change {
                form.setvar method="post" action={ (pl) "/variables" } {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="environment" value=(e.name);
                    input.mono name="key" placeholder="KEY" required pattern="[A-Za-z_][A-Za-z0-9_]*" aria-label="key";
                    input.mono.grow name="value" placeholder="value" aria-label="value" autocomplete="off";
                    label.check { input type="checkbox" name="secret" value="on"; " secret" }
                    label.check title="plain: a build argument; secret: a BuildKit secret (RUN --mount=type=secret,id=KEY)" {
                        input type="checkbox" name="build" value="on"; " build"
                    }
                    button.btn type="submit" { "Set" }
                }
                p.hint {
                    "Applies to deployments started from now on. Secrets are encrypted at rest, never shown, and masked as "
                    code { "***" } " in logs."
                }
            }
        }
    }
}

/// Scheduled jobs with their next firing and last runs (newest first).
fn jobs_section(jobs: &[Job]) -> Markup {
    html! {
        h2 { "Jobs" }
        section.card #jobs {
            table.grid {
                thead { tr {
                    th { "Job" } th { "Environment" } th { "Service" } th { "Schedule (UTC)" }
                    th { "Command" } th { "Next" } th { "Last runs" }
                } }
                tbody {
                    @for j in jobs {
                        tr {
                            td.strong { (j.name) }
                            td { (j.environment_name) }
                            td { (j.service_name) }
                            td.mono { (j.schedule) }
                            td.mono { (j.command) }
                            td { @match &j.next_run_at { Some(t) => (short_time(t)), None => "—" } }
                            td {
                                @if j.last_runs.is_empty() {
                                    span.muted { "none yet" }
                                }
                                @for r in &j.last_runs {
                                    @let at = r.scheduled_for.or(r.started_at).unwrap_or(r.created_at);
                                    div title={ "run " (r.id) ": " (r.outcome()) } {
                                        (badge("run status", r.status.as_str())) " " (short_time(&at))
                                        @if let Some(c) = r.exit_code { " exit " (c) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn deploy_form(csrf: &str, pl: &str, env: &str, service: Option<&str>) -> Markup {
    let (label, what) = match service {
        Some(s) => (
            "Deploy",
            format!("Deploy {s} in {env} from the latest commit?"),
        ),
        None => (
            "Deploy web",
            format!("Deploy the web service in {env} from the latest commit?"),
        ),
    };
    html! {
        form.inline method="post" action={ (pl) "/deploy" } data-confirm=(what) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="environment" value=(env);
            @if let Some(s) = service { input type="hidden" name="service" value=(s); }
            button.btn.small type="submit" { (label) }
        }
    }
}

fn slot_rollback_form(csrf: &str, pl: &str, env: &str, service: &str) -> Markup {
    html! {
        form.inline method="post" action={ (pl) "/rollback" }
            data-confirm={ "Roll " (service) " in " (env) " back to its previous deployment?" } {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="environment" value=(env);
            input type="hidden" name="service" value=(service);
            button.btn.small.warn type="submit" { "Rollback" }
        }
    }
}

fn step_rows(d: &Deployment) -> Markup {
    let now = Utc::now();
    let t0 = d
        .steps
        .iter()
        .filter_map(|s| s.started_at)
        .min()
        .or(d.started_at);
    let end = d
        .steps
        .iter()
        .filter_map(|s| s.completed_at.or(s.started_at.map(|_| now)))
        .max();
    let span = match (t0, end) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(1) as f64,
        _ => 1.0,
    };
    html! {
        @for s in &d.steps {
            @let dur = step_ms(s, now);
            @let dur_text = match (dur, s.status) {
                (Some(ms), StepStatus::Running) => format!("{} …", duration_ms(ms)),
                (Some(ms), _) => duration_ms(ms),
                (None, _) => "—".into(),
            };
            tr.step {
                td.strong { (s.name.as_str().replace('_', " ")) }
                td { (badge("step status", s.status.as_str())) }
                td.num { (dur_text) }
                td.timeline {
                    div.track {
                        @if let (Some(t0), Some(st)) = (t0, s.started_at) {
                            @let (left, width) = bar_geometry(
                                (st - t0).num_milliseconds() as f64,
                                dur.unwrap_or(0) as f64,
                                span,
                            );
                            div class={ "bar " (s.status.as_str()) }
                                style=(format!("margin-left:{left:.2}%;width:{width:.2}%")) {}
                        }
                    }
                }
                td {
                    @if !s.log.trim().is_empty() {
                        details { summary { "output" } pre.steplog { (s.log) } }
                    }
                }
            }
        }
    }
}

/// Left offset and width in percent of a step's bar: at least a sliver
/// wide, never past the end of the track (never panics, whatever the input).
fn bar_geometry(offset_ms: f64, dur_ms: f64, span_ms: f64) -> (f64, f64) {
    const MIN: f64 = 0.6;
    let pct = |v: f64| {
        let p = v / span_ms.max(1.0) * 100.0;
        if p.is_finite() {
            p
        } else {
            0.0
        }
    };
    let left = pct(offset_ms).clamp(0.0, 100.0 - MIN);
    let width = pct(dur_ms).max(MIN).min(100.0 - left);
    (left, width)
}

fn step_ms(s: &Step, now: chrono::DateTime<Utc>) -> Option<i64> {
    s.duration_ms.or_else(|| {
        s.started_at
            .map(|st| (s.completed_at.unwrap_or(now) - st).num_milliseconds())
    })
}

fn log_line(l: &LogLine) -> Markup {
    let st = l.stream.as_str();
    html! {
        div class={ "ln s-" (st) } data-seq=(l.seq) {
            span.ts { (l.ts.format("%H:%M:%S%.3f")) }
            span.tag { (st) }
            @if let Some(s) = l.step { span.step { (s.as_str()) } }
            span.tx { (l.text) }
        }
    }
}

fn row(label: &str, value: Markup) -> Markup {
    html! { tr { th { (label) } td { (value) } } }
}

fn mono(v: &str) -> Markup {
    html! { span.mono { (v) } }
}

/// The audit log: every change, newest first.
pub fn audit(csrf: &str, project: Option<&str>, entries: &[AuditEntry]) -> String {
    let body = html! {
        div.head {
            h1 { "Audit log" @if let Some(p) = project { " of " span.mono { (p) } } }
            p.sub { "Every change made through the API, the console and git push, newest first." }
        }
        @if entries.is_empty() {
            section.card.empty { p { "No changes recorded yet." } }
        } @else {
            section.card {
                table.grid #audit {
                    thead { tr { th { "At" } th { "Token" } th { "Action" } th { "Target" } th { "Source IP" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (time(&e.at)) }
                                td.mono.strong { (e.token) }
                                td.mono { (e.action) }
                                td.mono { (e.target) }
                                td.mono { (e.source_ip) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &Frame {
            title: "Audit log",
            crumbs: &[("Audit log", None)],
            csrf: Some(csrf),
        },
        body,
    )
}

/// The action buttons of a deployment's page.
fn actions_of(d: &Deployment, dl: &str, csrf: &str, rollback_to: Option<&Deployment>) -> Markup {
    let rollback_what = match rollback_to {
        Some(t) => format!(
            "Roll {} in {} back to {} ({})? It serves again within seconds.",
            d.service_name,
            d.environment_name,
            t.id,
            t.short_sha().unwrap_or(&t.reference)
        ),
        None => format!(
            "Roll {} in {} back to its previous deployment?",
            d.service_name, d.environment_name
        ),
    };
    let promotable = d.status == berth_core::state::Status::Succeeded
        && d.image.is_some()
        && !d.is_active
        && d.promotion_stage != Stage::Active;
    html! {
        @if d.is_active {
            (action(&format!("{dl}/rollback"), csrf, "Rollback", "warn", &rollback_what))
        }
        @if promotable {
            (action(
                &format!("{dl}/promote"),
                csrf,
                "Promote",
                "primary",
                &format!(
                    "Promote {} to serve {} in {}? Its image is reused, no rebuild.",
                    d.id, d.service_name, d.environment_name
                ),
            ))
        }
        (action(
            &format!("{dl}/redeploy"),
            csrf,
            "Redeploy",
            "",
            &format!(
                "Build and deploy commit {} again as a new deployment?",
                d.short_sha().unwrap_or(&d.reference)
            ),
        ))
        @if !d.status.is_terminal() {
            (action(
                &format!("{dl}/cancel"),
                csrf,
                "Cancel",
                "danger",
                &format!("Cancel deployment {}? The active deployment keeps serving.", d.id),
            ))
        }
    }
}

/// `can_change`: as for [`project`].
pub fn deployment(
    csrf: &str,
    can_change: bool,
    d: &Deployment,
    logs: &[LogLine],
    rollback_to: Option<&Deployment>,
) -> String {
    let dl = format!("/console/deployments/{}", seg(&d.id));
    let pl = format!("/console/projects/{}", seg(&d.project_name));
    let live = !d.status.is_terminal()
        || matches!(d.promotion_stage, Stage::Active | Stage::DrainingPrevious);

    let info = html! {
        (row("Project", project_link(&d.project_name)))
        (row("Service", html! { (d.service_name) }))
        (row("Environment", html! { (d.environment_name) }))
        (row("Trigger", html! { (d.trigger.as_str()) }))
        @if let Some(src) = &d.source_deployment_id {
            (row("Copy of", html! { a.mono href={ "/console/deployments/" (seg(src)) } { (src) } }))
        }
        @if let Some(u) = &d.route_url { (row("URL", ext_link(u))) }
        @if let Some(u) = &d.preview_url { (row("Preview URL", ext_link(u))) }
        (row("Created", time(&d.created_at)))
        (row("Started", opt_time(&d.started_at)))
        (row("Completed", opt_time(&d.completed_at)))
        @if let Some(ms) = total_ms(d) { (row("Took", html! { (duration_ms(ms)) })) }
        @if let Some(w) = d.canary_weight { (row("Canary weight", html! { (w) " %" })) }
    };

    let b = &d.build;
    let mut build: Vec<Markup> = Vec::new();
    for (k, v) in [
        ("provider", &b.provider),
        ("framework", &b.framework),
        ("runtime", &b.runtime),
        ("start", &b.start_command),
    ] {
        if let Some(v) = v {
            build.push(html! { (k) " " (mono(v)) });
        }
    }
    if let Some(p) = b.port {
        build.push(html! { "port " span.mono { (p) } });
    }
    if b.cache_hit {
        build.push(html! { "cache hit" });
    }
    let src = html! {
        (row("Ref", mono(&d.reference)))
        @match &d.commit {
            Some(c) => {
                (row("Commit", html! { span.mono #commit-sha { (c.sha) } }))
                @if let Some(b) = &c.branch { (row("Branch", mono(b))) }
                (row("Message", html! { (c.message) }))
                (row("Author", html! { (c.author) }))
            }
            None => (row("Commit", html! { span.muted { "not cloned yet" } })),
        }
        @match &d.image {
            Some(i) => {
                (row("Image", html! { span.mono #image-ref { (i.reference) } }))
                @if let Some(dg) = &i.digest { (row("Digest", html! { span.mono.small { (dg) } })) }
                (row("Manifest", html! { a href={ (dl) "/manifest" } { "files of the image (path, size, sha256)" } }))
            }
            None => (row("Image", html! { span.muted { "none" } })),
        }
        @if !build.is_empty() {
            (row("Build", html! {
                @for (i, part) in build.iter().enumerate() {
                    @if i > 0 { " · " }
                    (part)
                }
            }))
        }
        @if let Some(r) = &d.runtime {
            (row("Container", html! {
                (mono(&r.instance_name))
                @if let Some(a) = &r.address { " on " (mono(a)) }
            }))
        }
    };

    let after = logs.last().map(|l| l.seq).unwrap_or(0);
    let body = html! {
        div.head #deployment data-id=(d.id) data-watch=(watch_key(d)) data-live=(live) {
            div.title {
                h1 { "Deployment " span.mono { (d.id) } }
                div.badges #badges { (state_badges(d)) @if d.is_active { (live_pill()) } }
            }
            div.actions {
                @if can_change { (actions_of(d, &dl, csrf, rollback_to)) }
            }
        }
        @if let Some(m) = &d.failure_message {
            p.flash.bad role="alert" #failure { strong { "Failed:" } " " (m) }
        }
        div.cols {
            section.card { h3 { "Details" } table.kv { (info) } }
            section.card { h3 { "Source and image" } table.kv { (src) } }
        }
        h2 { "Steps" }
        section.card {
            table.grid.steps {
                thead { tr {
                    th { "Step" } th { "Status" } th.num { "Duration" } th.timeline { "Timeline" } th { "Output" }
                } }
                tbody { (step_rows(d)) }
            }
        }
        h2 { "Logs" }
        section.card.logs-card {
            div.logbar {
                span #logstate .logstate { (if live { "connecting…" } else { "ended" }) }
                div.spacer {}
                @for s in ["berth", "build", "stdout", "stderr"] {
                    label.check { input type="checkbox" data-stream=(s) checked; " " (s) }
                }
            }
            div #logs .logs data-src={ "/api/v1/deployments/" (seg(&d.id)) "/logs?follow=true&after=" (after) } {
                @if logs.len() as u32 >= LOG_LINES {
                    div.ln.s-berth { span.tx.muted { "… earlier lines: " code { "berth logs " (d.id) } } }
                }
                @for l in logs { (log_line(l)) }
            }
            noscript { p.hint.pad { "Live logs need JavaScript; reload for new lines." } }
        }
    };

    page(
        &Frame {
            title: &format!("Deployment {}", d.id),
            crumbs: &[(&d.project_name, Some(pl)), (&d.id, None)],
            csrf: Some(csrf),
        },
        body,
    )
}

/// A service's page: its last hour of traffic per deployment (charts with
/// deploys, rollbacks, promotions and canary stages marked), its canaries
/// stage by stage against their thresholds, and its recent deployments.
#[allow(clippy::too_many_arguments)]
pub fn service(
    csrf: &str,
    project: &str,
    environment: &str,
    service: &str,
    deployments: &[Deployment],
    charts: Markup,
    canaries: &[super::chart::Canary],
) -> String {
    let pl = format!("/console/projects/{}", seg(project));
    let body = html! {
        div.head #service {
            h1 { (service) " " span.muted { "in " (environment) } }
            p.sub { "Traffic through the edge over the last hour, per deployment, one point a minute." }
        }
        section.card #charts { (charts) }
        @if !canaries.is_empty() {
            h2 { "Canaries" }
            @for c in canaries {
                section.card.canary {
                    div.card-head {
                        h3 { "Canary " a.mono href={ "/console/deployments/" (seg(&c.deployment_id)) } { (c.deployment_id) } }
                    }
                    p.pad {
                        "Thresholds: "
                        @match &c.thresholds {
                            Some(t) => span.thresholds { (t) },
                            None => span.muted { "not recorded" },
                        }
                    }
                    @if c.decisions.is_empty() {
                        p.muted.pad { "No window judged yet." }
                    } @else {
                        table.grid.stages {
                            thead { tr { th { "At" } th { "Stage" } th { "Candidate" } th { "Baseline (previous deployment)" } th { "Verdict" } } }
                            tbody {
                                @for d in &c.decisions {
                                    tr {
                                        td { (short_time(&d.at)) }
                                        td { (d.stage) }
                                        td.mono { (d.candidate) }
                                        td.mono { (d.baseline) }
                                        td { (d.verdict) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Recent deployments" }
        section.card {
            @if deployments.is_empty() {
                p.muted.pad { "No deployments yet." }
            } @else {
                table.grid {
                    thead { tr { th { "Deployment" } th { "Status" } th { "Stage" } th { "Trigger" } th { "Commit" } th { "Completed" } } }
                    tbody {
                        @for d in deployments {
                            tr {
                                td { (dep_link(d)) @if d.is_active { (live_pill()) } }
                                td { (badge("status", d.status.as_str())) }
                                td { (badge("promotion stage", d.promotion_stage.as_str())) }
                                td { (d.trigger.as_str()) }
                                td { (commit_cell(d)) }
                                td { (opt_time(&d.completed_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &Frame {
            title: &format!("{service} in {project}/{environment}"),
            crumbs: &[(project, Some(pl)), (environment, None), (service, None)],
            csrf: Some(csrf),
        },
        body,
    )
}

/// Files of an image's manifest, the first [`MANIFEST_ENTRIES`] of `total`.
pub struct Files {
    pub entries: Vec<ManifestEntry>,
    pub total: u64,
    pub source: &'static str,
}

pub fn manifest(csrf: &str, d: &Deployment, m: Result<Files, String>) -> String {
    let dl = format!("/console/deployments/{}", seg(&d.id));
    let body = html! {
        div.head {
            h1 { "Manifest of " span.mono { (d.id) } }
            p.sub { @if let Some(i) = &d.image { "image " span.mono { (i.reference) } } }
        }
        @match m {
            Err(e) => p.flash.bad { (e) },
            Ok(m) => {
                @let bytes: u64 = m.entries.iter().map(|e| e.size).sum();
                @let partial = m.total > m.entries.len() as u64;
                section.card {
                    p.pad.muted {
                        (m.total) " files"
                        @if partial { " (the first " (m.entries.len()) " listed)" }
                        ", " (bytes) @if partial { " bytes listed" } @else { " bytes" }
                        "; " (m.source)
                    }
                    table.grid {
                        thead { tr { th { "Path" } th.num { "Size" } th { "SHA-256" } } }
                        tbody {
                            @for e in &m.entries {
                                tr { td.mono { (e.path) } td.num { (e.size) } td.mono.small { (e.sha256) } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        &Frame {
            title: &format!("Manifest {}", d.id),
            crumbs: &[
                (
                    &d.project_name,
                    Some(format!("/console/projects/{}", seg(&d.project_name))),
                ),
                (&d.id, Some(dl)),
                ("manifest", None),
            ],
            csrf: Some(csrf),
        },
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::model::{BuildInfo, Commit, Trigger, ALL_STEPS};
    use berth_core::state::{Health, Status};

    fn failed_deployment() -> Deployment {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut steps: Vec<Step> = ALL_STEPS.iter().map(|s| Step::pending(*s)).collect();
        steps[0].status = StepStatus::Succeeded;
        steps[0].started_at = Some(t);
        steps[0].completed_at = Some(t + chrono::Duration::milliseconds(400));
        steps[0].duration_ms = Some(400);
        steps[0].log = "cloned <b>".into();
        steps[1].status = StepStatus::Failed;
        steps[1].started_at = Some(t + chrono::Duration::milliseconds(400));
        steps[1].completed_at = Some(t + chrono::Duration::milliseconds(1400));
        steps[1].duration_ms = Some(1000);
        Deployment {
            id: "01abc".into(),
            project_name: "shop".into(),
            service_name: "web".into(),
            environment_name: "production".into(),
            status: Status::Failed,
            promotion_stage: Stage::Building,
            health: Health::Pending,
            is_active: false,
            route_url: Some("http://shop.localhost:8080/".into()),
            preview_url: None,
            failure_message: Some("analyze: bad <script>alert(1)</script>".into()),
            created_at: t,
            started_at: Some(t),
            completed_at: Some(t + chrono::Duration::milliseconds(1400)),
            reference: "main".into(),
            commit: Some(Commit {
                sha: "0123456789abcdef".into(),
                branch: Some("main".into()),
                message: "\"quoted\" & <tagged>".into(),
                author: "Ada".into(),
            }),
            trigger: Trigger::Manual,
            source_deployment_id: None,
            image: None,
            build: BuildInfo::default(),
            steps,
            canary_weight: None,
            replicas: 1,
            instances: Vec::new(),
            bake_until: None,
            runtime: None,
            source_repo: None,
            version: 0,
        }
    }

    #[test]
    fn deployment_page_escapes_and_offers_only_fitting_actions() {
        let d = failed_deployment();
        let html = deployment("tok", true, &d, &[], None);
        assert!(!html.contains("<script>alert"), "failure message escaped");
        assert!(html.contains("bad &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;quoted&quot; &amp; &lt;tagged&gt;"));
        assert!(html.contains("cloned &lt;b&gt;"));
        // A failed, inactive deployment: redeploy only.
        assert!(html.contains("/console/deployments/01abc/redeploy"));
        for a in ["rollback", "promote", "cancel"] {
            assert!(
                !html.contains(&format!("/console/deployments/01abc/{a}\"")),
                "{a}"
            );
        }
        assert!(html.contains("400 ms") && html.contains("1.0 s"));
        assert!(html.contains(r#"name="csrf" value="tok""#));
        assert!(html.contains(r#"data-live="false""#));
    }

    #[test]
    fn an_active_deployment_can_be_rolled_back_and_a_running_one_cancelled() {
        let mut d = failed_deployment();
        d.status = Status::Succeeded;
        d.promotion_stage = Stage::Active;
        d.is_active = true;
        d.failure_message = None;
        let html = deployment("tok", true, &d, &[], None);
        assert!(html.contains("/console/deployments/01abc/rollback"));
        assert!(!html.contains("/console/deployments/01abc/cancel"));
        let viewer = deployment("tok", false, &d, &[], None);
        assert!(
            !viewer.contains("/console/deployments/01abc/"),
            "a viewer gets no buttons"
        );
        assert!(html.contains(r#"data-live="true""#));
        d.status = Status::Running;
        d.is_active = false;
        d.promotion_stage = Stage::Building;
        let html = deployment("tok", true, &d, &[], None);
        assert!(html.contains("/console/deployments/01abc/cancel"));
        assert!(!html.contains("/console/deployments/01abc/rollback"));
    }

    #[test]
    fn secrets_never_show_their_value() {
        let t = chrono::Utc::now();
        let p = Project {
            name: "shop".into(),
            repo: "https://user:pw@example.com/x.git".into(),
            default_branch: "main".into(),
            retain_images: 3,
            has_webhook_secret: false,
            has_repo_credentials: true,
            has_deploy_key: false,
            created_at: t,
        };
        let env = Environment {
            project_name: "shop".into(),
            name: "production".into(),
            branch: None,
            kind: EnvironmentKind::Production,
            created_at: t,
        };
        let vars = vec![vec![
            Variable {
                key: "PLAIN".into(),
                value: Some("<v>".into()),
                secret: false,
                build: false,
                updated_at: t,
            },
            // Even if a value came along, a secret is masked.
            Variable {
                key: "TOKEN".into(),
                value: Some("hunter2".into()),
                secret: true,
                build: true,
                updated_at: t,
            },
        ]];
        let html = project("tok", true, &p, std::slice::from_ref(&env), &vars, &[], &[]);
        assert!(html.contains("/console/projects/shop/variables/unset"));
        assert!(html.contains("/console/projects/shop/deploy"));
        // A viewer sees the same page without a button that would be refused.
        let viewer = project("tok", false, &p, &[env], &vars, &[], &[]);
        assert!(viewer.contains("PLAIN"));
        for form in ["/variables/unset", "/variables\"", "/deploy", "/rollback"] {
            assert!(
                !viewer.contains(&format!("/console/projects/shop{form}")),
                "{form}"
            );
        }
        assert!(html.contains("&lt;v&gt;"));
        assert!(!html.contains("hunter2"));
        assert!(!html.contains("user:pw"), "repo credentials masked");
        assert!(html.contains("•••"));
    }

    #[test]
    fn the_project_page_lists_jobs_with_their_last_runs() {
        use berth_core::ops::{Job, Run, RunStatus};
        let t = chrono::Utc::now();
        let p = Project {
            name: "shop".into(),
            repo: "/srv/shop".into(),
            default_branch: "main".into(),
            retain_images: 3,
            has_webhook_secret: false,
            has_repo_credentials: false,
            has_deploy_key: false,
            created_at: t,
        };
        let run = |id: &str, status: RunStatus, exit_code: Option<i64>| Run {
            id: id.into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
            job: Some("cleanup".into()),
            command: vec!["/bin/sh".into(), "-c".into(), "rake cleanup".into()],
            requested_by: "scheduler".into(),
            deployment_id: None,
            server: None,
            scheduled_for: Some(t),
            status,
            exit_code,
            oom_killed: false,
            error: None,
            created_at: t,
            started_at: Some(t),
            completed_at: Some(t),
            output: Vec::new(),
            dropped_lines: 0,
        };
        let job = Job {
            name: "cleanup".into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
            schedule: "*/5 * * * *".into(),
            command: "rake cleanup <all>".into(),
            timeout_seconds: 3600,
            deployment_id: "d1".into(),
            next_run_at: Some(t),
            last_runs: vec![
                run("r2", RunStatus::Skipped, None),
                run("r1", RunStatus::Failed, Some(3)),
            ],
        };
        let html = project("tok", true, &p, &[], &[], &[], &[job]);
        assert!(html.contains(r#"id="jobs""#), "{html}");
        assert!(html.contains("*/5 * * * *"));
        assert!(html.contains("rake cleanup &lt;all&gt;"), "escaped");
        assert!(html.contains(">skipped<") && html.contains(">failed<"));
        assert!(html.contains("exit 3"));
        // Without jobs, no section.
        assert!(!project("tok", true, &p, &[], &[], &[], &[]).contains(r#"id="jobs""#));
    }

    #[test]
    fn audit_page_escapes() {
        let e = AuditEntry {
            at: chrono::Utc::now(),
            token: "ci<x>".into(),
            action: "deploy".into(),
            target: "deployments shop/production/web -> dep_1".into(),
            project: Some("shop".into()),
            source_ip: "127.0.0.1".into(),
        };
        let html = audit("tok", Some("shop"), &[e]);
        assert!(html.contains("ci&lt;x&gt;"));
        assert!(html.contains("shop/production/web -&gt; dep_1"));
        assert!(html.contains("127.0.0.1"));
    }

    /// Every page that shows something a user typed (names, variables,
    /// commit text, failure messages, audit targets, file paths, errors)
    /// renders a hostile value as text, never as markup.
    #[test]
    fn user_input_is_escaped_on_every_page() {
        const X: &str = "<script>alert(1)</script>";
        const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";
        let t = chrono::Utc::now();
        let p = Project {
            name: X.into(),
            repo: format!("https://example.com/{X}.git"),
            default_branch: X.into(),
            retain_images: 3,
            has_webhook_secret: false,
            has_repo_credentials: false,
            has_deploy_key: false,
            created_at: t,
        };
        let env = Environment {
            project_name: X.into(),
            name: X.into(),
            branch: Some(X.into()),
            kind: EnvironmentKind::Branch,
            created_at: t,
        };
        let vars = vec![vec![Variable {
            key: X.into(),
            value: Some(X.into()),
            secret: false,
            build: false,
            updated_at: t,
        }]];
        let mut d = failed_deployment();
        d.project_name = X.into();
        d.service_name = X.into();
        d.environment_name = X.into();
        d.id = X.into();
        d.reference = X.into();
        d.failure_message = Some(X.into());
        d.commit.as_mut().unwrap().message = X.into();
        d.commit.as_mut().unwrap().author = X.into();
        d.image = Some(berth_core::model::ImageInfo {
            reference: X.into(),
            digest: Some(X.into()),
        });
        let log = LogLine {
            seq: 1,
            ts: t,
            deployment_id: X.into(),
            project_name: X.into(),
            service_name: X.into(),
            environment_name: X.into(),
            sha: None,
            stream: berth_core::model::LogStream::Stdout,
            step: None,
            text: X.into(),
        };
        let audit_entry = AuditEntry {
            at: t,
            token: X.into(),
            action: X.into(),
            target: X.into(),
            project: Some(X.into()),
            source_ip: X.into(),
        };
        let files = Files {
            entries: vec![ManifestEntry {
                path: X.into(),
                size: 1,
                sha256: X.into(),
            }],
            total: 1,
            source: "recorded at build time",
        };
        let pages = [
            ("login", login(X, Some(X))),
            ("error", error(X, X)),
            (
                "projects",
                projects(X, std::slice::from_ref(&p), std::slice::from_ref(&d)),
            ),
            (
                "project (deployer)",
                project(
                    X,
                    true,
                    &p,
                    std::slice::from_ref(&env),
                    &vars,
                    std::slice::from_ref(&d),
                    &[],
                ),
            ),
            (
                "project (viewer)",
                project(
                    X,
                    false,
                    &p,
                    std::slice::from_ref(&env),
                    &vars,
                    std::slice::from_ref(&d),
                    &[],
                ),
            ),
            ("deployment", deployment(X, true, &d, &[log], None)),
            ("audit", audit(X, Some(X), &[audit_entry])),
            (
                "service",
                service(
                    X,
                    X,
                    X,
                    X,
                    std::slice::from_ref(&d),
                    super::super::chart::service_charts(&[], &[], t),
                    &[super::super::chart::Canary {
                        deployment_id: X.into(),
                        thresholds: Some(X.into()),
                        decisions: Vec::new(),
                    }],
                ),
            ),
            ("manifest", manifest(X, &d, Ok(files))),
            ("manifest error", manifest(X, &d, Err(X.into()))),
        ];
        for (name, html) in pages {
            assert!(
                !html.contains("<script>alert"),
                "{name}: raw markup in {html}"
            );
            assert!(html.contains(ESCAPED), "{name}: the value is shown escaped");
        }
    }

    #[test]
    fn step_bars_stay_on_the_track() {
        assert_eq!(bar_geometry(0.0, 500.0, 1000.0), (0.0, 50.0));
        assert_eq!(bar_geometry(500.0, 500.0, 1000.0), (50.0, 50.0));
        for (o, d, s) in [
            (1000.0, 0.0, 1000.0),
            (2000.0, 10.0, 1000.0),
            (-5.0, 0.0, 0.0),
            (f64::NAN, f64::INFINITY, 0.0),
        ] {
            let (l, w) = bar_geometry(o, d, s);
            assert!(
                (0.0..=100.0).contains(&l) && w > 0.0 && l + w <= 100.0 + 1e-9,
                "{o} {d} {s}: {l} {w}"
            );
        }
    }
}

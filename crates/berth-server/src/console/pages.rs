//! The console's pages, rendered from records (no IO here).

use super::html::{
    action, badge, duration_ms, esc, ext_link, opt_time, page, seg, short_time, time, Frame,
};
use berth_core::access::AuditEntry;
use berth_core::model::{
    Deployment, Environment, EnvironmentKind, LogLine, ManifestEntry, Project, Step, StepStatus,
    Variable,
};
use berth_core::ops::Job;
use berth_core::state::Stage;
use chrono::Utc;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Log lines rendered with the deployment page (the newest); the live
/// stream continues after the last of them.
pub const LOG_LINES: u32 = 500;
/// Files listed in a manifest page, at most.
pub const MANIFEST_ENTRIES: usize = 200;

fn dep_link(d: &Deployment) -> String {
    format!(
        r#"<a class="mono" href="/console/deployments/{}">{}</a>"#,
        seg(&d.id),
        esc(&d.id)
    )
}

fn project_link(name: &str) -> String {
    format!(
        r#"<a href="/console/projects/{}">{}</a>"#,
        seg(name),
        esc(name)
    )
}

fn commit_cell(d: &Deployment) -> String {
    match &d.commit {
        Some(c) => format!(
            r#"<span class="mono">{}</span> <span class="msg" title="{}">{}</span>"#,
            esc(d.short_sha().unwrap_or("")),
            esc(&c.message),
            esc(c.message.lines().next().unwrap_or(""))
        ),
        None => format!(r#"<span class="muted mono">{}</span>"#, esc(&d.reference)),
    }
}

fn total_ms(d: &Deployment) -> Option<i64> {
    let start = d.started_at.unwrap_or(d.created_at);
    d.completed_at.map(|end| (end - start).num_milliseconds())
}

fn state_badges(d: &Deployment) -> String {
    format!(
        "{} {} {}",
        badge("status", d.status.as_str()),
        badge("promotion stage", d.promotion_stage.as_str()),
        badge("health", d.health.as_str())
    )
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
    let err = error
        .map(|e| format!(r#"<p class="flash bad" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<section class="card login">
<h1>Sign in to berth</h1>
<p class="muted">Paste the server's API token (<code>--token</code>, <code>BERTH_TOKEN</code> or <code>&lt;data-dir&gt;/admin.token</code>).</p>
{err}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit" class="btn primary" id="signin">Sign in</button>
</form>
</section>"#,
        next = esc(next)
    );
    page(
        &Frame {
            title: "Sign in",
            crumbs: &[],
            csrf: None,
        },
        &body,
    )
}

pub fn projects(csrf: &str, projects: &[Project], recent: &[Deployment]) -> String {
    let mut body = String::from(r#"<div class="head"><h1>Projects</h1></div>"#);
    if projects.is_empty() {
        body.push_str(
            r#"<section class="card empty"><p>No projects yet. Create one with <code>berth projects create NAME --repo URL</code>.</p></section>"#,
        );
    } else {
        body.push_str(
            r#"<section class="card"><table class="grid"><thead><tr><th>Project</th><th>Repository</th><th>Default branch</th><th>Services live</th><th>Last deployment</th><th>Created</th></tr></thead><tbody>"#,
        );
        for p in projects {
            let mine: Vec<&Deployment> =
                recent.iter().filter(|d| d.project_name == p.name).collect();
            let live = mine.iter().filter(|d| d.is_active).count();
            let last = mine
                .first()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        badge("status", d.status.as_str()),
                        dep_link(d),
                        time(&d.created_at)
                    )
                })
                .unwrap_or_else(|| r#"<span class="muted">none</span>"#.into());
            let _ = write!(
                body,
                r#"<tr><td class="strong">{}</td><td class="mono">{}</td><td class="mono">{}</td><td class="num">{live}</td><td>{last}</td><td>{}</td></tr>"#,
                project_link(&p.name),
                esc(&berth_core::model::mask_url(&p.repo)),
                esc(&p.default_branch),
                time(&p.created_at)
            );
        }
        body.push_str("</tbody></table></section>");
    }
    page(
        &Frame {
            title: "Projects",
            crumbs: &[],
            csrf: Some(csrf),
        },
        &body,
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
    let mut body = format!(
        r#"<div class="head" data-refresh-while-busy="{busy}"><h1>{}</h1><p class="sub"><span class="mono">{}</span> · default branch <span class="mono">{}</span> · keeps {} images per service · webhook secret {}{}</p></div>"#,
        esc(&p.name),
        esc(&berth_core::model::mask_url(&p.repo)),
        esc(&p.default_branch),
        p.retain_images,
        if p.has_webhook_secret {
            "set"
        } else {
            "not set"
        },
        match (p.has_repo_credentials, p.has_deploy_key) {
            (true, true) => " · repository token and deploy key stored",
            (true, false) => " · repository token stored",
            (false, true) => " · deploy key stored",
            (false, false) => "",
        }
    );

    // Services per environment: the newest and the active deployment.
    body.push_str(r#"<h2>Environments and services</h2>"#);
    for e in envs {
        let mut services: BTreeMap<&str, (Option<&Deployment>, &Deployment)> = BTreeMap::new();
        for d in deployments.iter().filter(|d| d.environment_name == e.name) {
            let entry = services.entry(&d.service_name).or_insert((None, d));
            if d.is_active && entry.0.is_none() {
                entry.0 = Some(d);
            }
        }
        let branch = e
            .branch
            .as_deref()
            .map(|b| format!(r#" · branch <span class="mono">{}</span>"#, esc(b)))
            .unwrap_or_default();
        let _ = write!(
            body,
            r#"<section class="card env" id="env-{}"><div class="card-head"><h3>{}{}</h3><span class="muted">{branch}</span><div class="spacer"></div>{}</div>"#,
            esc(&e.name),
            esc(&e.name),
            if e.name == kind_word(e.kind) {
                String::new()
            } else {
                format!(r#" <span class="pill">{}</span>"#, kind_word(e.kind))
            },
            if can_change {
                deploy_form(csrf, &pl, &e.name, None)
            } else {
                String::new()
            }
        );
        if services.is_empty() {
            body.push_str(r#"<p class="muted pad">No deployments in this environment yet.</p>"#);
        } else {
            body.push_str(r#"<table class="grid"><thead><tr><th>Service</th><th>Active deployment</th><th>URL</th><th>Status</th><th>Health</th><th>Latest</th><th class="right">Actions</th></tr></thead><tbody>"#);
            for (name, (active, newest)) in &services {
                let (act, url, st, he) = match active {
                    Some(a) => (
                        format!("{} {}", dep_link(a), commit_cell(a)),
                        a.route_url.as_deref().map(ext_link).unwrap_or_default(),
                        badge("status", a.status.as_str()),
                        badge("health", a.health.as_str()),
                    ),
                    None => (
                        r#"<span class="muted">none</span>"#.into(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ),
                };
                let latest = if active.is_some_and(|a| a.id == newest.id) {
                    r#"<span class="muted">same</span>"#.to_string()
                } else {
                    format!(
                        "{} {} {}",
                        dep_link(newest),
                        badge("status", newest.status.as_str()),
                        badge("promotion stage", newest.promotion_stage.as_str())
                    )
                };
                let mut actions = String::new();
                if can_change {
                    actions.push_str(&deploy_form(csrf, &pl, &e.name, Some(name)));
                }
                if can_change && active.is_some() {
                    actions.push_str(&slot_rollback_form(csrf, &pl, &e.name, name));
                }
                let _ = write!(
                    body,
                    r#"<tr><td class="strong">{}</td><td>{act}</td><td>{url}</td><td>{st}</td><td>{he}</td><td>{latest}</td><td class="right actions">{actions}</td></tr>"#,
                    esc(name)
                );
            }
            body.push_str("</tbody></table>");
        }
        body.push_str("</section>");
    }

    if !jobs.is_empty() {
        body.push_str(&jobs_section(jobs));
    }

    // Deployments, newest first.
    body.push_str(r#"<h2>Deployments</h2><section class="card">"#);
    if deployments.is_empty() {
        body.push_str(r#"<p class="muted pad">No deployments yet.</p>"#);
    } else {
        body.push_str(r#"<table class="grid" id="deployments"><thead><tr><th>Deployment</th><th>Service</th><th>Environment</th><th>Status</th><th>Stage</th><th>Health</th><th>Commit</th><th>Trigger</th><th>Created</th><th class="num">Duration</th></tr></thead><tbody>"#);
        for d in deployments {
            let active = if d.is_active {
                r#" <span class="pill live">live</span>"#
            } else {
                ""
            };
            let _ = write!(
                body,
                r#"<tr><td>{}{active}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
                dep_link(d),
                esc(&d.service_name),
                esc(&d.environment_name),
                badge("status", d.status.as_str()),
                badge("promotion stage", d.promotion_stage.as_str()),
                badge("health", d.health.as_str()),
                commit_cell(d),
                esc(d.trigger.as_str()),
                short_time(&d.created_at),
                total_ms(d).map(duration_ms).unwrap_or_else(|| "—".into())
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");

    // Variables per environment.
    body.push_str(r#"<h2>Variables</h2>"#);
    for (e, vs) in envs.iter().zip(vars) {
        let _ = write!(
            body,
            r#"<section class="card" id="vars-{}"><div class="card-head"><h3>{}</h3></div>"#,
            esc(&e.name),
            esc(&e.name)
        );
        if vs.is_empty() {
            body.push_str(r#"<p class="muted pad">No variables.</p>"#);
        } else {
            body.push_str(r#"<table class="grid vars"><thead><tr><th>Key</th><th>Value</th><th>Updated</th><th class="right"></th></tr></thead><tbody>"#);
            for v in vs {
                let mut value = match (&v.value, v.secret) {
                    (Some(val), false) => format!(r#"<span class="mono">{}</span>"#, esc(val)),
                    _ => r#"<span class="secret" title="secret: never shown">•••</span> <span class="pill">secret</span>"#.into(),
                };
                if v.build {
                    value.push_str(r#" <span class="pill" title="given to builds">build</span>"#);
                }
                let unset = if !can_change {
                    String::new()
                } else {
                    format!(
                        r#"<form method="post" action="{pl}/variables/unset" class="inline" data-confirm="Unset {k} in {env}? Deployments from now on will not have it."><input type="hidden" name="csrf" value="{c}"><input type="hidden" name="environment" value="{env}"><input type="hidden" name="key" value="{k}"><button class="btn small danger" type="submit">Unset</button></form>"#,
                        k = esc(&v.key),
                        env = esc(&e.name),
                        c = esc(csrf)
                    )
                };
                let _ = write!(
                    body,
                    r#"<tr><td class="mono strong">{}</td><td>{value}</td><td>{}</td><td class="right">{unset}</td></tr>"#,
                    esc(&v.key),
                    time(&v.updated_at)
                );
            }
            body.push_str("</tbody></table>");
        }
        if !can_change {
            body.push_str("</section>");
            continue;
        }
        let _ = write!(
            body,
            r#"<form method="post" action="{pl}/variables" class="setvar"><input type="hidden" name="csrf" value="{c}"><input type="hidden" name="environment" value="{env}"><input name="key" placeholder="KEY" required pattern="[A-Za-z_][A-Za-z0-9_]*" class="mono" aria-label="key"><input name="value" placeholder="value" class="mono grow" aria-label="value" autocomplete="off"><label class="check"><input type="checkbox" name="secret" value="on"> secret</label><label class="check" title="plain: a build argument; secret: a BuildKit secret (RUN --mount=type=secret,id=KEY)"><input type="checkbox" name="build" value="on"> build</label><button class="btn" type="submit">Set</button></form><p class="hint">Applies to deployments started from now on. Secrets are encrypted at rest, never shown, and masked as <code>***</code> in logs.</p></section>"#,
            c = esc(csrf),
            env = esc(&e.name)
        );
    }

    page(
        &Frame {
            title: &p.name,
            crumbs: &[(&p.name, None)],
            csrf: Some(csrf),
        },
        &body,
    )
}

/// Scheduled jobs with their next firing and last runs (newest first).
fn jobs_section(jobs: &[Job]) -> String {
    let mut body = String::from(
        r#"<h2>Jobs</h2><section class="card" id="jobs"><table class="grid"><thead><tr><th>Job</th><th>Environment</th><th>Service</th><th>Schedule (UTC)</th><th>Command</th><th>Next</th><th>Last runs</th></tr></thead><tbody>"#,
    );
    for j in jobs {
        let runs: Vec<String> = j
            .last_runs
            .iter()
            .map(|r| {
                let at = r.scheduled_for.or(r.started_at).unwrap_or(r.created_at);
                let exit = r
                    .exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default();
                format!(
                    r#"<div title="run {}: {}">{} {}{}</div>"#,
                    esc(&r.id),
                    esc(&r.outcome()),
                    badge("run status", r.status.as_str()),
                    short_time(&at),
                    esc(&exit)
                )
            })
            .collect();
        let _ = write!(
            body,
            r#"<tr><td class="strong">{}</td><td>{}</td><td>{}</td><td class="mono">{}</td><td class="mono">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&j.name),
            esc(&j.environment_name),
            esc(&j.service_name),
            esc(&j.schedule),
            esc(&j.command),
            j.next_run_at
                .as_ref()
                .map(short_time)
                .unwrap_or_else(|| "—".into()),
            if runs.is_empty() {
                r#"<span class="muted">none yet</span>"#.to_string()
            } else {
                runs.join("")
            }
        );
    }
    body.push_str("</tbody></table></section>");
    body
}

fn deploy_form(csrf: &str, pl: &str, env: &str, service: Option<&str>) -> String {
    let (svc, label, what) = match service {
        Some(s) => (
            format!(r#"<input type="hidden" name="service" value="{}">"#, esc(s)),
            "Deploy",
            format!("Deploy {} in {} from the latest commit?", s, env),
        ),
        None => (
            String::new(),
            "Deploy web",
            format!("Deploy the web service in {env} from the latest commit?"),
        ),
    };
    format!(
        r#"<form method="post" action="{pl}/deploy" class="inline" data-confirm="{}"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="environment" value="{}">{svc}<button type="submit" class="btn small">{label}</button></form>"#,
        esc(&what),
        esc(csrf),
        esc(env)
    )
}

fn slot_rollback_form(csrf: &str, pl: &str, env: &str, service: &str) -> String {
    format!(
        r#"<form method="post" action="{pl}/rollback" class="inline" data-confirm="{}"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="environment" value="{}"><input type="hidden" name="service" value="{}"><button type="submit" class="btn small warn">Rollback</button></form>"#,
        esc(&format!(
            "Roll {service} in {env} back to its previous deployment?"
        )),
        esc(csrf),
        esc(env),
        esc(service)
    )
}

fn step_rows(d: &Deployment) -> String {
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
    let mut out = String::new();
    for s in &d.steps {
        let dur = step_ms(s, now);
        let bar = match (t0, s.started_at) {
            (Some(t0), Some(st)) => {
                let (left, width) = bar_geometry(
                    (st - t0).num_milliseconds() as f64,
                    dur.unwrap_or(0) as f64,
                    span,
                );
                format!(
                    r#"<div class="track"><div class="bar {}" style="margin-left:{left:.2}%;width:{width:.2}%"></div></div>"#,
                    s.status.as_str()
                )
            }
            _ => r#"<div class="track"></div>"#.into(),
        };
        let dur_text = match (dur, s.status) {
            (Some(ms), StepStatus::Running) => format!("{} …", duration_ms(ms)),
            (Some(ms), _) => duration_ms(ms),
            (None, _) => "—".into(),
        };
        let log = if s.log.trim().is_empty() {
            String::new()
        } else {
            format!(
                r#"<details><summary>output</summary><pre class="steplog">{}</pre></details>"#,
                esc(&s.log)
            )
        };
        let _ = write!(
            out,
            r#"<tr class="step"><td class="strong">{}</td><td>{}</td><td class="num">{dur_text}</td><td class="timeline">{bar}</td><td>{log}</td></tr>"#,
            esc(&s.name.as_str().replace('_', " ")),
            badge("step status", s.status.as_str()),
        );
    }
    out
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

fn log_line(l: &LogLine) -> String {
    let step = l
        .step
        .map(|s| format!(r#"<span class="step">{}</span>"#, s.as_str()))
        .unwrap_or_default();
    format!(
        r#"<div class="ln s-{st}" data-seq="{seq}"><span class="ts">{}</span><span class="tag">{st}</span>{step}<span class="tx">{}</span></div>"#,
        l.ts.format("%H:%M:%S%.3f"),
        esc(&l.text),
        st = l.stream.as_str(),
        seq = l.seq,
    )
}

fn row(label: &str, value: &str) -> String {
    format!("<tr><th>{}</th><td>{value}</td></tr>", esc(label))
}

/// The audit log: every change, newest first.
pub fn audit(csrf: &str, project: Option<&str>, entries: &[AuditEntry]) -> String {
    let mut body = format!(
        r#"<div class="head"><h1>Audit log{}</h1><p class="sub">Every change made through the API, the console and git push, newest first.</p></div>"#,
        project
            .map(|p| format!(r#" of <span class="mono">{}</span>"#, esc(p)))
            .unwrap_or_default()
    );
    if entries.is_empty() {
        body.push_str(r#"<section class="card empty"><p>No changes recorded yet.</p></section>"#);
    } else {
        body.push_str(r#"<section class="card"><table class="grid" id="audit"><thead><tr><th>At</th><th>Token</th><th>Action</th><th>Target</th><th>Source IP</th></tr></thead><tbody>"#);
        for e in entries {
            let _ = write!(
                body,
                r#"<tr><td>{}</td><td class="mono strong">{}</td><td class="mono">{}</td><td class="mono">{}</td><td class="mono">{}</td></tr>"#,
                time(&e.at),
                esc(&e.token),
                esc(&e.action),
                esc(&e.target),
                esc(&e.source_ip)
            );
        }
        body.push_str("</tbody></table></section>");
    }
    page(
        &Frame {
            title: "Audit log",
            crumbs: &[("Audit log", None)],
            csrf: Some(csrf),
        },
        &body,
    )
}

/// The action buttons of a deployment's page.
fn actions_of(d: &Deployment, dl: &str, csrf: &str, rollback_to: Option<&Deployment>) -> String {
    let mut actions = String::new();
    if d.is_active {
        let what = match rollback_to {
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
        actions.push_str(&action(
            &format!("{dl}/rollback"),
            csrf,
            "Rollback",
            "warn",
            &what,
        ));
    }
    if d.status == berth_core::state::Status::Succeeded
        && d.image.is_some()
        && !d.is_active
        && d.promotion_stage != Stage::Active
    {
        actions.push_str(&action(
            &format!("{dl}/promote"),
            csrf,
            "Promote",
            "primary",
            &format!(
                "Promote {} to serve {} in {}? Its image is reused, no rebuild.",
                d.id, d.service_name, d.environment_name
            ),
        ));
    }
    actions.push_str(&action(
        &format!("{dl}/redeploy"),
        csrf,
        "Redeploy",
        "",
        &format!(
            "Build and deploy commit {} again as a new deployment?",
            d.short_sha().unwrap_or(&d.reference)
        ),
    ));
    if !d.status.is_terminal() {
        actions.push_str(&action(
            &format!("{dl}/cancel"),
            csrf,
            "Cancel",
            "danger",
            &format!(
                "Cancel deployment {}? The active deployment keeps serving.",
                d.id
            ),
        ));
    }
    actions
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

    let mut actions = String::new();
    if can_change {
        actions = actions_of(d, &dl, csrf, rollback_to);
    }

    let mut body = format!(
        r#"<div class="head" id="deployment" data-id="{id}" data-watch="{key}" data-live="{live}"><div class="title"><h1>Deployment <span class="mono">{id}</span></h1><div class="badges" id="badges">{badges}{active}</div></div><div class="actions">{actions}</div></div>"#,
        id = esc(&d.id),
        key = esc(&watch_key(d)),
        badges = state_badges(d),
        active = if d.is_active {
            r#" <span class="pill live">live</span>"#
        } else {
            ""
        },
    );
    if let Some(m) = &d.failure_message {
        let _ = write!(
            body,
            r#"<p class="flash bad" role="alert" id="failure"><strong>Failed:</strong> {}</p>"#,
            esc(m)
        );
    }

    // Details.
    let mut info = String::new();
    info.push_str(&row("Project", &project_link(&d.project_name)));
    info.push_str(&row("Service", &esc(&d.service_name)));
    info.push_str(&row("Environment", &esc(&d.environment_name)));
    info.push_str(&row("Trigger", &esc(d.trigger.as_str())));
    if let Some(src) = &d.source_deployment_id {
        info.push_str(&row(
            "Copy of",
            &format!(
                r#"<a class="mono" href="/console/deployments/{}">{}</a>"#,
                seg(src),
                esc(src)
            ),
        ));
    }
    if let Some(u) = &d.route_url {
        info.push_str(&row("URL", &ext_link(u)));
    }
    if let Some(u) = &d.preview_url {
        info.push_str(&row("Preview URL", &ext_link(u)));
    }
    info.push_str(&row("Created", &time(&d.created_at)));
    info.push_str(&row("Started", &opt_time(&d.started_at)));
    info.push_str(&row("Completed", &opt_time(&d.completed_at)));
    if let Some(ms) = total_ms(d) {
        info.push_str(&row("Took", &duration_ms(ms)));
    }
    if let Some(w) = d.canary_weight {
        info.push_str(&row("Canary weight", &format!("{w} %")));
    }

    let mut src = String::new();
    src.push_str(&row(
        "Ref",
        &format!(r#"<span class="mono">{}</span>"#, esc(&d.reference)),
    ));
    match &d.commit {
        Some(c) => {
            src.push_str(&row(
                "Commit",
                &format!(
                    r#"<span class="mono" id="commit-sha">{}</span>"#,
                    esc(&c.sha)
                ),
            ));
            if let Some(b) = &c.branch {
                src.push_str(&row(
                    "Branch",
                    &format!(r#"<span class="mono">{}</span>"#, esc(b)),
                ));
            }
            src.push_str(&row("Message", &esc(&c.message)));
            src.push_str(&row("Author", &esc(&c.author)));
        }
        None => src.push_str(&row(
            "Commit",
            r#"<span class="muted">not cloned yet</span>"#,
        )),
    }
    match &d.image {
        Some(i) => {
            src.push_str(&row(
                "Image",
                &format!(
                    r#"<span class="mono" id="image-ref">{}</span>"#,
                    esc(&i.reference)
                ),
            ));
            if let Some(dg) = &i.digest {
                src.push_str(&row(
                    "Digest",
                    &format!(r#"<span class="mono small">{}</span>"#, esc(dg)),
                ));
            }
            src.push_str(&row(
                "Manifest",
                &format!(r#"<a href="{dl}/manifest">files of the image (path, size, sha256)</a>"#),
            ));
        }
        None => src.push_str(&row("Image", r#"<span class="muted">none</span>"#)),
    }
    let b = &d.build;
    let mut build = Vec::new();
    for (k, v) in [
        ("provider", &b.provider),
        ("framework", &b.framework),
        ("runtime", &b.runtime),
        ("start", &b.start_command),
    ] {
        if let Some(v) = v {
            build.push(format!(r#"{k} <span class="mono">{}</span>"#, esc(v)));
        }
    }
    if let Some(p) = b.port {
        build.push(format!(r#"port <span class="mono">{p}</span>"#));
    }
    if b.cache_hit {
        build.push("cache hit".into());
    }
    if !build.is_empty() {
        src.push_str(&row("Build", &build.join(" · ")));
    }
    if let Some(r) = &d.runtime {
        src.push_str(&row(
            "Container",
            &format!(
                r#"<span class="mono">{}</span>{}"#,
                esc(&r.instance_name),
                r.address
                    .as_deref()
                    .map(|a| format!(r#" on <span class="mono">{}</span>"#, esc(a)))
                    .unwrap_or_default()
            ),
        ));
    }
    let _ = write!(
        body,
        r#"<div class="cols"><section class="card"><h3>Details</h3><table class="kv">{info}</table></section><section class="card"><h3>Source and image</h3><table class="kv">{src}</table></section></div>"#
    );

    let _ = write!(
        body,
        r#"<h2>Steps</h2><section class="card"><table class="grid steps"><thead><tr><th>Step</th><th>Status</th><th class="num">Duration</th><th class="timeline">Timeline</th><th>Output</th></tr></thead><tbody>{}</tbody></table></section>"#,
        step_rows(d)
    );

    let after = logs.last().map(|l| l.seq).unwrap_or(0);
    let mut lines = String::new();
    for l in logs {
        lines.push_str(&log_line(l));
    }
    let earlier = if logs.len() as u32 >= LOG_LINES {
        format!(
            r#"<div class="ln s-berth"><span class="tx muted">… earlier lines: <code>berth logs {}</code></span></div>"#,
            esc(&d.id)
        )
    } else {
        String::new()
    };
    let _ = write!(
        body,
        r#"<h2>Logs</h2><section class="card logs-card"><div class="logbar"><span id="logstate" class="logstate">{state}</span><div class="spacer"></div><label class="check"><input type="checkbox" data-stream="berth" checked> berth</label><label class="check"><input type="checkbox" data-stream="build" checked> build</label><label class="check"><input type="checkbox" data-stream="stdout" checked> stdout</label><label class="check"><input type="checkbox" data-stream="stderr" checked> stderr</label></div><div id="logs" class="logs" data-src="/api/v1/deployments/{id}/logs?follow=true&amp;after={after}">{earlier}{lines}</div><noscript><p class="hint pad">Live logs need JavaScript; reload for new lines.</p></noscript></section>"#,
        state = if live { "connecting…" } else { "ended" },
        id = seg(&d.id),
    );

    page(
        &Frame {
            title: &format!("Deployment {}", d.id),
            crumbs: &[(&d.project_name, Some(pl)), (&d.id, None)],
            csrf: Some(csrf),
        },
        &body,
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
    let mut body = format!(
        r#"<div class="head"><h1>Manifest of <span class="mono">{}</span></h1><p class="sub">{}</p></div>"#,
        esc(&d.id),
        d.image
            .as_ref()
            .map(|i| format!(r#"image <span class="mono">{}</span>"#, esc(&i.reference)))
            .unwrap_or_default()
    );
    match m {
        Err(e) => {
            let _ = write!(body, r#"<p class="flash bad">{}</p>"#, esc(&e));
        }
        Ok(m) => {
            let total: u64 = m.entries.iter().map(|e| e.size).sum();
            let _ = write!(
                body,
                r#"<section class="card"><p class="pad muted">{} files{}, {}; {}</p><table class="grid"><thead><tr><th>Path</th><th class="num">Size</th><th>SHA-256</th></tr></thead><tbody>"#,
                m.total,
                if m.total > m.entries.len() as u64 {
                    format!(" (the first {} listed)", m.entries.len())
                } else {
                    String::new()
                },
                if m.total > m.entries.len() as u64 {
                    format!("{} bytes listed", total)
                } else {
                    format!("{} bytes", total)
                },
                m.source
            );
            for e in &m.entries {
                let _ = write!(
                    body,
                    r#"<tr><td class="mono">{}</td><td class="num">{}</td><td class="mono small">{}</td></tr>"#,
                    esc(&e.path),
                    e.size,
                    esc(&e.sha256)
                );
            }
            body.push_str("</tbody></table></section>");
        }
    }
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
        &body,
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

//! The web console, served on the API listener (and through the edge on
//! `--console-host`, see [`host`]): server-rendered pages and one small
//! script, all embedded in the binary (nothing is fetched from the internet
//! at run time).
//!
//! - `GET /login`, `POST /login` (an API token: the server's or a stored
//!   one), `POST /logout`;
//! - `/console/audit` the audit log (admin);
//! - `/console` projects; `/console/projects/{p}` environments, services
//!   with their active deployment, the deployments table and the variables
//!   editor; `/console/deployments/{id}` steps with durations, commit,
//!   image, build, live logs and the rollback / promote / redeploy / cancel
//!   buttons; `/console/deployments/{id}/manifest` the image's files.
//!
//! Invariants: every page but the sign-in form is guarded like the API
//! ([`crate::access::guard`]: the session's token, its role and project
//! scope, the audit log; rules in [`crate::access::RULES`]); sessions are
//! kept in the store ([`session`]: 12 h, a restart signs nobody out, a
//! revoked token's sessions stop at once); a viewer sees no button that
//! would be refused; every state change is a
//! POST form carrying the session's CSRF token, compared in constant time,
//! from the same origin; actions go through the same `Deployer` and `Store`
//! calls as the JSON API; every value shown is HTML-escaped; secret
//! variables are never shown (the store does not return their values) and
//! log lines reach the page already redacted by the log hub.

mod chart;
pub mod host;
mod html;
mod pages;
mod session;

pub use session::session_id;

use crate::access::Caller;
use crate::api::AppState;
use crate::deployer::NewDeployment;
use crate::error::ApiError;
use crate::ids::now;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use berth_core::model::{Deployment, Trigger, DEFAULT_SERVICE, PRODUCTION};

use berth_core::access::Role;
use berth_store::{AuditQuery, DeploymentQuery, LogQuery, SessionRecord, Slot, StoreError};
use serde::Deserialize;
use std::time::Duration;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// Whether the request carries a live console session.
async fn signed_in(s: &AppState, headers: &HeaderMap) -> bool {
    match session::session_id(headers) {
        Some(sid) => crate::access::caller_of_session(s, sid, String::new())
            .await
            .is_ok(),
        None => false,
    }
}

/// The console's routes, mounted at `/` of the API listener.
pub fn router(state: AppState) -> Router<AppState> {
    let open = Router::new()
        .route("/", get(root))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/console/static/console.css", get(css))
        .route("/console/static/console.js", get(js));
    let guarded = Router::new()
        .route("/console", get(projects))
        .route("/console/audit", get(audit))
        .route("/console/projects/{p}", get(project))
        .route("/console/projects/{p}/services/{env}/{s}", get(service))
        .route("/console/projects/{p}/deploy", post(deploy))
        .route("/console/projects/{p}/rollback", post(rollback_slot))
        .route("/console/projects/{p}/variables", post(set_variable))
        .route(
            "/console/projects/{p}/variables/unset",
            post(unset_variable),
        )
        .route("/console/deployments/{id}", get(deployment))
        .route("/console/deployments/{id}/manifest", get(manifest))
        .route(
            "/console/deployments/{id}/{action}",
            post(deployment_action),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::access::guard,
        ));
    open.merge(guarded).layer(map_response(security_headers))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// A signed-in request (the guard let it through): its session, CSRF
/// token and caller.
struct Authed {
    csrf: String,
    caller: Caller,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(error_page)?;
        let sid = session::session_id(&parts.headers).unwrap_or("");
        Ok(Authed {
            csrf: session::csrf_of(sid),
            caller,
        })
    }
}

impl Authed {
    /// Check a state-changing request: same origin and the session's token.
    fn check(&self, headers: &HeaderMap, csrf: &str) -> Result<(), Oops> {
        if !session::same_origin(headers) || !session::csrf_ok(&self.csrf, csrf) {
            return Err(stale_form());
        }
        Ok(())
    }
}

/// A refusal or error of the guard, as a console page.
pub(crate) fn error_page(e: ApiError) -> Response {
    Oops::from(e).into_response()
}

pub(crate) fn url_query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error shown as a page.
struct Oops(StatusCode, String);

impl From<ApiError> for Oops {
    fn from(e: ApiError) -> Self {
        Oops(e.status, e.message)
    }
}

impl From<StoreError> for Oops {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Oops {
    fn into_response(self) -> Response {
        let page = pages::error(self.0.canonical_reason().unwrap_or("Error"), &self.1);
        (self.0, Html(page)).into_response()
    }
}

type PageResult = Result<Response, Oops>;

async fn root(State(s): State<AppState>, headers: HeaderMap) -> Redirect {
    if signed_in(&s, &headers).await {
        Redirect::to("/console")
    } else {
        Redirect::to("/login")
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        JS,
    )
        .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a console path: never another site (`//evil`, `/\evil`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/console".to_string(),
    }
}

async fn login_form(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if signed_in(&s, &headers).await {
        return Redirect::to(&next).into_response();
    }
    Html(pages::login(&next, None)).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(s): State<AppState>,
    peer: crate::access::Peer,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    if !session::same_origin(&headers) {
        return Oops(StatusCode::FORBIDDEN, "sign-in from another site".into()).into_response();
    }
    let ip = peer.ip();
    let caller = match crate::access::caller_of_token(&s, &f.token, ip).await {
        Ok(c) => c,
        Err(crate::access::Denied::Error(e)) => return error_page(e),
        Err(d) => {
            // Slow down guessing a little.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let why = match ApiError::from(d) {
                e if e.status == StatusCode::UNAUTHORIZED && e.message.starts_with("token ") => {
                    format!("{}.", e.message)
                }
                _ => "That token is not a token of this server.".to_string(),
            };
            return (
                StatusCode::UNAUTHORIZED,
                Html(pages::login(&next, Some(&why))),
            )
                .into_response();
        }
    };
    let sid = session::new_id();
    let at = now();
    let record = SessionRecord {
        id_hash: crate::access::digest(&sid),
        token: caller.name.clone(),
        created_at: at,
        expires_at: at
            + chrono::Duration::from_std(session::LIFETIME).unwrap_or(chrono::Duration::hours(12)),
    };
    if let Err(e) = s.store.put_session(&record).await {
        return error_page(e.into());
    }
    let secure = session::over_https(&headers, peer.edge_https);
    (
        [(header::SET_COOKIE, session::set_cookie(&sid, secure))],
        Redirect::to(&next),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(s): State<AppState>,
    peer: crate::access::Peer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    let Some(sid) = session::session_id(&headers) else {
        return Ok(Redirect::to("/login").into_response());
    };
    if !session::same_origin(&headers) || !session::csrf_ok(&session::csrf_of(sid), &f.csrf) {
        return Err(stale_form());
    }
    s.store.remove_session(&crate::access::digest(sid)).await?;
    let secure = session::over_https(&headers, peer.edge_https);
    Ok((
        [(header::SET_COOKIE, session::clear_cookie(secure))],
        Redirect::to("/login"),
    )
        .into_response())
}

fn stale_form() -> Oops {
    Oops(
        StatusCode::FORBIDDEN,
        "the form was stale or came from another site; reload the page and try again".into(),
    )
}

/// Whether the signed-in token may deploy (buttons are shown).
fn can_change(c: &Caller) -> bool {
    c.role.allows(Role::Deployer)
}

#[derive(Deserialize)]
struct AuditParams {
    project: Option<String>,
}

async fn audit(
    State(s): State<AppState>,
    a: Authed,
    axum::extract::Query(q): axum::extract::Query<AuditParams>,
) -> PageResult {
    let entries = s
        .store
        .list_audit(&AuditQuery {
            project: q.project.clone(),
            limit: Some(500),
        })
        .await?;
    Ok(Html(pages::audit(&a.csrf, q.project.as_deref(), &entries)).into_response())
}

async fn projects(State(s): State<AppState>, a: Authed) -> PageResult {
    let mut projects = s.store.list_projects().await?;
    projects.retain(|p| a.caller.sees(&p.name));
    let recent = s
        .store
        .list_deployments(&DeploymentQuery {
            project: a.caller.project.clone(),
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    Ok(Html(pages::projects(&a.csrf, &projects, &recent)).into_response())
}

async fn project(State(s): State<AppState>, a: Authed, Path(p): Path<String>) -> PageResult {
    let project = s.store.get_project(&p).await?;
    let envs = s.store.list_environments(&p).await?;
    let deployments = s
        .store
        .list_deployments(&DeploymentQuery {
            project: Some(p.clone()),
            limit: Some(200),
            ..Default::default()
        })
        .await?;
    let mut vars = Vec::with_capacity(envs.len());
    for e in &envs {
        vars.push(s.store.list_variables(&p, &e.name).await?);
    }
    let jobs = s.deployer.list_jobs(&p, None).await?;
    Ok(Html(pages::project(
        &a.csrf,
        can_change(&a.caller),
        &project,
        &envs,
        &vars,
        &deployments,
        &jobs,
    ))
    .into_response())
}

/// A service's page: charts of its last hour of traffic (from the store's
/// rollup, [`crate::charts`]), its canaries and recent deployments.
async fn service(
    State(s): State<AppState>,
    a: Authed,
    Path((p, env, svc)): Path<(String, String, String)>,
) -> PageResult {
    s.store.get_project(&p).await?;
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::minutes(chart::SPAN_MINUTES);
    let deployments = s
        .store
        .list_deployments(&DeploymentQuery {
            project: Some(p.clone()),
            environment: Some(env.clone()),
            service: Some(svc.clone()),
            limit: Some(50),
            ..Default::default()
        })
        .await?;
    let rows = s
        .store
        .list_metric_minutes(&p, &env, &svc, crate::charts::minute_of(since))
        .await?;
    if deployments.is_empty() && rows.is_empty() {
        return Err(Oops(
            StatusCode::NOT_FOUND,
            format!("no service {svc} in {p}/{env}"),
        ));
    }
    let lines = s
        .store
        .read_logs(&LogQuery {
            slot: Some(Slot {
                project: p.clone(),
                environment: env.clone(),
                service: svc.clone(),
            }),
            streams: vec![berth_core::model::LogStream::Berth],
            since: Some(since),
            limit: Some(5000),
            tail: true,
            ..Default::default()
        })
        .await?;
    let recent: Vec<Deployment> = deployments
        .iter()
        .filter(|d| d.completed_at.is_some_and(|t| t >= since))
        .cloned()
        .collect();
    let charts = chart::service_charts(&rows, &chart::markers(&recent, &lines), now);
    Ok(Html(pages::service(
        &a.csrf,
        &p,
        &env,
        &svc,
        &deployments,
        charts,
        &chart::canaries(&lines),
    ))
    .into_response())
}

async fn deployment(State(s): State<AppState>, a: Authed, Path(id): Path<String>) -> PageResult {
    let d = s.store.get_deployment(&id).await?;
    let logs = s
        .store
        .read_logs(&LogQuery {
            deployment_id: Some(id.clone()),
            limit: Some(pages::LOG_LINES),
            tail: true,
            ..Default::default()
        })
        .await?;
    let rollback_to = if d.is_active {
        s.deployer
            .rollback_target(&Slot::of(&d))
            .await
            .ok()
            .map(|(_, t)| t)
    } else {
        None
    };
    Ok(Html(pages::deployment(
        &a.csrf,
        can_change(&a.caller),
        &d,
        &logs,
        rollback_to.as_ref(),
    ))
    .into_response())
}

async fn manifest(State(s): State<AppState>, a: Authed, Path(id): Path<String>) -> PageResult {
    let d = s.store.get_deployment(&id).await?;
    let result = match &d.image {
        None => Err("this deployment has no image (it never built)".to_string()),
        Some(img) => match s.store.get_manifest(&img.reference).await? {
            // Recorded when the image was built.
            Some(entries) => Ok(pages::Files {
                total: entries.len() as u64,
                entries: entries.into_iter().take(pages::MANIFEST_ENTRIES).collect(),
                source: "recorded at build time",
            }),
            // Older images: read the image now.
            None => compute_manifest(&s, &img.reference).await,
        },
    };
    Ok(Html(pages::manifest(&a.csrf, &d, result)).into_response())
}

async fn compute_manifest(s: &AppState, image: &str) -> Result<pages::Files, String> {
    let opts = berth_build::ManifestOptions {
        root: None,
        max_files: pages::MANIFEST_ENTRIES,
    };
    match tokio::time::timeout(
        Duration::from_secs(60),
        s.deployer.builder.manifest(image, &opts),
    )
    .await
    {
        Ok(Ok(m)) => Ok(pages::Files {
            total: m.entries.len() as u64 + m.skipped,
            entries: m
                .entries
                .into_iter()
                .map(|e| berth_core::model::ManifestEntry {
                    path: e.path,
                    size: e.size,
                    sha256: e.sha256,
                })
                .collect(),
            source: "read from the image now",
        }),
        Ok(Err(e)) => Err(format!("cannot read the image {image} (pruned?): {e}")),
        Err(_) => Err("reading the image took longer than 60 s".to_string()),
    }
}

#[derive(Deserialize)]
struct DeployForm {
    csrf: String,
    environment: Option<String>,
    service: Option<String>,
    reference: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|x| x.trim().to_string()).filter(|x| !x.is_empty())
}

fn to_deployment(d: &Deployment) -> Response {
    Redirect::to(&format!("/console/deployments/{}", html::seg(&d.id))).into_response()
}

async fn deploy(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    Path(p): Path<String>,
    Form(f): Form<DeployForm>,
) -> PageResult {
    a.check(&headers, &f.csrf)?;
    let d = s
        .deployer
        .create(NewDeployment {
            project: p,
            service: non_empty(f.service),
            environment: non_empty(f.environment),
            reference: non_empty(f.reference),
            trigger: Trigger::Manual,
            source: None,
            source_repo: None,
        })
        .await?;
    Ok(to_deployment(&d))
}

#[derive(Deserialize)]
struct SlotForm {
    csrf: String,
    environment: Option<String>,
    service: Option<String>,
}

async fn rollback_slot(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    Path(p): Path<String>,
    Form(f): Form<SlotForm>,
) -> PageResult {
    a.check(&headers, &f.csrf)?;
    let slot = Slot {
        project: p,
        environment: non_empty(f.environment).unwrap_or_else(|| PRODUCTION.into()),
        service: non_empty(f.service).unwrap_or_else(|| DEFAULT_SERVICE.into()),
    };
    Ok(to_deployment(&s.deployer.rollback(&slot).await?))
}

async fn deployment_action(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    a.check(&headers, &f.csrf)?;
    let src = s.store.get_deployment(&id).await?;
    let d = match action.as_str() {
        "rollback" => {
            if !src.is_active {
                return Err(Oops(
                    StatusCode::CONFLICT,
                    format!(
                        "deployment {id} is not the active one; promote it instead to make it serve"
                    ),
                ));
            }
            s.deployer.rollback(&Slot::of(&src)).await?
        }
        "promote" => s.deployer.promote(&id).await?,
        "redeploy" => s.deployer.redeploy(&id).await?,
        "cancel" => s.deployer.cancel(&id).await?,
        _ => {
            return Err(Oops(
                StatusCode::NOT_FOUND,
                format!("no action {action:?} on deployments"),
            ))
        }
    };
    Ok(to_deployment(&d))
}

#[derive(Deserialize)]
struct VariableForm {
    csrf: String,
    environment: String,
    key: String,
    #[serde(default)]
    value: String,
    secret: Option<String>,
    build: Option<String>,
}

fn vars_anchor(p: &str, env: &str) -> Response {
    Redirect::to(&format!(
        "/console/projects/{}#vars-{}",
        html::seg(p),
        html::seg(env)
    ))
    .into_response()
}

async fn set_variable(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    Path(p): Path<String>,
    Form(f): Form<VariableForm>,
) -> PageResult {
    a.check(&headers, &f.csrf)?;
    let key = f.key.trim();
    berth_core::names::variable_name(key).map_err(ApiError::from)?;
    berth_core::names::variable_value(key, &f.value).map_err(ApiError::from)?;
    s.store
        .set_variable(
            &p,
            &f.environment,
            key,
            &f.value,
            berth_store::VarFlags {
                secret: f.secret.is_some(),
                build: f.build.is_some(),
            },
            now(),
        )
        .await?;
    Ok(vars_anchor(&p, &f.environment))
}

#[derive(Deserialize)]
struct UnsetForm {
    csrf: String,
    environment: String,
    key: String,
}

async fn unset_variable(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    Path(p): Path<String>,
    Form(f): Form<UnsetForm>,
) -> PageResult {
    a.check(&headers, &f.csrf)?;
    if !s.store.unset_variable(&p, &f.environment, &f.key).await? {
        return Err(Oops(
            StatusCode::NOT_FOUND,
            format!("variable {} is not set in {p}/{}", f.key, f.environment),
        ));
    }
    Ok(vars_anchor(&p, &f.environment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_ever_a_console_path() {
        assert_eq!(
            safe_next(Some("/console/deployments/x")),
            "/console/deployments/x"
        );
        assert_eq!(safe_next(Some("https://evil.test/")), "/console");
        assert_eq!(safe_next(Some("//evil.test/console")), "/console");
        assert_eq!(safe_next(Some("/console//evil.test")), "/console");
        assert_eq!(safe_next(Some("/console\\evil")), "/console");
        assert_eq!(safe_next(None), "/console");
    }
}

//! Who may call what: the one place the API, the console, `git push` and
//! log streams are authorized, and where every change is written to the
//! audit log.
//!
//! Each route declares, in [`RULES`], the role it needs and how the
//! project it touches is found ([`Scope`]). The [`guard`] middleware, laid
//! over every route but health, webhooks and sign-in:
//! 1. finds the route's rule by method and matched path — a route without
//!    one is refused (500, logged), never let through;
//! 2. identifies the caller ([`identify`]): the server's `--token` (an
//!    admin named `admin`), a stored token (by its SHA-256, compared in
//!    constant time), or a console session; a revoked or expired token is a
//!    401 saying which;
//! 3. checks the role (403 naming the role needed) and, for a token scoped
//!    to a project, the project: another project's resources are 404, as if
//!    they did not exist; lists are narrowed to the project;
//! 4. runs the handler with the [`Caller`] in the request's extensions;
//! 5. writes an [`AuditEntry`] for every change that succeeded (status
//!    below 400): time, token name, the rule's action, the target, the
//!    socket's address;
//! 6. ends a streamed answer (SSE logs, run output) of a stored token at the
//!    first check after the token was revoked or expired ([`STREAM_CHECK`]).
//!
//! A new route gets all this by adding its line to [`RULES`]; the tests
//! fail when a documented API route has none.

use crate::api::{token_matches, AppState, BODY_LIMIT};
use crate::error::ApiError;
use crate::ids::now;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use berth_core::access::{AuditEntry, Role, TokenDead, TokenInfo, ADMIN_TOKEN_NAME};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

/// How often a streamed answer re-checks a stored token.
pub const STREAM_CHECK: Duration = Duration::from_secs(1);
/// `lastUsedAt` is written at most this often per token.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// How a route finds the project a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Not a project's resource, harmless to every token (the API document).
    Any,
    /// Server-wide (tokens, routes, nodes, the cluster, metrics): refused to
    /// tokens scoped to a project.
    Global,
    /// The project is the named path parameter.
    Path(&'static str),
    /// The named path parameter is a deployment id.
    Deployment(&'static str),
    /// The named path parameter is a run id.
    Run(&'static str),
    /// The `project` query parameter; a scoped token without one gets its
    /// own project filled in.
    Query,
    /// The `project` field of the JSON body.
    Body,
    /// A list across projects: the handler keeps the caller's projects
    /// ([`Caller::sees`]).
    Listing,
}

/// One route's access rule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub method: &'static str,
    /// The route's path as routed, e.g. `/api/v1/projects/{name}`.
    pub path: &'static str,
    pub need: Role,
    pub scope: Scope,
    /// For changes: the audit log's action name (`""` for reads).
    pub action: &'static str,
}

const fn read(path: &'static str, need: Role, scope: Scope) -> Rule {
    Rule {
        method: "GET",
        path,
        need,
        scope,
        action: "",
    }
}

const fn change(
    method: &'static str,
    path: &'static str,
    need: Role,
    scope: Scope,
    action: &'static str,
) -> Rule {
    Rule {
        method,
        path,
        need,
        scope,
        action,
    }
}

use Role::{Admin, Deployer, Viewer};
use Scope::{Any, Body as InBody, Deployment as Dep, Global, Listing, Path as P, Query, Run};

/// Every guarded route. A viewer reads; a deployer also deploys, rolls
/// back, promotes, cancels, sets variables and runs; admin does everything.
#[rustfmt::skip]
pub const RULES: &[Rule] = &[
    // The API.
    read("/api/v1/openapi.json", Viewer, Any),
    read("/api/v1/projects", Viewer, Listing),
    change("POST", "/api/v1/projects", Admin, Global, "projects.create"),
    read("/api/v1/projects/{name}", Viewer, P("name")),
    change("PATCH", "/api/v1/projects/{name}", Admin, P("name"), "projects.update"),
    read("/api/v1/projects/{name}/environments", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/environments", Deployer, P("name"), "environments.create"),
    change("DELETE", "/api/v1/projects/{name}/environments/{env}", Admin, P("name"), "environments.delete"),
    read("/api/v1/projects/{name}/environments/{env}/variables", Viewer, P("name")),
    change("PUT", "/api/v1/projects/{name}/environments/{env}/variables/{key}", Deployer, P("name"), "variables.set"),
    change("DELETE", "/api/v1/projects/{name}/environments/{env}/variables/{key}", Deployer, P("name"), "variables.unset"),
    read("/api/v1/deployments", Viewer, Query),
    change("POST", "/api/v1/deployments", Deployer, InBody, "deploy"),
    read("/api/v1/deployments/{id}", Viewer, Dep("id")),
    change("POST", "/api/v1/deployments/{id}/cancel", Deployer, Dep("id"), "cancel"),
    change("POST", "/api/v1/deployments/{id}/promote", Deployer, Dep("id"), "promote"),
    change("POST", "/api/v1/deployments/{id}/redeploy", Deployer, Dep("id"), "redeploy"),
    read("/api/v1/deployments/{id}/logs", Viewer, Dep("id")),
    read("/api/v1/deployments/{id}/events", Viewer, Dep("id")),
    read("/api/v1/deployments/{id}/manifest", Viewer, Dep("id")),
    read("/api/v1/deployments/{id}/pin", Viewer, Dep("id")),
    read("/api/v1/logs", Viewer, Query),
    change("POST", "/api/v1/rollback", Deployer, InBody, "rollback"),
    read("/api/v1/projects/{name}/domains", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/domains", Admin, P("name"), "domains.add"),
    change("DELETE", "/api/v1/projects/{name}/domains/{hostname}", Admin, P("name"), "domains.remove"),
    change("POST", "/api/v1/projects/{name}/domains/{hostname}/verify", Admin, P("name"), "domains.verify"),
    read("/api/v1/routes", Admin, Global),
    change("POST", "/api/v1/routes", Admin, Global, "routes.add"),
    change("DELETE", "/api/v1/routes/{hostname}", Admin, Global, "routes.remove"),
    read("/api/v1/cluster", Admin, Global),
    read("/api/v1/projects/{name}/runs", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/runs", Deployer, P("name"), "runs.start"),
    change("POST", "/api/v1/projects/{name}/runs/attach", Deployer, P("name"), "runs.attach"),
    read("/api/v1/runs/{id}", Viewer, Run("id")),
    read("/api/v1/projects/{name}/jobs", Viewer, P("name")),
    read("/api/v1/projects/{name}/jobs/{job}/runs", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/jobs/{job}/runs", Deployer, P("name"), "jobs.run"),
    read("/api/v1/projects/{name}/volumes", Viewer, P("name")),
    read("/api/v1/projects/{name}/volumes/{volume}/backups", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/volumes/{volume}/backups", Admin, P("name"), "volumes.backup"),
    change("POST", "/api/v1/projects/{name}/volumes/{volume}/restore", Admin, P("name"), "volumes.restore"),
    read("/api/v1/projects/{name}/notifications", Viewer, P("name")),
    change("POST", "/api/v1/projects/{name}/notifications", Admin, P("name"), "notifications.add"),
    change("DELETE", "/api/v1/projects/{name}/notifications/{id}", Admin, P("name"), "notifications.remove"),
    read("/api/v1/projects/{name}/maintenance", Viewer, P("name")),
    change("PUT", "/api/v1/projects/{name}/environments/{env}/maintenance", Admin, P("name"), "maintenance.on"),
    change("DELETE", "/api/v1/projects/{name}/environments/{env}/maintenance", Admin, P("name"), "maintenance.off"),
    change("PUT", "/api/v1/projects/{name}/environments/{env}/services/{service}/maintenance", Admin, P("name"), "maintenance.on"),
    change("DELETE", "/api/v1/projects/{name}/environments/{env}/services/{service}/maintenance", Admin, P("name"), "maintenance.off"),
    read("/api/v1/nodes", Admin, Global),
    change("POST", "/api/v1/nodes/{id}/drain", Admin, Global, "nodes.drain"),
    change("POST", "/api/v1/nodes/{id}/activate", Admin, Global, "nodes.activate"),
    read("/api/v1/tokens", Admin, Global),
    change("POST", "/api/v1/tokens", Admin, Global, "tokens.create"),
    change("DELETE", "/api/v1/tokens/{name}", Admin, Global, "tokens.revoke"),
    read("/api/v1/audit", Admin, Query),
    read("/metrics", Viewer, Global),
    // The console (state changes are CSRF-checked forms).
    read("/console", Viewer, Listing),
    read("/console/audit", Admin, Query),
    read("/console/projects/{p}", Viewer, P("p")),
    read("/console/projects/{p}/services/{env}/{s}", Viewer, P("p")),
    change("POST", "/console/projects/{p}/deploy", Deployer, P("p"), "deploy"),
    change("POST", "/console/projects/{p}/rollback", Deployer, P("p"), "rollback"),
    change("POST", "/console/projects/{p}/variables", Deployer, P("p"), "variables.set"),
    change("POST", "/console/projects/{p}/variables/unset", Deployer, P("p"), "variables.unset"),
    read("/console/deployments/{id}", Viewer, Dep("id")),
    read("/console/deployments/{id}/manifest", Viewer, Dep("id")),
    // `{action}`: rollback, promote, redeploy or cancel (the audit action).
    change("POST", "/console/deployments/{id}/{action}", Deployer, Dep("id"), "{action}"),
];

/// The rule of a routed request (HEAD is GET's).
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RULES.iter().find(|r| r.method == m && r.path == path)
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name (`admin` for the server's `--token`).
    pub name: String,
    pub role: Role,
    /// The one project the token sees, or `None`.
    pub project: Option<String>,
    /// A stored token (checked again during a stream), not `--token`.
    pub stored: bool,
    /// The socket's address.
    pub ip: String,
}

impl Caller {
    /// Whether `project`'s resources exist for this caller.
    pub fn sees(&self, project: &str) -> bool {
        self.project.as_deref().is_none_or(|p| p == project)
    }

    fn admin(ip: String) -> Caller {
        Caller {
            name: ADMIN_TOKEN_NAME.into(),
            role: Role::Admin,
            project: None,
            stored: false,
            ip,
        }
    }

    fn of(t: TokenInfo, ip: String) -> Caller {
        Caller {
            name: t.name,
            role: t.role,
            project: t.project,
            stored: true,
            ip,
        }
    }
}

/// Handlers take the caller the guard put in the request.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route has no access rule (see access::RULES)"))
    }
}

/// SHA-256 of a token or session id, hex.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret: `prefix` and 32 bytes from the OS generator, hex.
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Why a caller was refused (before the handler ran).
#[derive(Debug)]
pub enum Denied {
    /// No credentials, or ones that match nothing.
    Missing,
    /// A known token that no longer works.
    Dead { name: String, why: TokenDead },
    /// Role too low.
    Role {
        need: Role,
        have: Role,
        name: String,
    },
    /// A scoped token on a server-wide route.
    Scoped { name: String },
    /// Another project's resource, as if it did not exist.
    Hidden(ApiError),
    /// The route declared no rule (a bug; never let through).
    NoRule(String),
    /// The store could not answer.
    Error(ApiError),
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::Missing => ApiError::unauthorized(),
            Denied::Dead { name, why } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                match why {
                    TokenDead::Revoked => format!("token {name} was revoked"),
                    TokenDead::Expired => format!("token {name} has expired"),
                },
            ),
            Denied::Role { need, have, name } => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the {need} role; token {name} is a {have}"),
            ),
            Denied::Scoped { name } => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs a token for every project; token {name} is scoped to one project"
                ),
            ),
            Denied::Hidden(e) | Denied::Error(e) => e,
            Denied::NoRule(route) => {
                ApiError::internal(format!("route {route} has no access rule (access::RULES)"))
            }
        }
    }
}

/// Who a secret (a bearer token, or a basic-auth password) belongs to.
pub async fn caller_of_token(s: &AppState, token: &str, ip: String) -> Result<Caller, Denied> {
    let token = token.trim();
    if token.is_empty() {
        return Err(Denied::Missing);
    }
    if token_matches(token.as_bytes(), s.token.as_bytes()) {
        return Ok(Caller::admin(ip));
    }
    let hash = digest(token);
    let found = s
        .store
        .token_by_hash(&hash)
        .await
        .map_err(|e| Denied::Error(e.into()))?;
    // The lookup is by hash; compare again in constant time all the same.
    let Some(t) = found.filter(|_| token_matches(digest(token).as_bytes(), hash.as_bytes())) else {
        return Err(Denied::Missing);
    };
    alive(s, t, ip).await
}

/// A stored token's caller, unless it was revoked or expired.
async fn alive(s: &AppState, t: TokenInfo, ip: String) -> Result<Caller, Denied> {
    let at = now();
    if let Some(why) = t.dead_at(at) {
        return Err(Denied::Dead { name: t.name, why });
    }
    if t.last_used_at.is_none_or(|u| at - u >= TOUCH_EVERY) {
        let store = s.store.clone();
        let name = t.name.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_token(&name, at).await {
                tracing::debug!(error = %e, "recording a token's last use failed");
            }
        });
    }
    Ok(Caller::of(t, ip))
}

/// The caller of a console session (its cookie value).
pub async fn caller_of_session(s: &AppState, sid: &str, ip: String) -> Result<Caller, Denied> {
    let found = s
        .store
        .get_session(&digest(sid), now())
        .await
        .map_err(|e| Denied::Error(e.into()))?;
    let Some(session) = found else {
        return Err(Denied::Missing);
    };
    if session.token == ADMIN_TOKEN_NAME {
        return Ok(Caller::admin(ip));
    }
    match s.store.get_token(&session.token).await {
        Ok(t) => alive(s, t, ip).await,
        Err(berth_store::StoreError::NotFound { .. }) => Err(Denied::Missing),
        Err(e) => Err(Denied::Error(e.into())),
    }
}

/// The client: its address — the socket's on `--api-listen` (never a
/// header the client sent), the edge's `X-Forwarded-For` on the console
/// host's private listener (see `console::host`) — and whether berth's
/// edge says it came over HTTPS.
pub struct Peer {
    pub addr: Option<std::net::IpAddr>,
    pub edge_https: bool,
}

impl Peer {
    pub fn ip(&self) -> String {
        self.addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer {
            addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            edge_https: parts
                .extensions
                .get::<crate::console::host::ViaEdge>()
                .is_some_and(|v| v.https),
        })
    }
}

/// The client's address of a request, as text (see [`Peer`]).
pub fn source_ip(ext: &axum::http::Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Who sent these headers: a bearer token, a basic-auth password (or
/// user, for `git` clients that put the token there), or — when
/// `session_ok` — the console's session cookie.
pub async fn identify(
    s: &AppState,
    headers: &HeaderMap,
    ip: String,
    session_ok: bool,
) -> Result<Caller, Denied> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(b) = auth.and_then(|v| v.strip_prefix("Bearer ")) {
        return caller_of_token(s, b, ip).await;
    }
    if let Some(b64) = auth.and_then(|v| v.strip_prefix("Basic ")) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| Denied::Missing)?;
        let text = String::from_utf8_lossy(&raw);
        let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
        return match caller_of_token(s, pass, ip.clone()).await {
            Err(Denied::Missing) => caller_of_token(s, user, ip).await,
            other => other,
        };
    }
    if session_ok {
        if let Some(sid) = crate::console::session_id(headers) {
            return caller_of_session(s, sid, ip).await;
        }
    }
    Err(Denied::Missing)
}

/// Whether `caller` may do what `rule` needs to `project` (when the rule's
/// scope named one). Scoped tokens get a 404 for other projects.
pub fn permit(
    caller: &Caller,
    need: Role,
    scope: Scope,
    project: Option<&str>,
) -> Result<(), Denied> {
    if !caller.role.allows(need) {
        return Err(Denied::Role {
            need,
            have: caller.role,
            name: caller.name.clone(),
        });
    }
    if caller.project.is_some() {
        if scope == Scope::Global {
            return Err(Denied::Scoped {
                name: caller.name.clone(),
            });
        }
        if let Some(p) = project {
            if !caller.sees(p) {
                return Err(Denied::Hidden(ApiError::not_found(format!(
                    "project {p:?} not found"
                ))));
            }
        }
    }
    Ok(())
}

/// What the scope of a rule found in a request.
struct Found {
    project: Option<String>,
    /// Extra words for the audit target (from the body).
    detail: Option<String>,
}

/// Finds the project a request touches (reading a JSON body when the
/// rule says so, and giving the body back). A deployment or run of another
/// project is refused here with the handler's own 404.
async fn locate(
    s: &AppState,
    caller: &Caller,
    rule: &Rule,
    req: Request,
) -> Result<(Request, Found), Denied> {
    let (mut parts, body) = req.into_parts();
    let params = match RawPathParams::from_request_parts(&mut parts, s).await {
        Ok(p) => p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut found = Found {
        project: None,
        detail: None,
    };
    let mut body = body;
    match rule.scope {
        Scope::Any | Scope::Global | Scope::Listing => {}
        Scope::Path(name) => found.project = param(name),
        Scope::Deployment(name) => {
            if let Some(id) = param(name) {
                if let Ok(d) = s.store.get_deployment(&id).await {
                    if !caller.sees(&d.project_name) {
                        return Err(Denied::Hidden(
                            berth_store::StoreError::not_found("deployment", &id).into(),
                        ));
                    }
                    found.project = Some(d.project_name);
                }
            }
        }
        Scope::Run(name) => {
            if let Some(id) = param(name) {
                if let Ok(r) = s.store.get_run(&id).await {
                    if !caller.sees(&r.project_name) {
                        return Err(Denied::Hidden(
                            berth_store::StoreError::not_found("run", &id).into(),
                        ));
                    }
                    found.project = Some(r.project_name);
                }
            }
        }
        Scope::Query => {
            let q = parts.uri.query().unwrap_or("");
            let given =
                axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(
                    &parts.uri,
                )
                .ok()
                .and_then(|axum::extract::Query(m)| m.get("project").cloned());
            match (given, &caller.project) {
                (Some(p), _) => found.project = Some(p),
                (None, Some(own)) => {
                    // A scoped token's list is its project's.
                    let mut q = q.to_string();
                    if !q.is_empty() {
                        q.push('&');
                    }
                    // Project names are a-z, 0-9 and '-': nothing to escape.
                    q.push_str(&format!("project={own}"));
                    let path = parts.uri.path().to_string();
                    parts.uri = Uri::builder()
                        .path_and_query(format!("{path}?{q}"))
                        .build()
                        .map_err(|e| Denied::Error(ApiError::bad_request(e.to_string())))?;
                    found.project = Some(own.clone());
                }
                (None, None) => {}
            }
        }
        Scope::Body => {
            let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
                Denied::Error(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body is larger than {} KiB", BODY_LIMIT / 1024),
                ))
            })?;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
                let rest: Vec<String> = ["environment", "service"]
                    .into_iter()
                    .filter_map(field)
                    .collect();
                found.project = field("project");
                if !rest.is_empty() {
                    found.detail = Some(rest.join("/"));
                }
            }
            body = Body::from(bytes);
        }
    }
    // A console form: its environment, service and variable name join the
    // audit target (never a value).
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form && is_console(parts.uri.path()) && !rule.action.is_empty() {
        let bytes = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| Denied::Error(ApiError::bad_request("form too large")))?;
        let words: Vec<String> = ["environment", "service", "key"]
            .into_iter()
            .filter_map(|k| form_field(&bytes, k))
            .filter(|v| !v.is_empty())
            .collect();
        if !words.is_empty() {
            found.detail = Some(words.join("/"));
        }
        body = Body::from(bytes);
    }
    Ok((Request::from_parts(parts, body), found))
}

/// One field of an `application/x-www-form-urlencoded` body, decoded.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })?;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(|s| s.trim().to_string())
}

fn is_console(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// The refusal as the client expects it: JSON for the API, a page or the
/// sign-in form for the console.
fn refuse(console: bool, method: &Method, uri: &Uri, d: Denied) -> Response {
    if console {
        if matches!(d, Denied::Missing) {
            if method == Method::GET || method == Method::HEAD {
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/console");
                let q = crate::console::url_query_escape(next);
                return Redirect::to(&format!("/login?next={q}")).into_response();
            }
            return Redirect::to("/login").into_response();
        }
        return crate::console::error_page(ApiError::from(d));
    }
    ApiError::from(d).into_response()
}

/// The middleware of every guarded route (see the module docs).
pub async fn guard(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return ApiError::from(Denied::NoRule(uri.path().to_string())).into_response();
    };
    let console = is_console(&path);
    let Some(rule) = rule_for(&method, &path) else {
        if RULES.iter().any(|r| r.path == path) {
            // Another method of a guarded path: the router's 405.
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
            .into_response();
        }
        return refuse(
            console,
            &method,
            &uri,
            Denied::NoRule(format!("{method} {path}")),
        );
    };
    let ip = source_ip(req.extensions());
    // The session cookie is good for the console, and for the API's reads
    // (the console follows logs); API changes need a token (no CSRF there).
    let session_ok = console || method == Method::GET || method == Method::HEAD;
    let caller = match identify(&s, req.headers(), ip, session_ok).await {
        Ok(c) => c,
        Err(d) => return refuse(console, &method, &uri, d),
    };
    if let Err(d) = permit(&caller, rule.need, rule.scope, None) {
        return refuse(console, &method, &uri, d);
    }
    let (mut req, found) = match locate(&s, &caller, rule, req).await {
        Ok(x) => x,
        Err(d) => return refuse(console, &method, &uri, d),
    };
    if let Err(d) = permit(&caller, rule.need, rule.scope, found.project.as_deref()) {
        return refuse(console, &method, &uri, d);
    }
    let action = if rule.action == "{action}" {
        uri.path().rsplit('/').next().unwrap_or("").to_string()
    } else {
        rule.action.to_string()
    };
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    let resp = if !action.is_empty() && resp.status().as_u16() < 400 {
        audit(&s, &caller, action, &uri, found, resp).await
    } else {
        resp
    };
    if caller.stored && is_stream(&resp) {
        return cut_on_revoke(&s, &caller, resp);
    }
    resp
}

fn is_stream(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("text/event-stream") || t.starts_with("application/x-ndjson")
        })
}

/// The audit target: the path below `/api/v1/` or `/console/`, the body's
/// environment/service, and the id of what a change created.
fn target(uri: &Uri, found: &Found, created: Option<&str>) -> String {
    let path = uri.path();
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/console/"))
        .unwrap_or(path.trim_start_matches('/'));
    let mut t = match (&found.project, &found.detail) {
        (Some(p), Some(d)) => format!("{rest} {p}/{d}"),
        (Some(p), None) if !rest.contains(p.as_str()) => format!("{rest} {p}"),
        _ => rest.to_string(),
    };
    if let Some(id) = created.filter(|id| !t.contains(id)) {
        t.push_str(&format!(" -> {id}"));
    }
    t
}

/// Records a change that succeeded; reads the id out of a JSON answer
/// (small ones only; a stream is never read here).
async fn audit(
    s: &AppState,
    caller: &Caller,
    action: String,
    uri: &Uri,
    found: Found,
    resp: Response,
) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let (resp, created) = if json {
        let (parts, body) = resp.into_parts();
        match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
            Ok(bytes) => {
                let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|x| x.as_str()).map(String::from));
                (Response::from_parts(parts, Body::from(bytes)), id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading an answer for the audit log failed");
                (Response::from_parts(parts, Body::empty()), None)
            }
        }
    } else {
        (resp, None)
    };
    let entry = AuditEntry {
        at: now(),
        token: caller.name.clone(),
        action,
        target: target(uri, &found, created.as_deref()),
        project: found.project.clone(),
        source_ip: caller.ip.clone(),
    };
    record(s, entry).await;
    resp
}

/// Appends to the audit log; a failure is logged (the change is done).
pub async fn record(s: &AppState, e: AuditEntry) {
    if let Err(err) = s.store.append_audit(&e).await {
        tracing::error!(error = %err, action = %e.action, target = %e.target, "writing the audit log failed");
    }
}

/// Whether a stored token still works (a store error counts as yes: an
/// unreachable database must not cut every stream).
pub async fn still_valid(s: &AppState, name: &str) -> bool {
    match s.store.get_token(name).await {
        Ok(t) => t.dead_at(now()).is_none(),
        Err(berth_store::StoreError::NotFound { .. }) => false,
        Err(_) => true,
    }
}

/// The stream ends at the first check after its token stopped working.
fn cut_on_revoke(s: &AppState, caller: &Caller, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let s = s.clone();
    let name = caller.name.clone();
    let revoked = Box::pin(async move {
        loop {
            tokio::time::sleep(STREAM_CHECK).await;
            if !still_valid(&s, &name).await {
                tracing::info!(token = %name, "token revoked or expired: its stream ends");
                return;
            }
        }
    });
    let stream = body.into_data_stream().take_until(revoked);
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, project: Option<&str>) -> Caller {
        Caller {
            name: "t".into(),
            role,
            project: project.map(String::from),
            stored: true,
            ip: "127.0.0.1".into(),
        }
    }

    #[test]
    fn roles_and_scopes() {
        let v = caller(Viewer, Some("a"));
        assert!(permit(&v, Viewer, P("name"), Some("a")).is_ok());
        assert!(matches!(
            permit(&v, Deployer, P("name"), Some("a")),
            Err(Denied::Role { need: Deployer, .. })
        ));
        let e: ApiError = permit(&v, Viewer, P("name"), Some("b")).unwrap_err().into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "project \"b\" not found");
        let e: ApiError = permit(&caller(Admin, Some("a")), Admin, Global, None)
            .unwrap_err()
            .into();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(permit(&caller(Admin, None), Admin, Global, None).is_ok());
        assert!(permit(&caller(Viewer, None), Viewer, P("name"), Some("b")).is_ok());
        assert!(permit(&v, Viewer, Any, None).is_ok());
        let e: ApiError = permit(&caller(Viewer, None), Deployer, InBody, None)
            .unwrap_err()
            .into();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(
            e.message,
            "this needs the deployer role; token t is a viewer"
        );
    }

    #[test]
    fn dead_tokens_say_which() {
        let e: ApiError = Denied::Dead {
            name: "ci".into(),
            why: TokenDead::Revoked,
        }
        .into();
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::UNAUTHORIZED, "token ci was revoked")
        );
        let e: ApiError = Denied::Dead {
            name: "ci".into(),
            why: TokenDead::Expired,
        }
        .into();
        assert_eq!(e.message, "token ci has expired");
    }

    /// Every route of the API document has exactly one rule, every rule of
    /// the API is documented, and every change names its audit action. With
    /// the API document's own test (every routed path is documented), a
    /// route added without a rule fails here.
    #[test]
    fn every_api_route_has_one_rule_and_every_change_an_action() {
        let doc = crate::api::openapi_spec();
        let mut documented = std::collections::BTreeSet::new();
        for (p, item) in doc["paths"].as_object().unwrap() {
            for (m, _) in item.as_object().unwrap() {
                if m == "parameters" || p == "/health" {
                    continue;
                }
                documented.insert((m.to_uppercase(), format!("/api/v1{p}")));
            }
        }
        assert!(documented.len() >= 30, "{documented:?}");
        for (m, p) in &documented {
            let n = RULES
                .iter()
                .filter(|r| r.method == m && r.path == p)
                .count();
            assert_eq!(n, 1, "{m} {p}: {n} rules (add it to access::RULES)");
        }
        for r in RULES {
            if r.path.starts_with("/api/v1/") {
                assert!(
                    documented.contains(&(r.method.to_string(), r.path.to_string())),
                    "rule for an undocumented route: {} {}",
                    r.method,
                    r.path
                );
            }
            assert_eq!(
                r.method == "GET",
                r.action.is_empty(),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"csrf=x&environment=pr-1&key=API%5FKEY&value=s%3Dcret+x&service=";
        assert_eq!(form_field(body, "environment").as_deref(), Some("pr-1"));
        assert_eq!(form_field(body, "key").as_deref(), Some("API_KEY"));
        assert_eq!(form_field(body, "value").as_deref(), Some("s=cret x"));
        assert_eq!(form_field(body, "service").as_deref(), Some(""));
        assert_eq!(form_field(body, "nope"), None);
        assert_eq!(form_field(b"key=%4", "key"), None);
    }

    #[test]
    fn audit_targets() {
        let uri: Uri = "/api/v1/projects/shop/environments/production/variables/API_KEY"
            .parse()
            .unwrap();
        let f = Found {
            project: Some("shop".into()),
            detail: None,
        };
        assert_eq!(
            target(&uri, &f, None),
            "projects/shop/environments/production/variables/API_KEY"
        );
        let uri: Uri = "/api/v1/deployments".parse().unwrap();
        let f = Found {
            project: Some("shop".into()),
            detail: Some("staging/web".into()),
        };
        assert_eq!(
            target(&uri, &f, Some("dep_1")),
            "deployments shop/staging/web -> dep_1"
        );
        let uri: Uri = "/console/deployments/dep_1/promote".parse().unwrap();
        let f = Found {
            project: Some("shop".into()),
            detail: None,
        };
        assert_eq!(target(&uri, &f, None), "deployments/dep_1/promote shop");
    }
}

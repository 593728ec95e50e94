//! `ApiClient`: one typed method per endpoint of berth's HTTP API.
//!
//! Every method returns a [`Reply`], which keeps the exact bytes the server
//! sent (so `--json` prints them unchanged, keys in the server's order) and
//! parses them into the `berth-core` type on demand. Every failure is a
//! [`ClientError`] whose message is one line fit for `error: <message>`.

use berth_core::api::{
    AddRoute, CreateDeployment, CreateEnvironment, CreateProject, ErrorBody, ProjectDetail,
    Rollback, SetVariable, UpdateProject,
};
use berth_core::model::{
    Deployment, Environment, ExternalRoute, LogLine, Maintenance, ManifestEntry, Project, Variable,
};
use berth_core::notify::{AddNotification, NotificationCreated, NotificationStatus};
use berth_core::ops::{CreateRun, Job, Run, RunJob};
use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API address {0:?}: {1}")]
    BadBase(String, String),
    #[error("cannot reach berth API at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    #[error("401 unauthorized: {hint}")]
    Unauthorized { hint: String },
    /// The server's own error body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// An error status without berth's JSON error body.
    #[error("berth API answered {status} for {path}")]
    Status { status: u16, path: String },
    #[error("unexpected response from berth API: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether retrying later may help (the server restarting, a dropped
    /// connection), as opposed to an answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// An answer of the API: its exact body, parsed on demand.
pub struct Reply<T> {
    body: Bytes,
    _type: PhantomData<fn() -> T>,
}

impl<T> Reply<T> {
    fn new(body: Bytes) -> Self {
        Reply {
            body,
            _type: PhantomData,
        }
    }

    /// A reply made of bytes the server sent another way (an event's data).
    pub fn from_body(body: impl Into<Bytes>) -> Self {
        Reply::new(body.into())
    }

    /// The body, pretty-printed with its keys in the server's order.
    pub fn pretty(&self) -> Result<String, ClientError> {
        pretty_json(&self.body)
    }

    /// The elements of an array body, each as its exact compact text.
    pub fn elements(&self) -> Result<Vec<Box<serde_json::value::RawValue>>, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

impl<T: DeserializeOwned> Reply<T> {
    pub fn parse(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Pretty-print JSON text without reordering its keys.
pub fn pretty_json(body: &[u8]) -> Result<String, ClientError> {
    let mut out = Vec::with_capacity(body.len() * 2);
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut ser = serde_json::Serializer::pretty(&mut out);
    serde_transcode::transcode(&mut de, &mut ser)
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    de.end().map_err(|e| ClientError::Decode(e.to_string()))?;
    String::from_utf8(out).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Query of `GET /api/v1/deployments`.
#[derive(Clone, Debug, Default)]
pub struct DeploymentQuery {
    pub project: Option<String>,
    pub environment: Option<String>,
    pub service: Option<String>,
    pub limit: Option<u32>,
}

/// Query of the two log endpoints.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub after: Option<i64>,
    /// Comma-separated stream names.
    pub stream: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub limit: Option<u32>,
}

/// Which log endpoint.
#[derive(Clone, Debug)]
pub enum LogSource {
    Deployment(String),
    Runtime {
        project: String,
        service: Option<String>,
        environment: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct ApiClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

type R<T> = Result<Reply<T>, ClientError>;

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let url = Url::parse(base).map_err(|e| ClientError::BadBase(base.into(), e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(ClientError::BadBase(
                base.into(),
                "expected http://host:port".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::BadBase(base.into(), e.to_string()))?;
        Ok(ApiClient {
            base: url,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `/api/v1/<segments...>`, each segment percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        let pairs: Vec<_> = query
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v.as_str())))
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            base: self.base().to_string(),
            reason: transport_reason(&e),
        }
    }

    /// Send, and turn an error status into a [`ClientError`].
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let path = resp.url().path().to_string();
        let body = resp.bytes().await.unwrap_or_default();
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        if status == StatusCode::UNAUTHORIZED {
            // "token ci was revoked" / "has expired": the server says which.
            let hint = match &parsed {
                Some(b) if b.message.starts_with("token ") => one_line(&b.message),
                _ if self.token.is_some() => "the token was rejected: check BERTH_TOKEN".into(),
                _ => "set BERTH_TOKEN".into(),
            };
            return Err(ClientError::Unauthorized { hint });
        }
        Err(match parsed {
            Some(b) if !b.message.is_empty() => ClientError::Api {
                status: status.as_u16(),
                code: b.error,
                message: one_line(&b.message),
            },
            _ => ClientError::Status {
                status: status.as_u16(),
                path,
            },
        })
    }

    async fn call<T>(&self, req: reqwest::RequestBuilder) -> R<T> {
        let resp = self.send(req).await?;
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        Ok(Reply::new(body))
    }

    async fn get<T>(&self, segs: &[&str], query: &[(&str, Option<String>)]) -> R<T> {
        self.call(self.request(Method::GET, self.url(segs, query)))
            .await
    }

    async fn with_body<T, B: Serialize>(&self, method: Method, segs: &[&str], body: &B) -> R<T> {
        self.call(self.request(method, self.url(segs, &[])).json(body))
            .await
    }

    async fn delete(&self, segs: &[&str]) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, self.url(segs, &[])))
            .await?;
        Ok(())
    }

    // ---- health, projects, environments, variables ----

    pub async fn health(&self) -> R<serde_json::Value> {
        self.get(&["health"], &[]).await
    }

    pub async fn list_projects(&self) -> R<Vec<Project>> {
        self.get(&["projects"], &[]).await
    }

    pub async fn create_project(&self, body: &CreateProject) -> R<Project> {
        self.with_body(Method::POST, &["projects"], body).await
    }

    pub async fn get_project(&self, name: &str) -> R<ProjectDetail> {
        self.get(&["projects", name], &[]).await
    }

    pub async fn update_project(&self, name: &str, body: &UpdateProject) -> R<Project> {
        self.with_body(Method::PATCH, &["projects", name], body)
            .await
    }

    pub async fn list_environments(&self, project: &str) -> R<Vec<Environment>> {
        self.get(&["projects", project, "environments"], &[]).await
    }

    pub async fn create_environment(
        &self,
        project: &str,
        body: &CreateEnvironment,
    ) -> R<Environment> {
        self.with_body(Method::POST, &["projects", project, "environments"], body)
            .await
    }

    pub async fn delete_environment(&self, project: &str, env: &str) -> Result<(), ClientError> {
        self.delete(&["projects", project, "environments", env])
            .await
    }

    pub async fn list_variables(&self, project: &str, env: &str) -> R<Vec<Variable>> {
        self.get(
            &["projects", project, "environments", env, "variables"],
            &[],
        )
        .await
    }

    pub async fn set_variable(
        &self,
        project: &str,
        env: &str,
        key: &str,
        body: &SetVariable,
    ) -> R<Variable> {
        let segs = ["projects", project, "environments", env, "variables", key];
        self.with_body(Method::PUT, &segs, body).await
    }

    pub async fn delete_variable(
        &self,
        project: &str,
        env: &str,
        key: &str,
    ) -> Result<(), ClientError> {
        self.delete(&["projects", project, "environments", env, "variables", key])
            .await
    }

    // ---- deployments ----

    pub async fn create_deployment(&self, body: &CreateDeployment) -> R<Deployment> {
        self.with_body(Method::POST, &["deployments"], body).await
    }

    pub async fn list_deployments(&self, q: &DeploymentQuery) -> R<Vec<Deployment>> {
        let query = [
            ("project", q.project.clone()),
            ("environment", q.environment.clone()),
            ("service", q.service.clone()),
            ("limit", q.limit.map(|l| l.to_string())),
        ];
        self.get(&["deployments"], &query).await
    }

    pub async fn get_deployment(&self, id: &str) -> R<Deployment> {
        self.get(&["deployments", id], &[]).await
    }

    /// Open the deployment's server-sent-event stream: one `deployment`
    /// event per saved change, ending after its first terminal state.
    pub async fn deployment_events(&self, id: &str) -> Result<reqwest::Response, ClientError> {
        let req = self
            .request(Method::GET, self.url(&["deployments", id, "events"], &[]))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        self.send(req).await
    }

    /// `verb` is `cancel`, `promote` or `redeploy`.
    pub async fn deployment_action(&self, id: &str, verb: &str) -> R<Deployment> {
        let url = self.url(&["deployments", id, verb], &[]);
        self.call(self.request(Method::POST, url)).await
    }

    pub async fn rollback(&self, body: &Rollback) -> R<Deployment> {
        self.with_body(Method::POST, &["rollback"], body).await
    }

    pub async fn manifest(&self, id: &str) -> R<Vec<ManifestEntry>> {
        self.get(&["deployments", id, "manifest"], &[]).await
    }

    // ---- logs ----

    fn log_url(&self, src: &LogSource, q: &LogQuery, follow: bool) -> Url {
        let mut query = vec![
            ("after", q.after.map(|a| a.to_string())),
            ("stream", q.stream.clone()),
            ("since", q.since.clone()),
            ("limit", q.limit.map(|l| l.to_string())),
        ];
        if follow {
            query.push(("follow", Some("true".into())));
        }
        match src {
            LogSource::Deployment(id) => self.url(&["deployments", id, "logs"], &query),
            LogSource::Runtime {
                project,
                service,
                environment,
            } => {
                query.push(("project", Some(project.clone())));
                query.push(("service", service.clone()));
                query.push(("environment", environment.clone()));
                self.url(&["logs"], &query)
            }
        }
    }

    pub async fn logs(&self, src: &LogSource, q: &LogQuery) -> R<Vec<LogLine>> {
        self.call(self.request(Method::GET, self.log_url(src, q, false)))
            .await
    }

    /// Open the server-sent-event stream of a log endpoint, resuming after
    /// `q.after` (also sent as `Last-Event-ID`).
    pub async fn follow_logs(
        &self,
        src: &LogSource,
        q: &LogQuery,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self
            .request(Method::GET, self.log_url(src, q, true))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(after) = q.after {
            req = req.header("Last-Event-ID", after.to_string());
        }
        self.send(req).await
    }

    /// Read the next chunk of a followed stream.
    pub async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, ClientError> {
        resp.chunk().await.map_err(|e| self.transport_error(e))
    }

    // ---- one-off runs ----

    /// Start a detached run.
    pub async fn create_run(&self, project: &str, body: &CreateRun) -> R<Run> {
        self.with_body(Method::POST, &["projects", project, "runs"], body)
            .await
    }

    /// Start an attached run: `stdin` (if any) is streamed as the body; the
    /// answer is NDJSON [`berth_core::ops::RunStreamEvent`]s.
    pub async fn attach_run(
        &self,
        project: &str,
        body: &CreateRun,
        stdin: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ClientError> {
        let command =
            serde_json::to_string(&body.command).map_err(|e| ClientError::Decode(e.to_string()))?;
        let url = self.url(
            &["projects", project, "runs", "attach"],
            &[
                ("service", body.service.clone()),
                ("environment", body.environment.clone()),
                ("command", Some(command)),
                ("stdin", Some(stdin.is_some().to_string())),
            ],
        );
        let mut req = self
            .request(Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(stdin) = stdin {
            req = req.body(stdin);
        }
        self.send(req).await
    }

    /// Start an attached run with a terminal of `cols` x `rows`: `frames`
    /// is the body of [`berth_core::ops::TtyFrame`]s (stdin bytes and
    /// window sizes); the answer is NDJSON events whose output comes as
    /// `output` (the terminal's bytes).
    pub async fn attach_run_tty(
        &self,
        project: &str,
        body: &CreateRun,
        (cols, rows): (u16, u16),
        with_stdin: bool,
        frames: reqwest::Body,
    ) -> Result<reqwest::Response, ClientError> {
        let command =
            serde_json::to_string(&body.command).map_err(|e| ClientError::Decode(e.to_string()))?;
        let url = self.url(
            &["projects", project, "runs", "attach"],
            &[
                ("service", body.service.clone()),
                ("environment", body.environment.clone()),
                ("command", Some(command)),
                ("stdin", Some(with_stdin.to_string())),
                ("tty", Some("true".into())),
                ("cols", Some(cols.to_string())),
                ("rows", Some(rows.to_string())),
            ],
        );
        let req = self
            .request(Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(frames);
        self.send(req).await
    }

    pub async fn get_run(&self, id: &str) -> R<Run> {
        self.get(&["runs", id], &[]).await
    }

    // ---- scheduled jobs ----

    /// Jobs of every environment of `project` (or of one).
    pub async fn list_jobs(&self, project: &str, environment: Option<String>) -> R<Vec<Job>> {
        self.get(
            &["projects", project, "jobs"],
            &[("environment", environment)],
        )
        .await
    }

    /// Run a job now (detached).
    pub async fn run_job(&self, project: &str, job: &str, body: &RunJob) -> R<Run> {
        self.with_body(
            Method::POST,
            &["projects", project, "jobs", job, "runs"],
            body,
        )
        .await
    }

    /// A job's runs with their output, newest first.
    pub async fn job_runs(
        &self,
        project: &str,
        job: &str,
        environment: Option<String>,
        limit: Option<u32>,
    ) -> R<Vec<Run>> {
        self.get(
            &["projects", project, "jobs", job, "runs"],
            &[
                ("environment", environment),
                ("limit", limit.map(|l| l.to_string())),
            ],
        )
        .await
    }

    // ---- notifications ----

    pub async fn add_notification(
        &self,
        project: &str,
        body: &AddNotification,
    ) -> R<NotificationCreated> {
        self.with_body(Method::POST, &["projects", project, "notifications"], body)
            .await
    }

    pub async fn list_notifications(&self, project: &str) -> R<Vec<NotificationStatus>> {
        self.get(&["projects", project, "notifications"], &[]).await
    }

    pub async fn remove_notification(&self, project: &str, id: &str) -> Result<(), ClientError> {
        self.delete(&["projects", project, "notifications", id])
            .await
    }

    // ---- maintenance ----

    /// Turns maintenance on or off for an environment (every service) or
    /// one service; the answer is what of the project is in maintenance.
    pub async fn set_maintenance(
        &self,
        project: &str,
        env: &str,
        service: Option<&str>,
        on: bool,
    ) -> R<Vec<Maintenance>> {
        let mut segs = vec!["projects", project, "environments", env];
        if let Some(s) = service {
            segs.extend(["services", s]);
        }
        segs.push("maintenance");
        let method = if on { Method::PUT } else { Method::DELETE };
        self.call(self.request(method, self.url(&segs, &[]))).await
    }

    pub async fn list_maintenance(&self, project: &str) -> R<Vec<Maintenance>> {
        self.get(&["projects", project, "maintenance"], &[]).await
    }

    // ---- routes and domains ----

    pub async fn list_routes(&self) -> R<Vec<ExternalRoute>> {
        self.get(&["routes"], &[]).await
    }

    pub async fn add_route(&self, body: &AddRoute) -> R<ExternalRoute> {
        self.with_body(Method::POST, &["routes"], body).await
    }

    pub async fn remove_route(&self, hostname: &str) -> Result<(), ClientError> {
        self.delete(&["routes", hostname]).await
    }

    pub async fn cluster_status(&self) -> R<Vec<serde_json::Value>> {
        self.get(&["cluster"], &[]).await
    }

    pub async fn list_nodes(&self) -> R<Vec<serde_json::Value>> {
        self.get(&["nodes"], &[]).await
    }

    /// `drain` or `activate` a node.
    pub async fn node_action(&self, node: &str, action: &str) -> R<serde_json::Value> {
        self.with_body(
            Method::POST,
            &["nodes", node, action],
            &serde_json::json!({}),
        )
        .await
    }

    // ---- volumes ----

    pub async fn list_volumes(
        &self,
        project: &str,
        environment: Option<String>,
    ) -> R<Vec<berth_core::volumes::VolumeInfo>> {
        self.get(
            &["projects", project, "volumes"],
            &[("environment", environment)],
        )
        .await
    }

    pub async fn backup_volume(
        &self,
        project: &str,
        environment: Option<String>,
        volume: &str,
    ) -> R<berth_core::volumes::Backup> {
        let url = self.url(
            &["projects", project, "volumes", volume, "backups"],
            &[("environment", environment)],
        );
        self.call(self.request(Method::POST, url)).await
    }

    pub async fn volume_backups(
        &self,
        project: &str,
        environment: Option<String>,
        volume: &str,
    ) -> R<Vec<berth_core::volumes::Backup>> {
        self.get(
            &["projects", project, "volumes", volume, "backups"],
            &[("environment", environment)],
        )
        .await
    }

    pub async fn restore_volume(
        &self,
        project: &str,
        environment: Option<String>,
        volume: &str,
        backup_id: &str,
    ) -> R<serde_json::Value> {
        let url = self.url(
            &["projects", project, "volumes", volume, "restore"],
            &[("environment", environment)],
        );
        let body = berth_core::volumes::RestoreRequest {
            backup_id: backup_id.to_owned(),
        };
        self.call(self.request(Method::POST, url).json(&body)).await
    }

    pub async fn list_domains(&self, project: &str) -> R<serde_json::Value> {
        self.get(&["projects", project, "domains"], &[]).await
    }

    pub async fn add_domain(
        &self,
        project: &str,
        body: &serde_json::Value,
    ) -> R<serde_json::Value> {
        self.with_body(Method::POST, &["projects", project, "domains"], body)
            .await
    }

    // ---- tokens and the audit log ----

    pub async fn create_token(
        &self,
        body: &berth_core::access::CreateToken,
    ) -> R<berth_core::access::CreatedToken> {
        self.with_body(Method::POST, &["tokens"], body).await
    }

    pub async fn list_tokens(&self) -> R<Vec<berth_core::access::TokenInfo>> {
        self.get(&["tokens"], &[]).await
    }

    pub async fn revoke_token(&self, name: &str) -> R<berth_core::access::TokenInfo> {
        self.call(self.request(Method::DELETE, self.url(&["tokens", name], &[])))
            .await
    }

    pub async fn audit(
        &self,
        project: Option<String>,
        limit: Option<u32>,
    ) -> R<Vec<berth_core::access::AuditEntry>> {
        self.get(
            &["audit"],
            &[
                ("project", project),
                ("limit", limit.map(|l| l.to_string())),
            ],
        )
        .await
    }

    pub async fn verify_domain(&self, project: &str, hostname: &str) -> R<serde_json::Value> {
        let url = self.url(&["projects", project, "domains", hostname, "verify"], &[]);
        self.call(self.request(Method::POST, url)).await
    }
}

/// The most specific reason of a transport failure, in lower case:
/// "connection refused", "timed out", "dns error: ...".
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return "connection refused".into(),
                K::ConnectionReset => return "connection reset".into(),
                K::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        innermost = s.to_string();
        source = s.source();
    }
    let innermost = innermost
        .split(" (os error")
        .next()
        .unwrap_or("")
        .to_string();
    one_line(&lowercase_first(&innermost))
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Collapse a message onto one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_skip_empty_query() {
        let c = ApiClient::new("http://127.0.0.1:7070/", None).unwrap();
        let u = c.url(&["projects", "a b/c", "environments"], &[("x", None)]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7070/api/v1/projects/a%20b%2Fc/environments"
        );
        let u = c.url(
            &["deployments"],
            &[("project", Some("shop".into())), ("service", None)],
        );
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7070/api/v1/deployments?project=shop"
        );
    }

    #[test]
    fn bad_base_is_an_error() {
        assert!(ApiClient::new("127.0.0.1:7070", None).is_err());
        assert!(ApiClient::new("not a url", None).is_err());
    }

    #[test]
    fn pretty_keeps_key_order() {
        let p = pretty_json(br#"{"z":1,"a":[true,null]}"#).unwrap();
        assert_eq!(p, "{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null\n  ]\n}");
        assert!(pretty_json(b"{\"a\":").is_err());
        assert!(pretty_json(b"{} trailing").is_err());
    }
}

//! The request path: route lookup, target pick, header rewrite, forwarding,
//! error statuses and WebSocket splicing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::fast::{Exchange, Head};
use crate::h1;
use crate::policy::Refusal;
use crate::pool::{SendError, UpBody};
use crate::route::request_host_key;
use crate::scan::{ScanState, Verdict};
use crate::table::{RouteTable, RouteTarget};
use crate::target::{wait_stop, InflightGuard, Stop, TargetInfo, UpgradedGuard};
use crate::trace::TraceContext;
use crate::Worker;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static PIN: HeaderName = HeaderName::from_static(crate::sticky::PIN_HEADER);
/// A response the proxy makes itself: a small text page, or JSON for a
/// client that accepts it; it names the deployment (id and short SHA) that
/// failed to answer, never an upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) text: &'static str,
    /// The deployment the request went to, if any.
    pub(crate) who: Option<Arc<TargetInfo>>,
    /// `Retry-After`, in seconds (429, maintenance).
    pub(crate) retry_after: Option<u64>,
    /// Asks for basic authentication (`WWW-Authenticate`, 401).
    pub(crate) challenge: bool,
    /// The connection closes after it (413: the body was not read).
    pub(crate) close: bool,
    /// `Location` (308 to HTTPS, see `tls.rs`).
    pub(crate) location: Option<String>,
}

/// The `WWW-Authenticate` value of a preview that asks for a password.
pub(crate) const CHALLENGE: &str = "Basic realm=\"berth preview\", charset=\"UTF-8\"";

impl Page {
    const fn new(status: StatusCode, text: &'static str) -> Page {
        Page {
            status,
            text,
            who: None,
            retry_after: None,
            challenge: false,
            close: false,
            location: None,
        }
    }

    /// The page of a policy's refusal (see `policy.rs`).
    pub(crate) fn refused(r: Refusal) -> Page {
        match r {
            Refusal::Forbidden => FORBIDDEN,
            Refusal::Maintenance => Page {
                retry_after: Some(MAINTENANCE_RETRY_SECS),
                ..MAINTENANCE
            },
            Refusal::TooMany(secs) => Page {
                retry_after: Some(secs),
                ..TOO_MANY
            },
            Refusal::Unauthorized => Page {
                challenge: true,
                ..UNAUTHORIZED
            },
        }
    }

    /// A 308 page (its `location` set by the caller).
    pub(crate) const fn moved(text: &'static str) -> Page {
        Page::new(StatusCode::PERMANENT_REDIRECT, text)
    }

    fn by(mut self, who: Option<Arc<TargetInfo>>) -> Page {
        self.who = who;
        self
    }

    /// The content type and body: the text page, or a JSON object
    /// (`status`, `error`, `deploymentId`, `commit`) when `json`.
    pub(crate) fn render(&self, json: bool) -> (&'static str, Bytes) {
        let who = self.who.as_deref();
        let id = who.and_then(|w| w.deployment_id.as_deref());
        let sha = who.and_then(|w| w.short_sha.as_deref());
        if json {
            let message = self.text.trim_end();
            let message = message.split_once(' ').map_or(message, |(_, m)| m);
            let mut v = serde_json::json!({ "status": self.status.as_u16(), "error": message });
            if let Some(id) = id {
                v["deploymentId"] = id.into();
            }
            if let Some(sha) = sha {
                v["commit"] = sha.into();
            }
            let mut body = v.to_string().into_bytes();
            body.push(b'\n');
            return ("application/json", Bytes::from(body));
        }
        if id.is_none() && sha.is_none() {
            return (TEXT, Bytes::from_static(self.text.as_bytes()));
        }
        let mut t = self.text.trim_end().to_string();
        let named: Vec<String> = [
            id.map(|i| format!("deployment {i}")),
            sha.map(|s| format!("commit {s}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        t.push_str(&format!(" ({})\n", named.join(", ")));
        (TEXT, Bytes::from(t))
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// `Retry-After` of the maintenance page.
const MAINTENANCE_RETRY_SECS: u64 = 120;
const FORBIDDEN: Page = Page::new(
    StatusCode::FORBIDDEN,
    "403 forbidden: your address may not reach this application\n",
);
const MAINTENANCE: Page = Page::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "503 service unavailable: this application is down for maintenance; please try again in a few minutes\n",
);
const TOO_MANY: Page = Page::new(
    StatusCode::TOO_MANY_REQUESTS,
    "429 too many requests: slow down and retry after the time given in Retry-After\n",
);
const UNAUTHORIZED: Page = Page::new(
    StatusCode::UNAUTHORIZED,
    "401 unauthorized: this preview asks for a user and password\n",
);
pub(crate) const TOO_LARGE: Page = Page {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    text: "413 content too large: the request body is over this application's limit\n",
    who: None,
    retry_after: None,
    challenge: false,
    close: true,
    location: None,
};

/// True if the client asked for JSON (`Accept` names `application/json`).
pub(crate) fn wants_json(accept: &[u8]) -> bool {
    accept
        .windows(16)
        .any(|w| w.eq_ignore_ascii_case(b"application/json"))
}

pub(crate) const MISSING_HOST: Page =
    Page::new(StatusCode::BAD_REQUEST, "400 bad request: missing host\n");
pub(crate) const UNKNOWN_HOST: Page = Page::new(
    StatusCode::NOT_FOUND,
    "404 not found: no application is served at this host\n",
);
pub(crate) const NO_TARGET: Page = Page::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "503 service unavailable: no healthy instance for this host\n",
);
const UNREACHABLE: Page = Page::new(
    StatusCode::BAD_GATEWAY,
    "502 bad gateway: the application could not be reached\n",
);
const BAD_BODY: Page = Page::new(
    StatusCode::BAD_REQUEST,
    "400 bad request: malformed request body\n",
);
const UNEXPECTED_SWITCH: Page = Page::new(
    StatusCode::BAD_GATEWAY,
    "502 bad gateway: unexpected protocol switch\n",
);
const DRAINED: Page = Page::new(
    StatusCode::GATEWAY_TIMEOUT,
    "504 gateway timeout: instance drained\n",
);
const TOO_SLOW: Page = Page::new(
    StatusCode::GATEWAY_TIMEOUT,
    "504 gateway timeout: the application did not answer in time\n",
);

/// What routing may read of a request besides its host: read only on a
/// route under canary (see `sticky.rs`).
pub(crate) struct Hints<'a, C> {
    /// The `X-Berth-Deployment` value.
    pub(crate) pin: Option<&'a [u8]>,
    /// The `Cookie` header values.
    pub(crate) cookies: C,
    /// The request came over HTTPS (the cookie gets `Secure`).
    pub(crate) secure: bool,
    /// The client's socket address (policies).
    pub(crate) client: std::net::IpAddr,
    /// The `Authorization` value (policies).
    pub(crate) authorization: Option<&'a [u8]>,
    /// The request target, path and query (the 308 to HTTPS keeps it).
    pub(crate) target: &'a [u8],
}

/// The target a request goes to, and the cookie that keeps its visitor
/// there (a new visitor of a route under canary).
pub(crate) struct Routed<'t> {
    pub(crate) target: &'t RouteTarget,
    pub(crate) set_cookie: Option<HeaderValue>,
    /// The route's `max_body`.
    pub(crate) max_body: Option<u64>,
}

/// The target of a request for `raw_host` (its Host header), or the page
/// to answer with; counts unknown hosts and routes without targets.
pub(crate) fn route<'t, 'a, C: IntoIterator<Item = &'a [u8]>>(
    inner: &crate::Inner,
    table: &'t RouteTable,
    raw_host: Option<&str>,
    hints: Hints<'a, C>,
) -> Result<Routed<'t>, Page> {
    let key = raw_host.and_then(request_host_key).ok_or(MISSING_HOST)?;
    let Some(route) = table.lookup(&key) else {
        inner.unknown_host.fetch_add(1, Ordering::Relaxed);
        return Err(UNKNOWN_HOST);
    };
    if !hints.secure {
        if let Some(page) = crate::tls::to_https(inner, &key, hints.target) {
            return Err(page);
        }
    }
    let mut max_body = None;
    if let Some(p) = route.policy.as_deref() {
        if let Some(r) = p.judge(hints.client, hints.authorization) {
            return Err(Page::refused(r));
        }
        max_body = p.max_body;
    }
    let no_target = || {
        inner.no_target.fetch_add(1, Ordering::Relaxed);
        NO_TARGET
    };
    let Some(sticky) = route.sticky.as_deref() else {
        let target = route.pick().ok_or_else(no_target)?;
        return Ok(Routed {
            target,
            set_cookie: None,
            max_body,
        });
    };
    let kept = hints
        .pin
        .and_then(|p| sticky.pinned(p))
        .or_else(|| sticky.by_cookie(hints.cookies.into_iter()));
    if let Some(i) = kept.map(|i| route.settle(i)) {
        return Ok(Routed {
            target: &route.targets[i],
            set_cookie: None,
            max_body,
        });
    }
    let i = route.pick_index().ok_or_else(no_target)?;
    Ok(Routed {
        target: &route.targets[i],
        set_cookie: sticky.cookie_for(i, hints.secure).cloned(),
        max_body,
    })
}

/// One try of a request on one target: its in-flight guard (which holds
/// the request's record), metrics series, abort generation and pool key.
pub(crate) struct Attempt {
    pub(crate) guard: InflightGuard,
    pub(crate) series: Arc<crate::metrics::Series>,
    pub(crate) abort_gen: u64,
    pub(crate) upstream_id: u64,
    /// Replicas tried before this one.
    pub(crate) retries: usize,
}

impl Attempt {
    /// Counts the request in flight on `target` (while the caller still
    /// holds the table snapshot `target` came from).
    pub(crate) fn on(worker: &Worker, target: &RouteTarget) -> Attempt {
        worker.pool.prepare(target.upstream_id, &target.authority);
        Attempt {
            guard: InflightGuard::new(target.state.clone()),
            series: target.series.clone(),
            abort_gen: target.state.abort_gen(),
            upstream_id: target.upstream_id,
            retries: 0,
        }
    }

    /// After this attempt failed with `e`: when the target refused the
    /// request (`e.refused()`), takes it out of rotation (passive health)
    /// and, if `may_resend`, moves the request to another replica of the
    /// same deployment that is up (see `Route::sibling_of`; at most one try
    /// per replica). True when the request has a new target; false: the
    /// caller answers with the error.
    pub(crate) fn retry(
        &mut self,
        worker: &Worker,
        raw_host: Option<&str>,
        e: &SendError,
        may_resend: bool,
    ) -> bool {
        if !e.refused() {
            return false;
        }
        let inner = &worker.inner;
        let failed = &self.guard.target;
        if failed.mark_down() {
            inner.marked_down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target_id = %failed.id, error = %e, "target refused a request; out of rotation until a probe finds it healthy");
        }
        if !may_resend {
            return false;
        }
        let table = inner.table.load();
        let Some(route) = raw_host
            .and_then(request_host_key)
            .and_then(|k| table.lookup(&k))
        else {
            return false;
        };
        let Some(next) = route.sibling_of(failed, self.retries) else {
            return false;
        };
        tracing::debug!(from = %failed.id, to = %next.state.id, error = %e, "retrying on another replica");
        let mut next_try = Attempt::on(worker, next);
        drop(table);
        next_try.retries = self.retries + 1;
        next_try.guard.record = self.guard.record.take();
        if let Some(r) = &mut next_try.guard.record {
            r.retarget(&next_try.guard.target);
        }
        inner.retried.fetch_add(1, Ordering::Relaxed);
        *self = next_try;
        true
    }
}

fn page_response(page: Page, json: bool) -> Response<ProxyBody> {
    let (content_type, body) = page.render(json);
    let page = &page;
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = page.status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = page.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if page.challenge {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    if page.close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(l) = page
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

fn error_response(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn request_host(req: &Request<Incoming>) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// Per client connection: its address and its framing verdicts.
pub(crate) struct ConnCtx {
    /// `X-Forwarded-For` value, formatted once per connection.
    client_ip: Option<HeaderValue>,
    pub(crate) scan: Arc<ScanState>,
    /// `X-Forwarded-Proto` when not the edge's (`https` on the TLS listener).
    proto: Option<&'static str>,
    /// The client's address (access log, spans).
    remote: std::net::IpAddr,
}

impl ConnCtx {
    pub(crate) fn new(remote: SocketAddr) -> ConnCtx {
        ConnCtx {
            client_ip: HeaderValue::from_str(&remote.ip().to_string()).ok(),
            scan: Arc::new(ScanState::default()),
            proto: None,
            remote: remote.ip(),
        }
    }

    pub(crate) fn with_proto(mut self, proto: &'static str) -> ConnCtx {
        self.proto = Some(proto);
        self
    }
}

pub(crate) async fn handle(
    worker: Arc<Worker>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let verdict = if req.version() == Version::HTTP_2 {
        Verdict::Ok
    } else {
        conn.scan.next_request()
    };
    if verdict == Verdict::Refuse {
        let mut r = error_response(
            StatusCode::BAD_REQUEST,
            "400 bad request: ambiguous message framing\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(r);
    }
    if let Some(r) = crate::tls::challenge_response(&worker, &req) {
        return Ok(r);
    }
    let mut resp = handle_inner(&worker, &conn, req).await;
    if conn.proto == Some("https") {
        crate::tls::add_hsts(&worker.inner, resp.headers_mut());
    }
    if verdict == Verdict::CloseUnlessSwitching && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn handle_inner(
    worker: &Worker,
    conn: &ConnCtx,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let json = req
        .headers()
        .get(header::ACCEPT)
        .is_some_and(|v| wants_json(v.as_bytes()));
    let inner = &worker.inner;
    let table = inner.table.load();
    let proto = conn.proto.unwrap_or(inner.proto);
    let hints = Hints {
        pin: req.headers().get(&PIN).map(HeaderValue::as_bytes),
        cookies: req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
        secure: proto == "https",
        client: conn.remote,
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        target: req
            .uri()
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes()),
    };
    let (target, set_cookie, max_body) = match route(inner, &table, request_host(&req), hints) {
        Ok(r) => (r.target, r.set_cookie, r.max_body),
        Err(mut page) => {
            drop(table);
            if let Some(observers) = &inner.observers {
                let trace = TraceContext::for_request(
                    req.headers().get(&TRACEPARENT).map(HeaderValue::as_bytes),
                );
                crate::observe::Record::unrouted(
                    observers,
                    crate::observe::Start {
                        started: Instant::now(),
                        host: request_host(&req).unwrap_or_default().as_bytes(),
                        method: req.method().as_str(),
                        path: req.uri().path().as_bytes(),
                        client: conn.remote,
                        target: None,
                        trace,
                    },
                    page.status.as_u16(),
                    page.render(json).1.len(),
                );
            }
            crate::front::tarpit(worker, conn.remote, &mut page).await;
            return page_response(page, json);
        }
    };
    if let Some(max) = max_body {
        // a length over the limit: refused before a byte of the body is read
        if req.body().size_hint().lower() > max {
            drop(table);
            return page_response(TOO_LARGE, json);
        }
    }
    let started = Instant::now();
    let mut attempt = Attempt::on(worker, target);
    let uri = upstream_uri(req.uri());
    drop(table);

    // Header rewrite.
    let is_h1 = req.version() == Version::HTTP_11;
    let client_upgrade = h1::hop::strip(req.headers_mut(), is_h1);
    // Taken at the start, so a drain during the handshake still closes it.
    let upgraded_token = client_upgrade
        .as_ref()
        .map(|_| attempt.guard.target.upgraded_token());
    let original_host = match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    // to find another replica if this one refuses (a cheap clone)
    let host_value = original_host.clone();
    let raw_host = host_value.as_ref().and_then(|h| h.to_str().ok());
    let headers = req.headers_mut();
    headers.remove(&PIN);
    match &conn.client_ip {
        Some(v) => headers.insert(&X_FORWARDED_FOR, v.clone()),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let trace = {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let first = values.next();
        let repeated = values.next().is_some();
        let mut trace =
            TraceContext::for_request(first.filter(|_| !repeated).map(HeaderValue::as_bytes));
        if let Some(s) = inner.observers.as_ref().and_then(|o| o.spans.as_ref()) {
            s.flag(&mut trace);
        }
        trace
    };
    if let Ok(v) = HeaderValue::from_bytes(&trace.traceparent()) {
        headers.insert(&TRACEPARENT, v);
    }
    if !trace.continued() {
        headers.remove(&TRACESTATE);
    }
    if let Some(h) = original_host {
        headers.insert(&X_FORWARDED_HOST, h.clone());
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, h);
        }
    }
    if let Some(observers) = &inner.observers {
        attempt.guard.record = crate::observe::Record::start(
            observers,
            crate::observe::Start {
                started,
                host: req
                    .headers()
                    .get(&X_FORWARDED_HOST)
                    .map_or(&b""[..], |h| h.as_bytes()),
                method: req.method().as_str(),
                path: req.uri().path().as_bytes(),
                client: conn.remote,
                target: Some(&attempt.guard.target),
                trace,
            },
        );
    }
    if client_upgrade.is_none()
        && (req.method() == Method::GET || req.method() == Method::OPTIONS)
        && req.body().is_end_stream()
        && !req.headers().contains_key(header::EXPECT)
    {
        let head = request_head(&req);
        drop(req);
        let mut resp = fast_path(worker, &head, attempt, raw_host, started, json).await;
        add_cookie(&mut resp, set_cookie);
        return resp;
    }
    let headers = req.headers_mut();
    let client_on_upgrade = if let Some(up) = &client_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up.clone());
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    // a bodiless idempotent request is kept (head only) to send again to
    // another replica if a new connection drops it unanswered
    let replay = replayable(&req).then(|| {
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.headers_mut() = req.headers().clone();
        head
    });
    let mut req = match max_body {
        // a body of unknown length is read up to the limit before anything
        // of the request is forwarded
        Some(max) if !req.body().is_end_stream() && req.body().size_hint().exact().is_none() => {
            let (parts, body) = req.into_parts();
            let limit = usize::try_from(max).unwrap_or(usize::MAX);
            match BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
                Ok(all) => Request::from_parts(parts, UpBody::Full(Some(all.to_bytes()))),
                Err(e) => {
                    let too_large = e.is::<http_body_util::LengthLimitError>();
                    let mut guard = attempt.guard;
                    let page = if too_large { TOO_LARGE } else { BAD_BODY };
                    guard.answered(&attempt.series, page.status.as_u16(), started.elapsed());
                    let mut r = page_response(page, json);
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
            }
        }
        _ => req.map(UpBody::Client),
    };

    // No timer per request: the worker's bell rings on drain aborts and on a
    // coarse tick (see `Worker::tick`), and the request checks both.
    let deadline = started + inner.upstream_timeout;
    let result = loop {
        let result = tokio::select! {
            r = worker.pool.send(attempt.upstream_id, req) => Ok(r),
            stop = wait_stop(&attempt.guard.target, attempt.abort_gen, &worker.bell, deadline) => Err(stop),
        };
        match result {
            Ok(Err((e, back))) => {
                // not written (so any method may go elsewhere), or written
                // but bodiless and idempotent: sent again as it was
                let again = back.or_else(|| replay.as_ref().map(resend));
                let may = again.is_some();
                match again {
                    Some(r) if attempt.retry(worker, raw_host, &e, may) => req = r,
                    _ => break Ok(Err(e)),
                }
            }
            Ok(Ok(r)) => break Ok(Ok(r)),
            Err(stop) => break Err(stop),
        }
    };
    let upgraded_token = match upgraded_token {
        Some(_) if attempt.retries > 0 => Some(attempt.guard.target.upgraded_token()),
        t => t,
    };
    let Attempt {
        mut guard,
        series,
        abort_gen,
        ..
    } = attempt;
    let resp = match result {
        Err(stop) => return page_response(stopped(stop, &mut guard, started, &series), json),
        Ok(Err(e)) if client_body_failed(&e) => {
            // the client's fault, not the application's: 400 and close
            tracing::debug!(target_id = %guard.target.id, error = %e, "malformed request body");
            guard.answered(&series, 400, started.elapsed());
            let mut r = page_response(BAD_BODY, json);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        Ok(Err(e)) => return page_response(send_failed(&mut guard, &e, started, &series), json),
        Ok(Ok(r)) => r,
    };
    let (mut resp, conn) = resp;
    let status = resp.status();
    guard.answered(&series, status.as_u16(), started.elapsed());

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_on_upgrade) = client_on_upgrade {
            let up_value = h1::hop::strip(resp.headers_mut(), true);
            let upstream_on_upgrade = hyper::upgrade::on(&mut resp);
            // the connection future must run on to hand its socket over
            conn.detach();
            let websocket = client_upgrade
                .as_ref()
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let ws_guard = UpgradedGuard::new(guard.target.clone());
            tokio::spawn(async move {
                let (client_io, upstream_io) =
                    match tokio::try_join!(client_on_upgrade, upstream_on_upgrade) {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::debug!(error = %e, "upgrade failed");
                            return;
                        }
                    };
                let client_io = TokioIo::new(client_io);
                let upstream_io = TokioIo::new(upstream_io);
                let token = upgraded_token.unwrap_or_default();
                crate::splice::splice(client_io, upstream_io, token, websocket).await;
                drop(ws_guard);
            });
            let (mut parts, _) = resp.into_parts();
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(v) = up_value {
                parts.headers.insert(header::UPGRADE, v);
            }
            drop(guard);
            return Response::from_parts(parts, ProxyBody::empty());
        }
        // 101 without a client upgrade request: refuse it.
        return page_response(UNEXPECTED_SWITCH.by(guard.target.info()), json);
    }

    h1::hop::strip(resp.headers_mut(), false);
    add_cookie(&mut resp, set_cookie);
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        ProxyBody::upstream(body, guard, conn, abort_gen, worker.bell.clone()),
    )
}

/// Sets the sticky cookie on an answer of the application (never on the
/// edge's own error pages: a visitor is kept only where it was served).
fn add_cookie<B>(resp: &mut Response<B>, set_cookie: Option<HeaderValue>) {
    if let Some(c) = set_cookie {
        if resp.status().as_u16() < 500 {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
    }
}

/// The request head the fast path writes: origin-form target, the headers
/// already rewritten.
fn request_head(req: &Request<Incoming>) -> Vec<u8> {
    let target = match req.uri().path_and_query().map(|pq| pq.as_str()) {
        Some(t) if t.starts_with('/') || t == "*" => t,
        _ => "/",
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Forwards a bodiless `GET`/`OPTIONS` with the hand-written client
/// (`fast.rs`); the same statuses, metrics and in-flight accounting as the
/// hyper path.
async fn fast_path(
    worker: &Worker,
    request_head: &[u8],
    mut attempt: Attempt,
    raw_host: Option<&str>,
    started: Instant,
    json: bool,
) -> Response<ProxyBody> {
    let deadline = started + worker.inner.upstream_timeout;
    let mut head = Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
    };
    let result = loop {
        let req = Exchange {
            id: attempt.upstream_id,
            head: request_head,
            idempotent: true,
            head_method: false,
        };
        let guard = &attempt.guard;
        let result = tokio::select! {
            r = crate::fast::send(&worker.pool, req, &mut head) => Ok(r),
            stop = wait_stop(&guard.target, attempt.abort_gen, &worker.bell, deadline) => Err(stop),
        };
        match result {
            Ok(Err(e)) if attempt.retry(worker, raw_host, &e, true) => {}
            r => break r,
        }
    };
    let Attempt {
        mut guard,
        series,
        abort_gen,
        ..
    } = attempt;
    let series = &*series;
    let (status, body) = match result {
        Err(stop) => return page_response(stopped(stop, &mut guard, started, series), json),
        Ok(Err(e)) => return page_response(send_failed(&mut guard, &e, started, series), json),
        Ok(Ok(r)) => r,
    };
    guard.answered(series, status.as_u16(), started.elapsed());
    let mut resp = Response::new(ProxyBody::raw(body, guard, abort_gen, worker.bell.clone()));
    *resp.status_mut() = status;
    *resp.headers_mut() = head.headers;
    resp
}

/// The page for a request that stopped waiting for its upstream (504);
/// records it.
pub(crate) fn stopped(
    stop: Stop,
    guard: &mut InflightGuard,
    started: Instant,
    series: &crate::metrics::Series,
) -> Page {
    guard.answered(series, 504, started.elapsed());
    match stop {
        Stop::Aborted => DRAINED,
        Stop::TimedOut => TOO_SLOW,
    }
    .by(guard.target.info())
}

/// One warning per second at most for upstream failures (an app that is
/// down fails every request); the next line counts those left out.
fn log_upstream_failure(guard: &InflightGuard, e: &SendError) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Relaxed);
    if now > last && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
        let host = guard.record.as_ref().map_or("-", |r| r.host.as_str());
        tracing::warn!(
            host,
            target_id = %guard.target.id,
            error = %e,
            left_out = LEFT_OUT.swap(0, Relaxed),
            "upstream request failed"
        );
    } else {
        LEFT_OUT.fetch_add(1, Relaxed);
    }
}

/// The page for a request the upstream could not answer (502); records it.
pub(crate) fn send_failed(
    guard: &mut InflightGuard,
    e: &SendError,
    started: Instant,
    series: &crate::metrics::Series,
) -> Page {
    log_upstream_failure(guard, e);
    guard.answered(series, 502, started.elapsed());
    if matches!(e, SendError::UnexpectedSwitch) {
        UNEXPECTED_SWITCH
    } else {
        UNREACHABLE
    }
    .by(guard.target.info())
}

/// True when forwarding failed because the client's request body could not
/// be read (malformed chunked framing, a body cut short): hyper's client
/// reports an error of the body it was given as a user error, and the only
/// body it is given is the client's.
fn client_body_failed(e: &SendError) -> bool {
    matches!(e, SendError::Http(e) if e.is_user())
}

/// True when a request a new connection dropped before answering may be
/// sent again elsewhere: an idempotent method (RFC 9110 9.2.2) and no body.
fn replayable(req: &Request<Incoming>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) && req.body().is_end_stream()
}

/// `head` again, without a body.
fn resend(head: &Request<()>) -> Request<UpBody> {
    let mut r = Request::new(UpBody::Empty);
    *r.method_mut() = head.method().clone();
    *r.uri_mut() = head.uri().clone();
    *r.headers_mut() = head.headers().clone();
    r
}

/// The origin-form request target sent upstream (`/path?query`).
fn upstream_uri(original: &Uri) -> Uri {
    match original.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

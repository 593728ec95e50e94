//! The client side of the common request, by hand: an HTTP/1.1 server loop
//! for bodiless `GET`, `HEAD` and `OPTIONS` requests, which hands the
//! connection to hyper the moment a request is anything else.
//!
//! Every plain client connection starts here ([`serve`]), and every TLS
//! one whose ALPN chose HTTP/1.1 ([`serve_io`] over the TLS stream, where
//! the h2c preface is not looked for). A request is answered
//! here when it is *eligible*: its head parses (`httparse`, at most
//! [`MAX_HEADERS`] headers and [`MAX_HEAD`] bytes), it is HTTP/1.1, its method
//! is `GET`, `HEAD` or `OPTIONS`, its target is an origin-form path of plain
//! characters (letters, digits, `-._~!$&'()*+,;=:@/?%`), it has exactly one
//! `Host` that yields a host key, no `Content-Length`, `Transfer-Encoding`,
//! `Upgrade` or `Expect`, and its `Connection` names nothing but
//! `keep-alive` and `close`. The upstream request head is written straight
//! from the client's bytes (hop-by-hop headers left out, `X-Forwarded-For`,
//! `-Proto` and `-Host` replaced), sent with the hand-written upstream
//! client (`fast.rs`), and the response head and body are copied into one
//! write buffer (a body without a length is re-chunked), so a small
//! response costs one read and one write on each side and no allocation.
//!
//! Anything else (a body, an upgrade, HTTP/1.0, the h2c preface, a head that
//! does not parse or is too large or has too many headers, an absolute-form
//! target, a missing or repeated `Host`) goes to hyper together with the
//! bytes already read, from the start of that request ([`Rewind`]). hyper
//! then serves the rest of the connection as it serves any connection:
//! `proxy::handle` behind the framing scanner, upgrades, h2c, its own
//! 400/431 answers.
//!
//! Visible differences with hyper's path, none of them semantic: header
//! names keep the spelling the upstream (towards the client) or the client
//! (towards the upstream) used, where hyper lowercased them, and headers keep
//! their order, where hyper grouped repeated names.
//!
//! Invariants:
//! * Responses leave in request order: the next request is parsed once the
//!   previous response is written (pipelined requests wait in the buffer).
//! * Routing, statuses, pages, metrics and in-flight accounting are
//!   `proxy.rs`'s (shared helpers): the in-flight guard is held from the
//!   target pick until the upstream body was read to its end, or until the
//!   error page is decided.
//! * Slow-loris guard: a request head must be complete within
//!   `header_read_timeout` of the first wait for it (idle keep-alive waits
//!   included), else the connection is closed without an answer, as hyper
//!   does. One timer per connection, re-armed only when it fires.
//! * Shutdown ([`Shared::shut_down`]): a connection waiting for a new request
//!   closes once it has been idle for [`STOP_LINGER`] (a request that comes
//!   in meanwhile is answered, with `connection: close`: closing an idle
//!   keep-alive connection at once races the client's next request, which
//!   then fails although another process — see berth-server's `takeover` —
//!   serves the same socket); one in the middle of a request finishes it and
//!   answers with `connection: close`; connections handed to hyper shut down
//!   gracefully.

use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::fast::{Exchange, HeadSink};
use crate::h1::{self, MAX_HEAD, MAX_HEADERS};
use crate::pool::SendError;
use crate::proxy::{self, Attempt, ConnCtx, Page};
use crate::scan::ScanIo;
use crate::target::wait_stop;
use crate::trace::TraceContext;
use crate::Worker;

/// How long an idle keep-alive connection stays open after shutdown began,
/// for a request the client may already have sent.
pub(crate) const STOP_LINGER: Duration = Duration::from_millis(500);

/// Read buffer of a connection, to start with.
const BUF_SIZE: usize = 4096;
/// Response bytes gathered before a write while more body is available.
const FLUSH_AT: usize = 64 * 1024;
/// Largest write buffer a connection keeps between requests.
const KEEP_OUT: usize = 16 * 1024;

/// What the connections of one `serve` loop share: hyper's settings for the
/// connections handed over, and the shutdown signal.
pub(crate) struct Shared {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    stopping: AtomicBool,
    stop: Notify,
    header_read_timeout: Duration,
}

impl Shared {
    pub(crate) fn new(header_read_timeout: Duration) -> Shared {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .max_buf_size(MAX_HEAD)
            .max_headers(MAX_HEADERS)
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        auto.http2().timer(TokioTimer::new());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .max_buf_size(MAX_HEAD)
            .max_headers(MAX_HEADERS)
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        Shared {
            auto,
            http1,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            header_read_timeout,
        }
    }

    /// Idle connections close, busy ones close after their request.
    pub(crate) fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// What a client connection is read from and written to: a TCP stream, or
/// a TLS stream over one (HTTP/1.1 after ALPN).
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for S {}

/// A client connection [`admit`] let in: the stream, and, when its address
/// is over a rate limit, its place in the address's count of connections
/// (given back when this is dropped).
pub(crate) struct Admitted {
    pub(crate) stream: TcpStream,
    pub(crate) counted: Option<Counted>,
}

/// A connection counted by `policy::Admission`, until dropped.
pub(crate) struct Counted {
    inner: Arc<crate::Inner>,
    ticket: crate::policy::Ticket,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.inner.admission.release(self.ticket);
    }
}

/// Admission of a connection just accepted, before a byte of it is read
/// (see `policy::Admission`): `None` when its address is over a rate limit
/// and already holds as many connections as allowed; the connection is
/// then closed at once, with a reset (no `TIME_WAIT` kept for it).
pub(crate) fn admit(worker: &Worker, stream: TcpStream, remote: SocketAddr) -> Option<Admitted> {
    let inner = &worker.inner;
    match inner.admission.admit(remote.ip(), Instant::now()) {
        Ok(ticket) => {
            let _ = stream.set_nodelay(true);
            Some(Admitted {
                stream,
                counted: ticket.map(|ticket| Counted {
                    inner: inner.clone(),
                    ticket,
                }),
            })
        }
        Err(crate::policy::Refused) => {
            let _ = stream.set_zero_linger();
            None
        }
    }
}

/// Serves one plain client connection until it closes.
pub(crate) async fn serve(worker: Arc<Worker>, conn: Admitted, remote: SocketAddr) {
    let Admitted { stream, counted } = conn;
    serve_io(worker, stream, remote, "http").await;
    drop(counted);
}

/// Serves one client connection until it closes; `proto` is what
/// `X-Forwarded-Proto` says (`"https"` over TLS, where hyper never sees the
/// h2c preface).
pub(crate) async fn serve_io<S: ClientIo>(
    worker: Arc<Worker>,
    io: S,
    remote: SocketAddr,
    proto: &'static str,
) {
    let conn = Conn {
        io,
        proto,
        buf: Vec::with_capacity(BUF_SIZE),
        pos: 0,
        out: Vec::new(),
        up: Vec::new(),
        client_ip: remote.ip().to_string().into_bytes(),
        served: 0,
        head_deadline: None,
        timer: None,
        worker,
        remote,
    };
    conn.run().await;
}

/// One client connection on the hand-written path.
struct Conn<S> {
    io: S,
    /// `X-Forwarded-Proto`: `"http"` or `"https"`.
    proto: &'static str,
    /// Bytes read from the client; `buf[pos..]` is not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    /// The response being written.
    out: Vec<u8>,
    /// The upstream request head.
    up: Vec<u8>,
    /// `X-Forwarded-For` value.
    client_ip: Vec<u8>,
    /// Requests answered so far.
    served: u64,
    /// When the head being waited for must be complete.
    head_deadline: Option<tokio::time::Instant>,
    /// The slow-loris timer, armed at or before `head_deadline`.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    worker: Arc<Worker>,
    remote: SocketAddr,
}

/// How a wait for request bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Data,
    /// End of stream, read error, header timeout or shutdown: close.
    Close,
}

/// How a request went, for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    KeepAlive,
    Close,
    /// Write failed, or the response was cut: drop the socket.
    Abort,
}

impl<S: ClientIo> Conn<S> {
    async fn run(mut self) {
        loop {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            }
            let sampler = self.worker.inner.observers.as_ref();
            let parsed = parse(
                &self.buf[self.pos..],
                &self.client_ip,
                self.proto,
                sampler.and_then(|o| o.spans.as_ref()),
                &mut self.up,
            );
            match parsed {
                Parse::Partial => {
                    if self.buf.len() - self.pos >= MAX_HEAD {
                        return self.hand_over().await;
                    }
                    if self.read().await == Wait::Close {
                        return;
                    }
                }
                Parse::Handover => return self.hand_over().await,
                Parse::Request(req) => {
                    self.head_deadline = None;
                    let outcome = self.answer(&req).await;
                    self.pos += req.len;
                    self.served += 1;
                    if self.out.capacity() > KEEP_OUT {
                        // a large response passed: do not keep its buffer
                        // for the life of an idle keep-alive connection
                        self.out = Vec::new();
                    }
                    match outcome {
                        Outcome::KeepAlive => {}
                        Outcome::Close => {
                            let _ = self.io.shutdown().await;
                            return;
                        }
                        Outcome::Abort => return,
                    }
                }
            }
        }
    }

    /// Reads more request bytes, within the header timeout; an idle
    /// connection also stops waiting on shutdown.
    async fn read(&mut self) -> Wait {
        if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
                self.buf.reserve(self.buf.capacity().max(BUF_SIZE));
            }
        }
        let idle = self.pos == self.buf.len();
        let Conn {
            io,
            buf,
            head_deadline,
            timer,
            worker,
            ..
        } = self;
        let front = &worker.front;
        let mut stop = pin!(front.stop.notified());
        poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut *buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wait::Close),
                Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Data),
                Poll::Pending => {}
            }
            if idle && (stop.as_mut().poll(cx).is_ready() || front.is_stopping()) {
                // linger a moment for a request already on its way
                let linger = tokio::time::Instant::now() + STOP_LINGER;
                if head_deadline.is_none_or(|d| d > linger) {
                    *head_deadline = Some(linger);
                }
            }
            let deadline = *head_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + front.header_read_timeout);
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if t.deadline() > deadline {
                t.as_mut().reset(deadline); // moved earlier by a shutdown
            }
            // armed for an earlier head: move it on instead of re-arming it
            // for every request
            while t.as_mut().poll(cx).is_ready() {
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!("request head not received in time; closing");
                    return Poll::Ready(Wait::Close);
                }
                t.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await
    }

    /// Writes `out` to the client.
    async fn flush(&mut self) -> bool {
        // (flush: a TLS stream may keep records it could not write yet)
        let ok = self.io.write_all(&self.out).await.is_ok() && self.io.flush().await.is_ok();
        self.out.clear();
        ok
    }

    /// Whether to close after the response now being written: the client
    /// asked, or the server is shutting down.
    fn closing(&self, req: &Request) -> bool {
        req.close || self.worker.front.is_stopping()
    }

    /// Answers with a page of the proxy's own; a 429 waits in the tarpit
    /// first, or closes the connection when the tarpit is full (see
    /// `policy.rs`).
    async fn page(&mut self, mut page: Page, req: &Request) -> Outcome {
        let worker = self.worker.clone();
        tarpit(&worker, self.remote.ip(), &mut page).await;
        let (method, close) = (req.method, self.closing(req) || page.close);
        self.out.clear();
        let hsts = hsts(self.proto, &worker.inner);
        write_page(
            &mut self.out,
            &page,
            req.json,
            method == Verb::Head,
            close,
            hsts,
        );
        match self.flush().await {
            true if close => Outcome::Close,
            true => Outcome::KeepAlive,
            false => Outcome::Abort,
        }
    }

    /// Routes and forwards one eligible request, and writes its response.
    async fn answer(&mut self, req: &Request) -> Outcome {
        let worker = self.worker.clone();
        let inner = &worker.inner;
        let head = &self.buf[self.pos..];
        let host = std::str::from_utf8(&head[req.host.0..req.host.1]).ok();
        let hints = proxy::Hints {
            pin: req.pin.map(|(a, b)| &head[a..b]),
            cookies: req.cookies[..req.cookie_count]
                .iter()
                .map(|(a, b)| &head[*a..*b]),
            secure: self.proto == "https",
            client: self.remote.ip(),
            authorization: req.auth.map(|(a, b)| &head[a..b]),
            target: &head[req.target.0..req.target.1],
        };
        let table = inner.table.load();
        let (target, set_cookie) = match proxy::route(inner, &table, host, hints) {
            Ok(r) => (r.target, r.set_cookie),
            Err(page) => {
                drop(table);
                if let Some(observers) = &inner.observers {
                    let len = page.render(req.json).1.len();
                    crate::observe::Record::unrouted(
                        observers,
                        crate::observe::Start {
                            started: Instant::now(),
                            host: &head[req.host.0..req.host.1],
                            method: req.method.as_str(),
                            path: &head[req.target.0..req.target.1],
                            client: self.remote.ip(),
                            target: None,
                            trace: req.trace,
                        },
                        page.status.as_u16(),
                        len,
                    );
                }
                return self.page(page, req).await;
            }
        };
        let started = Instant::now();
        let mut attempt = Attempt::on(&worker, target);
        if let Some(observers) = &inner.observers {
            attempt.guard.record = crate::observe::Record::start(
                observers,
                crate::observe::Start {
                    started,
                    host: &head[req.host.0..req.host.1],
                    method: req.method.as_str(),
                    path: &head[req.target.0..req.target.1],
                    client: self.remote.ip(),
                    target: Some(&attempt.guard.target),
                    trace: req.trace,
                },
            );
        }
        drop(table);

        let deadline = started + inner.upstream_timeout;
        let (result, had_date, had_length, had_hsts) = loop {
            let exchange = Exchange {
                id: attempt.upstream_id,
                head: &self.up,
                idempotent: true,
                head_method: req.method == Verb::Head,
            };
            let mut sink = RawHead {
                out: &mut self.out,
                date: false,
                length: false,
                hsts: false,
            };
            let guard = &attempt.guard;
            let result = tokio::select! {
                biased;
                r = crate::fast::send(&worker.pool, exchange, &mut sink) => Ok(r),
                stop = wait_stop(&guard.target, attempt.abort_gen, &worker.bell, deadline) => Err(stop),
            };
            let (had_date, had_length, had_hsts) = (sink.date, sink.length, sink.hsts);
            match result {
                // every request here is idempotent and bodiless: a replica
                // that refused it leaves it to a sibling
                Ok(Err(e)) if attempt.retry(&worker, host, &e, true) => {}
                r => break (r, had_date, had_length, had_hsts),
            }
        };
        let proxy::Attempt {
            mut guard,
            series,
            abort_gen,
            ..
        } = attempt;
        let (status, mut body) = match result {
            Err(stop) => {
                let page = proxy::stopped(stop, &mut guard, started, &series);
                drop(guard);
                return self.page(page, req).await;
            }
            Ok(Err(e)) => {
                let page = proxy::send_failed(&mut guard, &e, started, &series);
                drop(guard);
                return self.page(page, req).await;
            }
            Ok(Ok(r)) => r,
        };
        guard.answered(&series, status.as_u16(), started.elapsed());
        let close = self.closing(req);

        // the end of the head
        let with_body = req.method != Verb::Head
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED;
        if with_body && body.needs_chunks() {
            if had_length {
                // chunked and a length: the chunks decide (RFC 9112 6.3)
                drop_content_length(&mut self.out);
            }
            self.out
                .extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        if let Some(v) = hsts(self.proto, inner).filter(|_| !had_hsts) {
            // an app's own value is kept
            self.out.extend_from_slice(b"strict-transport-security: ");
            self.out.extend_from_slice(v.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if let Some(c) = set_cookie.filter(|_| status.as_u16() < 500) {
            self.out.extend_from_slice(b"set-cookie: ");
            self.out.extend_from_slice(c.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !had_date {
            put_date(&mut self.out);
        }
        self.out.extend_from_slice(b"\r\n");

        // the body, as it comes; the head leaves with its first bytes
        let head_len = self.out.len();
        let mut sent = 0usize;
        let mut guard = Some(guard);
        let mut abort_wait: Option<Pin<Box<OwnedNotified>>> = None;
        loop {
            let out = &mut self.out;
            let step = poll_fn(|cx| match body.poll_copy(cx, out) {
                Poll::Ready(r) => Poll::Ready(Some(r.map_err(|e| e.to_string()))),
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => {
                    if crate::body::poll_aborted(
                        &guard,
                        abort_gen,
                        &worker.bell,
                        &mut abort_wait,
                        cx,
                    )
                    .is_ready()
                    {
                        return Poll::Ready(Some(Err("target drained".to_string())));
                    }
                    Poll::Pending
                }
            })
            .await;
            match step {
                // nothing more yet: send what there is, then wait
                None => {
                    sent += self.out.len();
                    if !self.flush().await {
                        return Outcome::Abort;
                    }
                }
                Some(Ok(false)) => {
                    if self.out.len() >= FLUSH_AT {
                        sent += self.out.len();
                        if !self.flush().await {
                            return Outcome::Abort;
                        }
                    }
                }
                Some(Ok(true)) => {
                    if let Some(g) = &mut guard {
                        g.add_bytes((sent + self.out.len()).saturating_sub(head_len));
                    }
                    drop(guard.take());
                    return match self.flush().await {
                        true if close => Outcome::Close,
                        true => Outcome::KeepAlive,
                        false => Outcome::Abort,
                    };
                }
                Some(Err(e)) => {
                    drop(guard.take());
                    body.abandon();
                    tracing::debug!(error = %e, "response cut short");
                    return Outcome::Abort;
                }
            }
        }
    }

    /// Hands the connection, with the unconsumed bytes, to hyper.
    async fn hand_over(self) {
        let Conn {
            io,
            mut buf,
            pos,
            served,
            worker,
            remote,
            proto,
            ..
        } = self;
        buf.drain(..pos);
        let io = Rewind {
            pre: buf,
            pos: 0,
            io,
        };
        serve_hyper(worker, io, remote, proto, served == 0).await;
    }
}

/// The tarpit of both request paths (see `policy.rs`): a 429 is held back
/// before it is written, `min(Retry-After, 1 s)` (`policy::Tarpit::delay`),
/// less if shutdown begins; when the tarpit is full it leaves at once and
/// closes the connection. Other pages pass untouched.
pub(crate) async fn tarpit(worker: &Worker, client: IpAddr, page: &mut Page) {
    if page.status != StatusCode::TOO_MANY_REQUESTS {
        return;
    }
    // new connections of this address are counted until it may try again
    let retry_after = page.retry_after.unwrap_or(1);
    let span = crate::policy::Admission::span(retry_after);
    worker.inner.admission.flag(client, span, Instant::now());
    let Some(_held) = worker.inner.tarpit.park(client) else {
        page.close = true;
        return;
    };
    let front = &worker.front;
    let mut stop = pin!(front.stop.notified());
    stop.as_mut().enable();
    if front.is_stopping() {
        return;
    }
    let delay = crate::policy::Tarpit::delay(retry_after);
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop => {}
    }
}

/// Drives a hyper connection, shutting it down gracefully on shutdown.
macro_rules! drive {
    ($conn:expr, $front:expr) => {{
        let mut conn = pin!($conn);
        let mut stop = pin!($front.stop.notified());
        stop.as_mut().enable();
        if $front.is_stopping() {
            conn.as_mut().graceful_shutdown();
        }
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "client connection ended with error");
        }
    }};
}

/// Serves the rest of a connection with hyper (`proxy::handle` behind the
/// framing scanner). `fresh`: nothing was answered on it yet, so a plain
/// connection may still turn out to be HTTP/2 (h2c prior knowledge).
async fn serve_hyper<S: ClientIo>(
    worker: Arc<Worker>,
    io: Rewind<S>,
    remote: SocketAddr,
    proto: &'static str,
    fresh: bool,
) {
    let ctx = Arc::new(ConnCtx::new(remote).with_proto(proto));
    let io = TokioIo::new(ScanIo::new(io, ctx.scan.clone()));
    let w = worker.clone();
    let svc = hyper::service::service_fn(move |req| proxy::handle(w.clone(), ctx.clone(), req));
    let front = &worker.front;
    if fresh && proto == "http" {
        drive!(front.auto.serve_connection_with_upgrades(io, svc), front);
    } else {
        drive!(front.http1.serve_connection(io, svc).with_upgrades(), front);
    }
}

/// The client socket with bytes already read put back in front of it.
pub(crate) struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    io: S,
}

impl<S: ClientIo> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.pre.len() {
            let n = (this.pre.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.pre[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pre.len() {
                this.pre = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: ClientIo> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The methods answered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Head,
    Options,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Options => "OPTIONS",
        }
    }
}

/// An eligible request whose upstream head is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// Length of its head (it has no body).
    pub(crate) len: usize,
    method: Verb,
    /// Its request target (path and query), as `host`.
    target: (usize, usize),
    /// The `Host` value, as a range of the bytes given to `parse`.
    pub(crate) host: (usize, usize),
    /// The client asked to close after this request.
    close: bool,
    /// Its trace context (the `traceparent` sent upstream).
    pub(crate) trace: TraceContext,
    /// `Accept` names `application/json`: the edge's own pages in JSON.
    pub(crate) json: bool,
    /// The first `Cookie` values (ranges, as `host`); read only on a route
    /// under canary.
    cookies: [(usize, usize); MAX_COOKIES],
    cookie_count: usize,
    /// The `X-Berth-Deployment` value (not forwarded).
    pin: Option<(usize, usize)>,
    /// The `Authorization` value (forwarded; read by a route's policy).
    auth: Option<(usize, usize)>,
}

/// `Cookie` headers of a request looked at for the sticky cookie.
const MAX_COOKIES: usize = 4;

// On the stack once per request: boxing the request would allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parse {
    /// More bytes are needed.
    Partial,
    /// Not for this path: hyper takes it from here.
    Handover,
    Request(Request),
}

/// What a request header means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Host,
    Connection,
    /// Hop-by-hop, or set by the proxy: not forwarded.
    Drop,
    TraceParent,
    TraceState,
    /// Forwarded, and kept aside for sticky routing.
    Cookie,
    /// `X-Berth-Deployment`: kept aside, not forwarded.
    Pin,
    /// Forwarded, and kept aside for a route's policy.
    Authorization,
    /// Framing, upgrades, expectations: hyper's job.
    Handover,
    Forward,
}

fn classify(name: &[u8]) -> Name {
    let eq = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        4 if eq(b"host") => Name::Host,
        6 if eq(b"expect") => Name::Handover,
        6 if eq(b"cookie") => Name::Cookie,
        7 if eq(b"upgrade") => Name::Handover,
        10 if eq(b"connection") => Name::Connection,
        10 if eq(b"tracestate") => Name::TraceState,
        13 if eq(b"authorization") => Name::Authorization,
        11 if eq(b"traceparent") => Name::TraceParent,
        14 if eq(b"content-length") => Name::Handover,
        17 if eq(b"transfer-encoding") => Name::Handover,
        15 if eq(b"x-forwarded-for") => Name::Drop,
        16 if eq(b"x-forwarded-host") => Name::Drop,
        17 if eq(b"x-forwarded-proto") => Name::Drop,
        18 if eq(b"x-berth-deployment") => Name::Pin,
        _ if h1::hop::is_hop_by_hop(name) => Name::Drop,
        _ => Name::Forward,
    }
}

/// Bytes of a request target answered here (RFC 3986 `pchar`, `/`, `?`);
/// anything else (`#`, quotes, spaces, non-ASCII...) is left to hyper.
const fn target_chars() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            );
        i += 1;
    }
    t
}

static TARGET_CHARS: [bool; 256] = target_chars();

/// Parses a request head at the start of `buf` and, if the request is
/// eligible, writes its upstream head into `up`. With span export on
/// (`sampler`), a new trace it samples is sent upstream flagged sampled.
pub(crate) fn parse(
    buf: &[u8],
    client_ip: &[u8],
    proto: &str,
    sampler: Option<&crate::otlp::SpanSink>,
    up: &mut Vec<u8>,
) -> Parse {
    if buf.is_empty() {
        return Parse::Partial;
    }
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Handover,
    };
    let method = match req.method {
        Some("GET") => Verb::Get,
        Some("HEAD") => Verb::Head,
        Some("OPTIONS") => Verb::Options,
        _ => return Parse::Handover,
    };
    let target = req.path.unwrap_or_default().as_bytes();
    if req.version != Some(1)
        || !target.starts_with(b"/")
        || !target.iter().all(|b| TARGET_CHARS[usize::from(*b)])
        || target.starts_with(crate::tls::ACME_CHALLENGE_PREFIX.as_bytes())
    {
        return Parse::Handover;
    }
    up.clear();
    up.extend_from_slice(req.method.unwrap_or_default().as_bytes());
    up.push(b' ');
    up.extend_from_slice(target);
    up.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut traceparent: Option<&[u8]> = None;
    let mut traceparents = 0;
    let mut tracestate: [&[u8]; 4] = [b""; 4];
    let mut tracestates = 0;
    let mut json = false;
    let range = |v: &[u8]| {
        let start = v.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + v.len())
    };
    let mut cookies = [(0, 0); MAX_COOKIES];
    let mut cookie_count = 0;
    let mut pin = None;
    let mut auth = None;
    for h in req.headers.iter() {
        match classify(h.name.as_bytes()) {
            Name::TraceParent => {
                traceparent = Some(h.value);
                traceparents += 1;
            }
            Name::TraceState => {
                // kept aside: forwarded only with the trace they belong to
                let Some(slot) = tracestate.get_mut(tracestates) else {
                    return Parse::Handover;
                };
                *slot = h.value;
                tracestates += 1;
            }
            Name::Forward => {
                if h.name.len() == 6 && h.name.eq_ignore_ascii_case("accept") {
                    json |= proxy::wants_json(h.value);
                }
                up.extend_from_slice(h.name.as_bytes());
                up.extend_from_slice(b": ");
                up.extend_from_slice(h.value);
                up.extend_from_slice(b"\r\n");
            }
            Name::Cookie => {
                if let Some(slot) = cookies.get_mut(cookie_count) {
                    *slot = range(h.value);
                    cookie_count += 1;
                }
                up.extend_from_slice(h.name.as_bytes());
                up.extend_from_slice(b": ");
                up.extend_from_slice(h.value);
                up.extend_from_slice(b"\r\n");
            }
            Name::Pin => pin = Some(range(h.value)),
            Name::Authorization => {
                auth = Some(range(h.value));
                up.extend_from_slice(h.name.as_bytes());
                up.extend_from_slice(b": ");
                up.extend_from_slice(h.value);
                up.extend_from_slice(b"\r\n");
            }
            Name::Drop => {}
            Name::Handover => return Parse::Handover,
            Name::Host => {
                if host.is_some() {
                    return Parse::Handover;
                }
                host = Some(h.value);
                up.extend_from_slice(b"Host: ");
                up.extend_from_slice(h.value);
                up.extend_from_slice(b"\r\n");
            }
            Name::Connection => {
                for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                        // names headers to strip, or asks for an upgrade
                        return Parse::Handover;
                    }
                }
            }
        }
    }
    // what hyper's path reads (`HeaderValue::to_str`); an empty host key
    // gets the same 400 page from `proxy::route` as there
    let Some(host) = host.filter(|h| h.iter().all(|b| *b == b'\t' || (b' '..0x7f).contains(b)))
    else {
        return Parse::Handover;
    };
    let mut trace = TraceContext::for_request(traceparent.filter(|_| traceparents == 1));
    if let Some(s) = sampler {
        s.flag(&mut trace);
    }
    up.extend_from_slice(b"traceparent: ");
    up.extend_from_slice(&trace.traceparent());
    up.extend_from_slice(b"\r\n");
    if trace.continued() {
        for v in &tracestate[..tracestates] {
            up.extend_from_slice(b"tracestate: ");
            up.extend_from_slice(v);
            up.extend_from_slice(b"\r\n");
        }
    }
    up.extend_from_slice(b"X-Forwarded-For: ");
    up.extend_from_slice(client_ip);
    up.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    up.extend_from_slice(proto.as_bytes());
    up.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    up.extend_from_slice(host);
    up.extend_from_slice(b"\r\n\r\n");
    Parse::Request(Request {
        len,
        method,
        target: range(target),
        host: range(host),
        close,
        trace,
        json,
        cookies,
        cookie_count,
        pin,
        auth,
    })
}

/// Writes the upstream's response head as the client's: status line, then
/// the headers (the caller ends the head).
struct RawHead<'a> {
    out: &'a mut Vec<u8>,
    /// A `Date` header was passed on.
    date: bool,
    /// A `Content-Length` header was passed on.
    length: bool,
    /// A `Strict-Transport-Security` header was passed on.
    hsts: bool,
}

impl HeadSink for RawHead<'_> {
    fn start(&mut self, status: StatusCode) {
        self.out.clear();
        self.date = false;
        self.length = false;
        self.hsts = false;
        status_line(self.out, status);
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), SendError> {
        // httparse let through only what `HeaderValue::from_bytes` accepts
        // on hyper's path (tab, visible ASCII, obs-text): no check needed
        let n = name.as_bytes();
        self.date |= n.eq_ignore_ascii_case(b"date");
        self.length |= n.eq_ignore_ascii_case(b"content-length");
        self.hsts |= n.len() == 25 && n.eq_ignore_ascii_case(b"strict-transport-security");
        self.out.extend_from_slice(n);
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

/// The `Strict-Transport-Security` value an answer carries: over TLS, with
/// `--hsts` (as `tls::add_hsts` on hyper's path).
fn hsts<'a>(proto: &str, inner: &'a crate::Inner) -> Option<&'a http::HeaderValue> {
    if proto == "https" {
        crate::tls::hsts_value(inner)
    } else {
        None
    }
}

/// Removes `content-length` lines from a head being written.
fn drop_content_length(out: &mut Vec<u8>) {
    let mut kept = Vec::with_capacity(out.len());
    for line in out.split_inclusive(|b| *b == b'\n') {
        let is_length = line
            .get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"content-length:"));
        if !is_length {
            kept.extend_from_slice(line);
        }
    }
    *out = kept;
}

/// The status line hyper writes.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A page of the proxy's own, with the headers hyper's path sends.
fn write_page(
    out: &mut Vec<u8>,
    page: &Page,
    json: bool,
    head_method: bool,
    close: bool,
    hsts: Option<&http::HeaderValue>,
) {
    let (content_type, text) = page.render(json);
    status_line(out, page.status);
    out.extend_from_slice(b"content-type: ");
    out.extend_from_slice(content_type.as_bytes());
    // (write!: numbers without a String each)
    let _ = write!(
        out,
        "\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        text.len()
    );
    if let Some(secs) = page.retry_after {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if page.challenge {
        out.extend_from_slice(b"www-authenticate: ");
        out.extend_from_slice(proxy::CHALLENGE.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(l) = &page.location {
        out.extend_from_slice(b"location: ");
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = hsts {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    put_date(out);
    out.extend_from_slice(b"\r\n");
    if !head_method {
        out.extend_from_slice(&text);
    }
}

thread_local! {
    /// The `Date` header line of the current second.
    static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
}

/// Appends `date: <IMF-fixdate>\r\n` (formatted once a second per thread).
fn put_date(out: &mut Vec<u8>) {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (at, mut text) = DATE.get();
    if at != secs {
        text = http_date(secs);
        DATE.set((secs, text));
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// `secs` since the Unix epoch as an IMF-fixdate (RFC 9110 5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + u64::from(month <= 2)).min(9999);
    let mut d = [0u8; 29];
    d[..3].copy_from_slice(DAYS[((days + 4) % 7) as usize]);
    d[3..5].copy_from_slice(b", ");
    let two = |d: &mut [u8], v: u64| {
        d[0] = b'0' + (v / 10) as u8;
        d[1] = b'0' + (v % 10) as u8;
    };
    two(&mut d[5..7], day);
    d[7] = b' ';
    d[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    d[11] = b' ';
    two(&mut d[12..14], year / 100);
    two(&mut d[14..16], year % 100);
    d[16] = b' ';
    two(&mut d[17..19], rem / 3600);
    d[19] = b':';
    two(&mut d[20..22], rem / 60 % 60);
    d[22] = b':';
    two(&mut d[23..25], rem % 60);
    d[25..29].copy_from_slice(b" GMT");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_head(raw: &[u8]) -> (Parse, String) {
        let mut up = Vec::new();
        let p = parse(raw, b"10.0.0.7", "http", None, &mut up);
        (p, String::from_utf8(up).unwrap())
    }

    #[test]
    fn eligible_requests_are_rewritten_for_the_upstream() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: Shop.localhost:8080\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-host: evil\r\nX-Forwarded-Proto: https\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\nAccept: */*\r\n\r\nGET /next";
        let (p, up) = up_head(raw);
        let Parse::Request(r) = p else {
            panic!("{p:?}")
        };
        assert_eq!(r.len, raw.len() - 9);
        assert_eq!(r.method, Verb::Get);
        assert!(!r.close);
        assert_eq!(&raw[r.host.0..r.host.1], b"Shop.localhost:8080");
        let tp = format!(
            "traceparent: {}\r\n",
            std::str::from_utf8(&r.trace.traceparent()).unwrap()
        );
        assert_eq!(
            up,
            format!("GET /a?b=c HTTP/1.1\r\nHost: Shop.localhost:8080\r\nAccept: */*\r\n{tp}X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: Shop.localhost:8080\r\n\r\n")
        );
        assert!(!r.trace.continued(), "no traceparent came: a new trace");
        // a valid one keeps its trace id and its tracestate; repeated
        // traceparents are malformed: a new trace, tracestate dropped
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let raw = format!("GET / HTTP/1.1\r\ntracestate: a=1\r\nHost: a\r\ntraceparent: {good}\r\ntracestate: b=2\r\n\r\n");
        let (p, up) = up_head(raw.as_bytes());
        let Parse::Request(r) = p else {
            panic!("{p:?}")
        };
        assert!(r.trace.continued());
        assert!(
            up.contains("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{up}"
        );
        assert!(!up.contains(good), "{up}");
        assert!(
            up.contains("tracestate: a=1\r\ntracestate: b=2\r\n"),
            "{up}"
        );
        assert_eq!(up.matches("traceparent").count(), 1, "{up}");
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\ntraceparent: {good}\r\ntraceparent: {good}\r\ntracestate: b=2\r\n\r\n");
        let (_, up) = up_head(raw.as_bytes());
        assert!(
            !up.contains("4bf92f3577b34da6a3ce929d0e0e4736") && !up.contains("tracestate"),
            "{up}"
        );
        assert_eq!(up.matches("traceparent").count(), 1, "{up}");
        let (p, _) =
            up_head(b"HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Keep-Alive, close\r\n\r\n");
        assert!(
            matches!(
                p,
                Parse::Request(Request {
                    method: Verb::Head,
                    close: true,
                    ..
                })
            ),
            "{p:?}"
        );
    }

    #[test]
    fn partial_heads_wait_and_the_rest_goes_to_hyper() {
        assert_eq!(up_head(b"").0, Parse::Partial);
        assert_eq!(up_head(b"GET / HTTP/1.1\r\nHost: a\r\n").0, Parse::Partial);
        assert_eq!(up_head(b"PRI * HT").0, Parse::Partial);
        for raw in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
            b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert_eq!(
                up_head(raw).0,
                Parse::Handover,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(up_head(&many).0, Parse::Handover);
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let d = |s| String::from_utf8(http_date(s).to_vec()).unwrap();
        assert_eq!(d(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(d(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(d(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(d(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }

    #[test]
    fn chunked_answers_lose_their_length() {
        let mut out =
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\ncontent-length: 3\r\nX-B: 2\r\n"
                .to_vec();
        drop_content_length(&mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\n");
    }
}

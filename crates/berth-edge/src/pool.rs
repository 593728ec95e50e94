//! Upstream HTTP/1.1 keep-alive connections, pooled per `serve` loop.
//!
//! Each `serve` loop (so each worker thread of `Edge::serve_threads`) owns
//! one [`Pool`]. A connection has no task of its own: hyper's client
//! connection future is driven inline by the request that borrows it (while
//! waiting for the response head) and then by the response body, so the
//! upstream socket wakes the client connection's task directly, with no
//! hop through another task or thread. An idle connection is not polled; a
//! close by the upstream is noticed when it is next checked out. A
//! connection is lent to one request at a time and comes back to
//! the pool only when its response body has been read to the end (see
//! `body.rs`); a response abandoned half-way drops the connection. A pooled
//! connection the upstream closed in the meantime is skipped, and a request
//! not yet written when its connection turned out dead is retried once on a
//! fresh connection.
//!
//! The pool also keeps the idle connections of the hand-written fast path
//! (`fast.rs`) apart from hyper's: plain sockets, lent by
//! [`Pool::checkout_raw`] and returned by [`Pool::release_raw`] under the
//! same rule (response body read to the end).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::fast::RawConn;

/// Idle connections kept per upstream and pool.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

/// Why a request could not be forwarded (the proxy answers 502).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("connect to {upstream} timed out")]
    ConnectTimeout { upstream: String },
    #[error("connect to {upstream}: {source}")]
    Connect {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream connection closed before the request was sent")]
    Closed,
    #[error("upstream http: {0}")]
    Http(#[from] hyper::Error),
    #[error("upstream i/o: {0}")]
    Io(#[source] std::io::Error),
    #[error("upstream sent a malformed response: {0}")]
    BadResponse(&'static str),
    #[error("upstream switched protocols unasked")]
    UnexpectedSwitch,
    /// A new connection closed (or reset) before any byte of the response.
    #[error("upstream closed a new connection without answering: {0}")]
    NoAnswer(#[source] Box<SendError>),
}

impl SendError {
    /// No connection was made: nothing of the request reached the
    /// upstream, so any request may go to another replica.
    pub(crate) fn unsent(&self) -> bool {
        matches!(
            self,
            SendError::Connect { .. } | SendError::ConnectTimeout { .. }
        )
    }

    /// The upstream refused the connection, or closed a new one before
    /// answering: a sign it is down (passive health), and an idempotent
    /// request may go to another replica.
    pub(crate) fn refused(&self) -> bool {
        self.unsent() || matches!(self, SendError::NoAnswer(_))
    }
}

/// A failed [`Pool::send`], with the request when it was not written
/// (so it can go to another replica, body untouched).
pub(crate) type Failed = (SendError, Option<Request<UpBody>>);

/// The body of a request sent upstream: the client's, or none (a
/// bodiless request sent again to another replica).
#[derive(Debug)]
pub(crate) enum UpBody {
    Client(Incoming),
    Empty,
    /// The client's body read whole first (see `policy.rs`, `max_body`).
    Full(Option<bytes::Bytes>),
}

impl http_body::Body for UpBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            UpBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(b) => b.is_end_stream(),
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpBody::Client(b) => b.size_hint(),
            UpBody::Empty => http_body::SizeHint::with_exact(0),
            UpBody::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One upstream connection: the request sender and the connection future
/// (`None` once it has ended).
pub(crate) struct UpConn {
    tx: SendRequest<UpBody>,
    conn: Option<ConnFuture>,
}

impl UpConn {
    /// Lets the connection make progress; true once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => match c.as_mut().poll(cx) {
                Poll::Pending => false,
                Poll::Ready(r) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream connection ended with error");
                    }
                    self.conn = None;
                    true
                }
            },
        }
    }

    /// Waits until a request can be sent; false if the connection is dead.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.tx.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

/// Upstream ids are small integers from the registry: no need to hash.
#[derive(Default, Clone, Copy)]
struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdBuild = std::hash::BuildHasherDefault<IdHash>;

struct Idle {
    up: UpConn,
    since: Instant,
}

/// An idle connection of the fast path (`fast.rs`).
struct RawIdle {
    conn: RawConn,
    since: Instant,
}

/// The connections of one upstream.
struct Entry {
    /// The pool's own copy: cloning the route table's copy on every request
    /// would bounce its reference count between threads.
    authority: Authority,
    idle: Vec<Idle>,
    raw_idle: Vec<RawIdle>,
    last_used: Instant,
}

/// Keep-alive connections by upstream id (see `Registry::upstream_id`).
pub(crate) struct Pool {
    entries: Mutex<HashMap<u64, Entry, IdBuild>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// What the fast path gets from [`Pool::checkout_raw`].
pub(crate) enum RawCheckout {
    Idle(RawConn),
    Connect(Authority),
    Unknown,
}

enum Checkout {
    Idle(UpConn),
    Connect(Authority),
    Unknown,
}

/// A connection lent to one request; give it back with [`Pooled::release`].
pub(crate) struct Pooled {
    up: UpConn,
    id: u64,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("upstream", &self.id)
            .finish()
    }
}

impl Pooled {
    /// Drives the connection while its response body is read; true once
    /// the connection has ended.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.up.drive(cx)
    }

    /// Hands the connection to a task of its own (after a 101, so that the
    /// upgrade completes); it is not reused.
    pub(crate) fn detach(self) {
        if let Some(conn) = self.up.conn {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended with error");
                }
            });
        }
    }

    /// Returns the connection to its pool (its response is fully read).
    pub(crate) fn release(self) {
        if self.up.conn.is_none() || self.up.tx.is_closed() {
            return;
        }
        let mut entries = lock(&self.pool.entries);
        if let Some(e) = entries.get_mut(&self.id) {
            if e.idle.len() < MAX_IDLE_PER_UPSTREAM {
                let now = Instant::now();
                e.last_used = now;
                e.idle.push(Idle {
                    up: self.up,
                    since: now,
                });
            }
        }
    }
}

/// A new connection ended (closed or reset) without a whole response
/// head: the upstream is going away (not the client's body failing).
fn dropped(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    !e.is_user()
        && (e.is_incomplete_message() || e.source().is_some_and(|s| s.is::<std::io::Error>()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            entries: Mutex::new(HashMap::default()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Makes sure the pool knows upstream `id` (call before `send`).
    pub(crate) fn prepare(&self, id: u64, authority: &Authority) {
        lock(&self.entries).entry(id).or_insert_with(|| Entry {
            authority: Authority::try_from(authority.as_str().as_bytes())
                .unwrap_or_else(|_| authority.clone()),
            idle: Vec::new(),
            raw_idle: Vec::new(),
            last_used: Instant::now(),
        });
    }

    /// The most recently used live connection to `id`, or what to dial.
    fn checkout(&self, id: u64) -> Checkout {
        let mut entries = lock(&self.entries);
        let Some(e) = entries.get_mut(&id) else {
            return Checkout::Unknown;
        };
        let now = Instant::now();
        e.last_used = now;
        while let Some(i) = e.idle.pop() {
            if !i.up.tx.is_closed() && now.duration_since(i.since) < self.idle_timeout {
                return Checkout::Idle(i.up);
            }
        }
        Checkout::Connect(e.authority.clone())
    }

    /// The most recently used idle fast-path connection to `id` (none if
    /// `fresh`), or what to dial.
    pub(crate) fn checkout_raw(&self, id: u64, fresh: bool) -> RawCheckout {
        let mut entries = lock(&self.entries);
        let Some(e) = entries.get_mut(&id) else {
            return RawCheckout::Unknown;
        };
        let now = Instant::now();
        e.last_used = now;
        if !fresh {
            while let Some(i) = e.raw_idle.pop() {
                if now.duration_since(i.since) < self.idle_timeout {
                    return RawCheckout::Idle(i.conn);
                }
            }
        }
        RawCheckout::Connect(e.authority.clone())
    }

    /// Returns a fast-path connection whose response was read to the end.
    pub(crate) fn release_raw(&self, id: u64, conn: RawConn) {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get_mut(&id) {
            if e.raw_idle.len() < MAX_IDLE_PER_UPSTREAM {
                let now = Instant::now();
                e.last_used = now;
                e.raw_idle.push(RawIdle { conn, since: now });
            }
        }
    }

    /// Drops the idle fast-path connections to `id` (one turned out stale).
    pub(crate) fn forget_raw_idle(&self, id: u64) {
        if let Some(e) = lock(&self.entries).get_mut(&id) {
            e.raw_idle.clear();
        }
    }

    /// Drops idle connections that are closed or idle for too long. Idle
    /// connections are not otherwise polled: each is polled once here (with
    /// a no-op waker) so one the upstream closed is noticed and released.
    pub(crate) fn reap(&self) {
        let mut entries = lock(&self.entries);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for e in entries.values_mut() {
            e.idle.retain_mut(|i| {
                let ended = i.up.drive(&mut cx);
                !ended && !i.up.tx.is_closed() && i.since.elapsed() < self.idle_timeout
            });
            e.raw_idle
                .retain(|i| i.since.elapsed() < self.idle_timeout && i.conn.looks_alive());
        }
        // an upstream unused for a while (its deployment is gone) is forgotten
        entries.retain(|_, e| {
            !e.idle.is_empty()
                || !e.raw_idle.is_empty()
                || e.last_used.elapsed() < self.idle_timeout
        });
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    async fn connect(&self, key: &Authority) -> Result<UpConn, SendError> {
        let stream = self.connect_tcp(key).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(UpConn {
            tx,
            conn: Some(Box::pin(conn.with_upgrades())),
        })
    }

    /// A new TCP connection to `key` (no delay), within the connect timeout.
    pub(crate) async fn connect_tcp(
        &self,
        key: &Authority,
    ) -> Result<tokio::net::TcpStream, SendError> {
        let upstream = key.as_str();
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(upstream),
        )
        .await
        .map_err(|_| SendError::ConnectTimeout {
            upstream: upstream.to_string(),
        })?
        .map_err(|source| SendError::Connect {
            upstream: upstream.to_string(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends `req` (origin-form URI) to upstream `id` (see [`Pool::prepare`])
    /// on a pooled or new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        id: u64,
        mut req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Pooled), Failed> {
        loop {
            let (fresh, mut up) = match self.checkout(id) {
                Checkout::Idle(up) => (false, up),
                Checkout::Connect(authority) => match Box::pin(self.connect(&authority)).await {
                    Ok(up) => (true, up),
                    Err(e) => return Err((e, Some(req))),
                },
                Checkout::Unknown => return Err((SendError::Closed, None)),
            };
            if !up.ready().await {
                if fresh {
                    let e = SendError::NoAnswer(Box::new(SendError::Closed));
                    return Err((e, Some(req)));
                }
                continue;
            }
            let mut sent = std::pin::pin!(up.tx.try_send_request(req));
            let res = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                up.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match res {
                Ok(resp) => return Ok((resp, self.lend(id, up))),
                Err(mut e) => match e.take_message() {
                    // not written: the connection died while idle
                    Some(r) if !fresh => req = r,
                    // not written, and a new connection died: the
                    // upstream is going away
                    Some(r) => {
                        let e = SendError::NoAnswer(Box::new(e.into_error().into()));
                        return Err((e, Some(r)));
                    }
                    None => {
                        let e = e.into_error();
                        let e = if fresh && dropped(&e) {
                            SendError::NoAnswer(Box::new(e.into()))
                        } else {
                            e.into()
                        };
                        return Err((e, None));
                    }
                },
            }
        }
    }

    fn lend(self: &Arc<Self>, id: u64, up: UpConn) -> Pooled {
        Pooled {
            up,
            id,
            pool: self.clone(),
        }
    }
}

//! berth-edge: berth's data plane, an HTTP reverse proxy that routes by Host.
//!
//! The control plane (the server crate) pushes [`RouteChange`]s with
//! [`Edge::apply`]; clients are served by [`Edge::serve`] on a listener.
//! This crate never reads berth's store and depends on no other berth crate.
//!
//! ```text
//! client ──> front (hand-written h1: bodiless GET/HEAD/OPTIONS) ─────────────┐
//!              └─ anything else: hand-over ─> ScanIo (framing check) ─> hyper (h1/h2c) ─> proxy::handle
//!                                                                            │
//!   RouteTable (ArcSwap, lock-free load) ─ host ─> Route ─ Picker ─> RouteTarget
//!     └─ Pool (one per serve loop): h1 keep-alive ─> 127.0.0.1:<port>  (fast.rs or hyper's client)
//! ```
//!
//! Code map: `h1/` the HTTP/1 rules every path uses (limits, hop-by-hop
//! headers, `Content-Length`/`Transfer-Encoding` framing, the one chunked
//! decoder; a property test against hyper); `front.rs` the client side of
//! the common request (a
//! hand-written HTTP/1.1 server loop for bodiless `GET`/`HEAD`/`OPTIONS`,
//! keep-alive and pipelined, which hands the connection to hyper, with the
//! bytes already read, at the first request it does not take); `proxy.rs`
//! the request path behind hyper, and the routing, pages and error
//! accounting both paths share; `scan.rs` the smuggling guard on the
//! client socket (hyper's side); `fast.rs` the hand-written HTTP/1.1
//! upstream client of bodiless `GET`/`HEAD`/`OPTIONS` requests (anything
//! else, upgrades included, goes through hyper's client); `pool.rs`
//! upstream connections; `body.rs` the response
//! body (in-flight accounting, abort, connection return); `splice.rs`
//! upgraded connections and their clean close; `target.rs` in-flight state
//! and drain; `table.rs`/`select.rs`/`route.rs` routes; `metrics.rs` and
//! `stats.rs` (typed per-target counters for canary judgement); `trace.rs`
//! W3C trace context; `sticky.rs` sticky canary visitors (cookie, pin
//! values); `policy.rs` a route's edge policies (allow, rate limit,
//! body limit, basic auth, maintenance) and, edge-wide, the tarpit of 429s
//! and connection admission of addresses over a limit; `observe.rs` per-request records and the access log;
//! `otlp.rs` the span exporter.
//!
//! # API
//! * [`Edge::new`]`(EdgeConfig) -> Result<Edge, EdgeError>`: loads the routes
//!   file if it exists, so a restarted berth serves its last routes at once.
//! * [`Edge::serve`]`(listener, shutdown)`: HTTP/1.1 keep-alive and HTTP/2
//!   (h2c prior knowledge) towards clients; on `shutdown` stops accepting and
//!   finishes in-flight requests. Works on any runtime; on a multi-threaded
//!   one, requests and upstream connections may hop between threads.
//! * [`Edge::serve_threads`]`(addr, threads, shutdown) -> io::Result<ServeHandle>`:
//!   the fast path. `threads` worker threads, each with a single-threaded
//!   runtime, its own `SO_REUSEPORT` listener and its own upstream pool;
//!   [`ServeHandle::wait`] resolves when they have all stopped.
//!   [`Edge::serve_listeners`]`(listeners, shutdown)` does the same on
//!   sockets already listening (handed over by the previous berth process).
//! * [`Edge::serve_tls`]`(listener, TlsCerts, shutdown)`: HTTPS (see
//!   `tls.rs`): TLS 1.2/1.3, certificate by SNI, ALPN h2/http1.1, then the
//!   same request paths as [`Edge::serve`]; [`Edge::serve_tls_threads`] and
//!   [`Edge::serve_tls_listeners`] are its worker-thread forms (as
//!   [`Edge::serve_threads`] for plain HTTP); [`Edge::set_acme_challenge`]
//!   answers ACME HTTP-01 tokens on every listener, before routing.
//! * [`Edge::set_https`]`(port, TlsCerts, hsts)`: with HTTPS on, plain
//!   requests for a routed hostname with a certificate get 308 to HTTPS
//!   (ACME challenge paths excepted), and HTTPS answers carry HSTS.
//! * [`Edge::apply`]`(Vec<RouteChange>) -> Result<(), RouteError>`.
//! * [`Edge::routes`]`() -> Vec<(String, RouteSpec)>` sorted by host.
//! * [`Edge::drain`]`(target_id, timeout) -> DrainReport`,
//!   [`Edge::inflight`]`(target_id) -> usize`.
//! * [`Edge::metrics_text`]`() -> String` (Prometheus text format).
//!
//! # Invariants
//! * **Atomic batches.** `apply` validates every change first; one invalid
//!   change refuses the batch and the old table keeps serving. A valid batch
//!   builds a new immutable table, persists it (temp file, fsync, rename),
//!   and only then swaps it in. A request sees one whole table, never half.
//! * **Target identity is its id.** In-flight counters and metrics of a
//!   target id survive table swaps; its state is dropped only when no table
//!   references it and no request runs on it.
//! * **In-flight accounting.** Incremented before forwarding, decremented
//!   when the response body ends or is dropped (client gone) or when the
//!   proxy answers with an error status.
//! * **Never another app.** An unknown host gets 404 from the proxy itself;
//!   a route without a usable target gets 503; a refused upstream 502; no
//!   response headers within `upstream_timeout` 504. Proxy error responses
//!   keep the client connection alive, and the 502/504 ones name the
//!   deployment that failed to answer (`TargetSpec::deployment_id` and the
//!   first 7 characters of `TargetSpec::sha`), never its address; a client
//!   whose `Accept` names `application/json` gets them as JSON (`status`,
//!   `error`, `deploymentId`, `commit`).
//! * **Headers.** `X-Forwarded-For` (client IP), `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are always set by the proxy, replacing client values.
//!   Hop-by-hop headers and headers named in `Connection` are removed in
//!   both directions (`Upgrade` is kept for a WebSocket handshake).
//!   `x-berth-deployment` (a pin value, see `sticky.rs`) is never forwarded.
//! * **Trace context** (`trace.rs`). Every forwarded request carries one
//!   valid W3C `traceparent` whose parent is the edge's span: a valid
//!   incoming one keeps its trace id and flags (and its `tracestate`); an
//!   absent, malformed or repeated one is replaced by a new trace, and its
//!   `tracestate` dropped.
//! * **Request smuggling.** A request with both `Content-Length` and
//!   `Transfer-Encoding`, or with conflicting `Content-Length` values, gets
//!   400 and the connection closed; nothing of it is forwarded. So does a
//!   request whose body turns out malformed while it is forwarded (bad
//!   chunk framing): 400, `Connection: close`, counted as a 4xx. The
//!   hand-written path (`front.rs`) takes no request that has either
//!   header (nor an upgrade, `Expect`, or anything it does not parse):
//!   those go to hyper from their first byte on. hyper hides
//!   `Content-Length` when `Transfer-Encoding` is present, so the client
//!   socket is wrapped in a framing scanner (`scan.rs`) that parses each
//!   request head as hyper reads it and follows body framing to the next
//!   head (pipelining and keep-alive included); a non-chunked final
//!   `Transfer-Encoding` gets 400 from hyper.
//! * **Drain.** [`Edge::drain`] closes the target's upgraded connections at
//!   once: a WebSocket gets, in each direction, the end of the frame in
//!   flight (frame headers are followed as bytes pass, see `splice.rs`), then
//!   a close frame with status 1001 "going away" (masked towards the
//!   upstream), then a TCP shutdown; other upgraded protocols are shut down.
//!   It then waits for the target's in-flight requests, and at the deadline
//!   aborts those left: 504 if no response had started, otherwise the
//!   response stream is cut.
//! * **Upstream connections.** Each serve loop has its own pool; a
//!   connection serves one request at a time, is driven by the task of the
//!   client connection that borrows it (no task of its own), and returns to
//!   the pool only after its response body was read to the end (and, on the
//!   fast path, only if it was framed by length or chunks and the upstream
//!   did not ask to close). A pooled connection found closed before any
//!   response byte arrived is retried once on a fresh connection for
//!   idempotent requests (fast path: the only ones it takes; hyper path:
//!   when the request was not written yet), so an upstream's idle timeout
//!   never turns into a 502.
//! * **Weights.** A target of weight `w` in a route of total weight `W` gets
//!   exactly `w` of every `W` consecutive requests, evenly spread (see
//!   `select.rs`); picking is lock-free. On a route under canary (weighted
//!   targets of two deployments or more) a request with a valid pin value
//!   or sticky cookie goes to its deployment without taking a ticket, so
//!   the weights hold for new visitors (see `sticky.rs`).
//! * **Replicas.** Targets with the same `TargetSpec::deployment_id` are
//!   replicas of one deployment: the weights choose the deployment, then
//!   [`Balance`] the replica (`Route::settle`), skipping those marked down.
//!   A target that refuses a connection, or closes a new one before any
//!   answer, is marked down at once (passive health) and the request goes
//!   to another replica of the same deployment that is up, at most once
//!   per replica: always when nothing was written, and for a bodiless
//!   idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) even when it
//!   was; a request whose body was sent is never sent twice (502).
//!   [`Edge::report_health`] (the control plane's probes) clears or sets
//!   a mark; an unreported mark lapses after 30 s.
//! * **Records off the request path.** The access log and spans are handed
//!   over with `try_send` on bounded queues (full: dropped and counted);
//!   with both off no record is made (see `observe.rs`).

mod body;
mod fast;
mod front;
mod h1;
mod metrics;
mod observe;
mod otlp;
mod persist;
mod policy;
mod pool;
mod proxy;
mod route;
mod scan;
mod select;
mod splice;
mod stats;
mod sticky;
mod table;
mod target;
mod tls;
mod trace;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use body::ProxyBody;
pub use observe::{AccessLogConfig, AccessLogTarget};
pub use otlp::{OtlpConfig, OtlpError};
pub use persist::LoadError;
pub use policy::{
    basic_auth_digest, Policy, FLAGGED_CONNS, PARK_PER_CLIENT, PARK_TOTAL, TARPIT_MAX,
};
pub use route::{RouteChange, RouteError, RouteSpec, TargetSpec};
pub use select::Balance;
pub use stats::TargetStats;
pub use sticky::{COOKIE as STICKY_COOKIE, PIN_HEADER};
pub use target::DrainReport;
pub use tls::{certified_key, Issuer, TlsCerts, TlsError, ACME_CHALLENGE_PREFIX};

use table::RouteTable;
use target::Registry;

/// A worker's socket before its runtime runs: bound, or already listening.
enum Unlistened {
    Socket(tokio::net::TcpSocket),
    Listener(std::net::TcpListener),
}

impl Unlistened {
    /// The listener (on the calling thread's runtime).
    fn listen(self) -> std::io::Result<tokio::net::TcpListener> {
        match self {
            Unlistened::Socket(s) => s.listen(1024),
            Unlistened::Listener(l) => tokio::net::TcpListener::from_std(l),
        }
    }
}

/// What the worker threads of [`Edge::serve_on`] speak to clients.
#[derive(Clone)]
enum Mode {
    Plain,
    /// One configuration for every worker: they share its session cache
    /// and ticket keys, so a client resumes on whichever worker it reaches.
    Tls(Arc<rustls::ServerConfig>),
}

/// Listening sockets opened elsewhere, made ready for the worker threads;
/// and the address they listen on.
fn unlistened(
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<(Vec<Unlistened>, SocketAddr)> {
    let Some(first) = listeners.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no listener to serve on",
        ));
    };
    let addr = first.local_addr()?;
    let sockets = listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            Ok(Unlistened::Listener(l))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((sockets, addr))
}

/// The worker threads started by [`Edge::serve_threads`].
#[derive(Debug)]
pub struct ServeHandle {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ServeHandle {
    /// The address every worker listens on (the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting now, as if the `shutdown` future had resolved.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Resolves once every worker has stopped and finished its in-flight
    /// requests (after `shutdown`).
    pub async fn wait(self) {
        for d in self.done {
            let _ = d.await;
        }
    }

    /// Blocking form of [`ServeHandle::wait`], for use outside a runtime.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Settings of the edge proxy.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Where the last applied routes are persisted; `None` keeps them in
    /// memory only.
    pub routes_file: Option<PathBuf>,
    /// TCP connect timeout towards an upstream (502 when exceeded).
    pub connect_timeout: Duration,
    /// No response headers from the upstream by then: 504 (checked on a
    /// tick of a eighth of it, between 10 ms and 1 s, so up to a tick late).
    pub upstream_timeout: Duration,
    /// Value of `X-Forwarded-Proto` (`"http"` on the plain listener).
    pub proto: &'static str,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Slow-loris guard: a client must send request headers within this.
    pub header_read_timeout: Duration,
    /// The key of the sticky canary cookie and of pin values (see
    /// `sticky.rs`), created when absent; `None` keeps a random key in
    /// memory (cookies given before a restart are then ignored).
    pub pin_key_file: Option<PathBuf>,
    /// One JSON line per proxied request (see `observe.rs`); `None`: off.
    pub access_log: Option<AccessLogConfig>,
    /// Spans exported over OTLP/HTTP (see `otlp.rs`); `None`: off.
    pub otlp: Option<OtlpConfig>,
    /// How a request chooses among a deployment's replicas.
    pub balance: Balance,
    /// 429s of one client address the tarpit holds back at a time (see
    /// `policy.rs`); past it they leave at once with `Connection: close`.
    pub tarpit_per_client: u32,
    /// 429s the tarpit holds back at a time, all addresses together.
    pub tarpit_total: u32,
    /// Connections an address answered a 429 may open until its
    /// `Retry-After` has passed; past it a new one is closed right after
    /// accept (see `policy::Admission`).
    pub flagged_conns_per_client: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            routes_file: None,
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            proto: "http",
            pool_idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            pin_key_file: None,
            access_log: None,
            otlp: None,
            balance: Balance::default(),
            tarpit_per_client: PARK_PER_CLIENT,
            tarpit_total: PARK_TOTAL,
            flagged_conns_per_client: FLAGGED_CONNS,
        }
    }
}

/// Why the edge could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("persisted routes are invalid: {0}")]
    InvalidPersisted(#[source] RouteError),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    #[error("cannot read or create the edge key {path}: {source}")]
    PinKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The edge proxy; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) table: ArcSwap<RouteTable>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pub(crate) upstream_timeout: Duration,
    pub(crate) proto: &'static str,
    pub(crate) unknown_host: AtomicU64,
    pub(crate) no_target: AtomicU64,
    /// Requests sent to another replica after theirs refused them.
    pub(crate) retried: AtomicU64,
    /// Targets taken out of rotation by a refused request.
    pub(crate) marked_down: AtomicU64,
    balance: Balance,
    pub(crate) registry: Registry,
    routes_file: Option<PathBuf>,
    header_read_timeout: Duration,
    /// Serialises writers (`apply`); readers never take it.
    apply_lock: Mutex<()>,
    /// Pending ACME HTTP-01 answers (see `tls.rs`).
    acme: tls::Challenges,
    /// With HTTPS on: the 308 of plain requests and HSTS (see `tls.rs`).
    pub(crate) https: std::sync::OnceLock<tls::Upgrade>,
    /// Signs the sticky cookie and pin values.
    pin_key: sticky::PinKey,
    /// The access log and the span export; `None` when both are off.
    pub(crate) observers: Option<Arc<observe::Observers>>,
    /// Where 429s wait before they are written (see `policy.rs`).
    pub(crate) tarpit: policy::Tarpit,
    /// Which addresses over a rate limit may open another connection (see
    /// `policy.rs`).
    pub(crate) admission: policy::Admission,
}

/// What one `serve` loop shares with its connections.
pub(crate) struct Worker {
    pub(crate) inner: Arc<Inner>,
    /// This loop's upstream connections: on a single-threaded runtime every
    /// pooled connection is used by the thread that owns it.
    pub(crate) pool: Arc<pool::Pool>,
    /// Rung when a drain deadline aborts requests (see `target.rs`).
    pub(crate) bell: Arc<tokio::sync::Notify>,
    /// Client connections: hyper's settings and the shutdown signal.
    pub(crate) front: front::Shared,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("routes", &self.inner.table.load().specs.len())
            .finish()
    }
}

/// Returns once no request still reads the replaced `table` (bounded by
/// 100 ms). A request routes and counts itself in flight on its target
/// while it holds its snapshot, so after this no request can pick a target
/// that the new table dropped without being counted: a drain that starts
/// after `apply` sees every request it must wait for. `ArcSwap::store`
/// turns the readers' borrowed snapshots into counted references, so the
/// strong count is exact.
fn wait_for_readers(table: &Arc<RouteTable>) {
    let deadline = std::time::Instant::now() + Duration::from_millis(100);
    while Arc::strong_count(table) > 1 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
}

impl Edge {
    /// Creates the edge and loads the persisted routes, if any.
    pub fn new(cfg: EdgeConfig) -> Result<Edge, EdgeError> {
        let registry = Registry::default();
        let pin_key = match &cfg.pin_key_file {
            Some(p) => sticky::PinKey::load_or_create(p).map_err(|source| EdgeError::PinKey {
                path: p.display().to_string(),
                source,
            })?,
            None => sticky::PinKey::random(),
        };
        let mut observers = observe::Observers::default();
        if let Some(log) = &cfg.access_log {
            observers.log = Some(observe::LogSink::start(log.clone()).map_err(|source| {
                EdgeError::AccessLog {
                    path: match &log.target {
                        AccessLogTarget::Stdout => "-".into(),
                        AccessLogTarget::File(p) => p.display().to_string(),
                    },
                    source,
                }
            })?);
        }
        if let Some(otlp) = &cfg.otlp {
            observers.spans = Some(otlp::SpanSink::start(otlp)?);
        }
        let observers = (!observers.is_off()).then(|| Arc::new(observers));
        let specs = match &cfg.routes_file {
            Some(p) => match persist::load(p)? {
                Some(routes) => {
                    let changes = routes
                        .into_iter()
                        .map(|(host, route)| RouteChange::Upsert { host, route })
                        .collect();
                    route::validate_batch(&BTreeMap::new(), changes)
                        .map_err(EdgeError::InvalidPersisted)?
                }
                None => BTreeMap::new(),
            },
            None => BTreeMap::new(),
        };
        let table = RouteTable::build(specs, &registry, &pin_key, cfg.balance);

        Ok(Edge {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                connect_timeout: cfg.connect_timeout,
                pool_idle_timeout: cfg.pool_idle_timeout,
                upstream_timeout: cfg.upstream_timeout,
                proto: cfg.proto,
                unknown_host: AtomicU64::new(0),
                no_target: AtomicU64::new(0),
                retried: AtomicU64::new(0),
                marked_down: AtomicU64::new(0),
                balance: cfg.balance,
                registry,
                routes_file: cfg.routes_file,
                header_read_timeout: cfg.header_read_timeout,
                apply_lock: Mutex::new(()),
                acme: tls::Challenges::default(),
                https: std::sync::OnceLock::new(),
                pin_key,
                observers,
                tarpit: policy::Tarpit::with_limits(cfg.tarpit_per_client, cfg.tarpit_total),
                admission: policy::Admission::new(cfg.flagged_conns_per_client),
            }),
        })
    }

    /// One worker's shared state for a listener: its upstream pool, the
    /// coarse clock of the upstream timeouts (see `target::wait_stop`) and
    /// the pool's idle reaper. Abort the two tasks when the listener stops.
    pub(crate) fn worker(
        &self,
    ) -> (
        Arc<Worker>,
        tokio::task::JoinHandle<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let worker = Arc::new(Worker {
            inner: self.inner.clone(),
            pool: Arc::new(pool::Pool::new(
                self.inner.connect_timeout,
                self.inner.pool_idle_timeout,
            )),
            bell: self.inner.registry.new_bell(),
            front: front::Shared::new(self.inner.header_read_timeout),
        });
        let tick = (self.inner.upstream_timeout / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let ticker = {
            let bell = Arc::downgrade(&worker.bell);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(tick);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match bell.upgrade() {
                        Some(b) => b.notify_waiters(),
                        None => return,
                    }
                }
            })
        };
        let reaper = {
            let pool = Arc::downgrade(&worker.pool);
            let every = (worker.pool.idle_timeout() / 2).max(Duration::from_secs(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match pool.upgrade() {
                        Some(p) => p.reap(),
                        None => return,
                    }
                }
            })
        };
        (worker, ticker, reaper)
    }

    /// Serves clients on `listener` until `shutdown` resolves, then stops
    /// accepting and waits for in-flight requests (upgraded connections are
    /// left to end on their own).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (worker, ticker, reaper) = self.worker();
        let conns = tokio_util::task::TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(admitted) = front::admit(&worker, stream, remote) else {
                        continue;
                    };
                    conns.spawn(front::serve(worker.clone(), admitted, remote));
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        worker.front.shut_down();
        conns.close();
        conns.wait().await;
        reaper.abort();
        ticker.abort();
        Ok(())
    }

    /// The fast path: serves clients on `addr` with `threads` worker threads,
    /// each running its own single-threaded tokio runtime with its own
    /// `SO_REUSEPORT` listener (the kernel spreads new connections among
    /// them) and its own upstream connection pool, so a request is handled
    /// from accept to response on one thread, without cross-thread
    /// wake-ups; the route table, in-flight counters and metrics stay shared.
    ///
    /// Every listener is bound before this returns (port 0 picks one port
    /// for all; see [`ServeHandle::local_addr`]). When `shutdown` resolves
    /// (it is polled on the first worker's runtime), every worker stops
    /// accepting and finishes its in-flight requests, as [`Edge::serve`]
    /// does; [`ServeHandle::wait`] resolves then. Callable from inside or
    /// outside a tokio runtime. Note that `SO_REUSEPORT` lets another
    /// process of the same user bind the same port.
    pub fn serve_threads(
        &self,
        addr: SocketAddr,
        threads: usize,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ServeHandle> {
        let (sockets, bind_to) = reuseport_sockets(addr, threads)?;
        self.serve_on(sockets, bind_to, Mode::Plain, shutdown)
    }

    /// [`Edge::serve_threads`] for HTTPS: `threads` worker threads, each
    /// with its own single-threaded runtime, `SO_REUSEPORT` listener and
    /// upstream pool, completing TLS handshakes and serving the connections
    /// it accepted (see [`Edge::serve_tls`]).
    pub fn serve_tls_threads(
        &self,
        addr: SocketAddr,
        threads: usize,
        certs: TlsCerts,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ServeHandle> {
        let (sockets, bind_to) = reuseport_sockets(addr, threads)?;
        self.serve_on(sockets, bind_to, Mode::Tls(certs.server_config()), shutdown)
    }

    /// [`Edge::serve_tls_threads`] on listening sockets opened elsewhere
    /// (see [`Edge::serve_listeners`]).
    pub fn serve_tls_listeners(
        &self,
        listeners: Vec<std::net::TcpListener>,
        certs: TlsCerts,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ServeHandle> {
        let (sockets, addr) = unlistened(listeners)?;
        self.serve_on(sockets, addr, Mode::Tls(certs.server_config()), shutdown)
    }

    /// [`Edge::serve_threads`] on listening sockets opened elsewhere (handed
    /// over by another process, see berth-server's `takeover`): one worker
    /// thread per listener, each accepting only on its own. Every listener
    /// must be accepted on: the kernel may queue a new connection on any
    /// socket of a `SO_REUSEPORT` group. Dropping a listener here (at
    /// shutdown) does not close the socket while a duplicate of its file
    /// descriptor stays open in this or another process.
    pub fn serve_listeners(
        &self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ServeHandle> {
        let (sockets, addr) = unlistened(listeners)?;
        self.serve_on(sockets, addr, Mode::Plain, shutdown)
    }

    fn serve_on(
        &self,
        sockets: Vec<Unlistened>,
        bind_to: SocketAddr,
        mode: Mode,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<ServeHandle> {
        let threads = sockets.len();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut shutdown: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> =
            Some(Box::pin(shutdown));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let mut done = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for (i, socket) in sockets.into_iter().enumerate() {
            let edge = self.clone();
            let mode = mode.clone();
            let worker_stop = stop.clone();
            let ready = ready_tx.clone();
            let shutdown = shutdown.take();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            done.push(done_rx);
            let spawned = std::thread::Builder::new()
                .name(format!("berth-edge-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match socket.listen() {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        };
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        if let Some(shutdown) = shutdown {
                            let stop = worker_stop.clone();
                            tokio::spawn(async move {
                                shutdown.await;
                                stop.cancel();
                            });
                        }
                        let served = match mode {
                            Mode::Plain => {
                                edge.serve(listener, worker_stop.cancelled_owned()).await
                            }
                            Mode::Tls(config) => {
                                edge.serve_tls_with(listener, config, worker_stop.cancelled_owned())
                                    .await
                            }
                        };
                        if let Err(e) = served {
                            tracing::error!(error = %e, "edge worker stopped");
                        }
                    });
                    let _ = done_tx.send(());
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.cancel();
                    return Err(e);
                }
                Err(_) => {
                    stop.cancel();
                    return Err(std::io::Error::other("an edge worker thread ended early"));
                }
            }
        }
        Ok(ServeHandle {
            addr: bind_to,
            stop,
            done,
            threads: handles,
        })
    }

    /// Applies a batch of changes atomically (see the crate invariants).
    pub fn apply(&self, changes: Vec<RouteChange>) -> Result<(), RouteError> {
        let _writer = self
            .inner
            .apply_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = self.inner.table.load_full();
        let next = route::validate_batch(&current.specs, changes)?;
        if let Some(path) = &self.inner.routes_file {
            persist::save(path, &next).map_err(|source| RouteError::Persist {
                path: path.display().to_string(),
                source,
            })?;
        }
        let table = RouteTable::build(
            next,
            &self.inner.registry,
            &self.inner.pin_key,
            self.inner.balance,
        );
        self.inner.table.store(Arc::new(table));
        wait_for_readers(&current);
        drop(current);
        self.inner.registry.prune();
        Ok(())
    }

    /// The pin value of a deployment: sent as the [`PIN_HEADER`] header (or
    /// as the value of the [`STICKY_COOKIE`] cookie), it sends a request of
    /// a route under canary to that deployment (see `sticky.rs`).
    pub fn pin_value(&self, deployment_id: &str) -> String {
        self.inner.pin_key.value(deployment_id)
    }

    /// The current routes, sorted by host.
    pub fn routes(&self) -> Vec<(String, RouteSpec)> {
        self.inner
            .table
            .load()
            .specs
            .iter()
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect()
    }

    /// Drains a target the caller has already removed from the routes.
    pub async fn drain(&self, target_id: &str, timeout: Duration) -> DrainReport {
        match self.inner.registry.find_target(target_id) {
            Some(t) => target::drain(&t, timeout, &self.inner.registry).await,
            None => DrainReport::default(),
        }
    }

    /// A health probe's verdict on a target (an unknown id is ignored):
    /// healthy puts a target that a refused request took out of rotation
    /// back at once; unhealthy takes it out (its route keeps it, so it
    /// still serves when every replica of its deployment is down).
    pub fn report_health(&self, target_id: &str, healthy: bool) {
        if let Some(t) = self.inner.registry.find_target(target_id) {
            if healthy {
                t.mark_up();
            } else {
                t.mark_down();
            }
        }
    }

    /// True while a target is out of rotation after a refused request or
    /// an unhealthy probe report (false for an unknown id).
    pub fn is_down(&self, target_id: &str) -> bool {
        self.inner
            .registry
            .find_target(target_id)
            .is_some_and(|t| t.is_down())
    }

    /// Requests currently running on a target (0 for an unknown id).
    pub fn inflight(&self, target_id: &str) -> usize {
        self.inner
            .registry
            .find_target(target_id)
            .map_or(0, |t| t.inflight())
    }

    /// The edge's metric families in the OpenMetrics text format, without
    /// the closing `# EOF` (the page that includes them adds it after its
    /// own): a counter's family is declared without `_total`, its samples
    /// carry it (`# TYPE berth_edge_requests counter`,
    /// `berth_edge_requests_total{...} 5`).
    pub fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(4096);
        let series = self.inner.registry.live_series();
        out.push_str("# HELP berth_edge_requests Requests proxied, by host, target and status class.\n# TYPE berth_edge_requests counter\n");
        for s in &series {
            s.render_requests(&mut out);
        }
        out.push_str("# HELP berth_edge_request_duration_seconds Time until response headers, by host and target.\n# TYPE berth_edge_request_duration_seconds histogram\n");
        for s in &series {
            s.render_latency(&mut out);
        }
        let targets = self.inner.registry.live_targets();
        out.push_str("# HELP berth_edge_inflight_requests Requests in flight, by target.\n# TYPE berth_edge_inflight_requests gauge\n");
        for t in &targets {
            let _ = writeln!(
                out,
                "berth_edge_inflight_requests{{target=\"{}\"}} {}",
                metrics::escape(&t.id),
                t.inflight()
            );
        }
        out.push_str("# HELP berth_edge_upgraded_connections Upgraded (WebSocket) connections open, by target.\n# TYPE berth_edge_upgraded_connections gauge\n");
        for t in &targets {
            let _ = writeln!(
                out,
                "berth_edge_upgraded_connections{{target=\"{}\"}} {}",
                metrics::escape(&t.id),
                t.upgraded()
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_edge_unknown_host Requests for a host without a route (404).\n# TYPE berth_edge_unknown_host counter\nberth_edge_unknown_host_total {}",
            self.inner.unknown_host.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_no_target Requests for a route without a usable target (503).\n# TYPE berth_edge_no_target counter\nberth_edge_no_target_total {}",
            self.inner.no_target.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_retried Requests sent to another replica after theirs refused the connection.\n# TYPE berth_edge_retried counter\nberth_edge_retried_total {}",
            self.inner.retried.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_passive_down Targets taken out of rotation because a request found them refusing connections.\n# TYPE berth_edge_passive_down counter\nberth_edge_passive_down_total {}",
            self.inner.marked_down.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_rate_limited Requests answered 429 because their client address was over the route's rate limit.\n# TYPE berth_edge_rate_limited counter\nberth_edge_rate_limited_total {}",
            self.inner.tarpit.refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_rate_limited_closed 429s answered at once with the connection closed, because the tarpit held as many of their address's (or all) requests as allowed.\n# TYPE berth_edge_rate_limited_closed counter\nberth_edge_rate_limited_closed_total {}",
            self.inner.tarpit.full.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_edge_connections_refused Connections closed right after accept, unread, because their address was over a rate limit and held as many connections as allowed.\n# TYPE berth_edge_connections_refused counter\nberth_edge_connections_refused_total {}",
            self.inner.admission.refused.load(Ordering::Relaxed)
        );
        if let Some(o) = &self.inner.observers {
            if let Some(n) = o.dropped_lines() {
                let _ = writeln!(
                    out,
                    "# HELP berth_edge_access_log_dropped Access log lines dropped because the writer fell behind.\n# TYPE berth_edge_access_log_dropped counter\nberth_edge_access_log_dropped_total {n}"
                );
            }
            if let Some(s) = &o.spans {
                let _ = writeln!(
                    out,
                    "# HELP berth_edge_spans_dropped Spans dropped because the exporter fell behind.\n# TYPE berth_edge_spans_dropped counter\nberth_edge_spans_dropped_total {}",
                    s.dropped.load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

/// `threads` sockets bound to `addr` with `SO_REUSEPORT` (not yet
/// listening), one per worker; port 0 is resolved by the first and reused
/// by the others. Returns them with the address they are bound to.
fn reuseport_sockets(
    addr: SocketAddr,
    threads: usize,
) -> std::io::Result<(Vec<Unlistened>, SocketAddr)> {
    let threads = threads.max(1);
    let mut sockets = Vec::with_capacity(threads);
    let mut bind_to = addr;
    for _ in 0..threads {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bind_to)?;
        bind_to = socket.local_addr()?;
        sockets.push(Unlistened::Socket(socket));
    }
    Ok((sockets, bind_to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn apply_returns_after_readers_of_the_old_table_are_done() {
        let edge = Edge::new(EdgeConfig::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let released = Arc::new(AtomicBool::new(false));
        let reader = {
            let edge = edge.clone();
            let released = released.clone();
            std::thread::spawn(move || {
                // A request between routing and counting itself in flight.
                let snapshot = edge.inner.table.load();
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                released.store(true, Ordering::SeqCst);
                drop(snapshot);
            })
        };
        rx.recv().unwrap();
        edge.apply(vec![RouteChange::Remove {
            host: "gone.test".into(),
        }])
        .unwrap();
        assert!(
            released.load(Ordering::SeqCst),
            "apply returned while a request still read the old table"
        );
        reader.join().unwrap();
    }
}

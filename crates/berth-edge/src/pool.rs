//! Upstream HTTP/1.1 keep-alive connections, pooled per `serve` loop.
//!
//! Each `serve` loop (so each worker thread of `Edge::serve_threads`) owns
//! one [`Pool`]: a connection is created, used and reused on the runtime
//! that spawned its connection task, so a request never wakes another
//! thread. A connection is lent to one request at a time and comes back to
//! the pool only when its response body has been read to the end (see
//! `body.rs`); a response abandoned half-way drops the connection. A pooled
//! connection the upstream closed in the meantime is skipped, and a request
//! not yet written when its connection turned out dead is retried once on a
//! fresh connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

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
    #[error("upstream http: {0}")]
    Http(#[from] hyper::Error),
}

struct Idle {
    tx: SendRequest<Incoming>,
    since: Instant,
}

/// Keep-alive connections by upstream authority.
pub(crate) struct Pool {
    idle: Mutex<HashMap<Authority, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// A connection lent to one request; give it back with [`Pooled::release`].
pub(crate) struct Pooled {
    tx: SendRequest<Incoming>,
    key: Authority,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("upstream", &self.key)
            .finish()
    }
}

impl Pooled {
    /// Returns the connection to its pool (its response is fully read).
    pub(crate) fn release(self) {
        if self.tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.pool.idle);
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                tx: self.tx,
                since: Instant::now(),
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
        }
    }

    /// The pool's own copy of `key` (cloning the route table's copy on
    /// every request would bounce its reference count between threads) and
    /// the most recently used live connection to it, if any.
    fn checkout(&self, key: &Authority) -> (Authority, Option<SendRequest<Incoming>>) {
        let mut idle = lock(&self.idle);
        if !idle.contains_key(key) {
            let own = Authority::try_from(key.as_str().as_bytes()).unwrap_or_else(|_| key.clone());
            idle.insert(own, Vec::new());
        }
        let Some((own, _)) = idle.get_key_value(key) else {
            return (key.clone(), None);
        };
        let own = own.clone();
        let Some(list) = idle.get_mut(key) else {
            return (own, None);
        };
        while let Some(i) = list.pop() {
            if !i.tx.is_closed() && i.since.elapsed() < self.idle_timeout {
                return (own, Some(i.tx));
            }
        }
        (own, None)
    }

    /// Drops idle connections that are closed or idle for too long.
    pub(crate) fn reap(&self) {
        let mut idle = lock(&self.idle);
        for list in idle.values_mut() {
            list.retain(|i| !i.tx.is_closed() && i.since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    async fn connect(&self, key: &Authority) -> Result<SendRequest<Incoming>, SendError> {
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
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with error");
            }
        });
        Ok(tx)
    }

    /// Sends `req` (origin-form URI) to `key` on a pooled or new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        key: &Authority,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        loop {
            let (own, tx) = self.checkout(key);
            let Some(mut tx) = tx else {
                let mut tx = self.connect(key).await?;
                tx.ready().await?;
                let resp = tx.send_request(req).await?;
                return Ok((resp, self.lend(own, tx)));
            };
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lend(own, tx))),
                Err(mut e) => match e.take_message() {
                    // not written: the connection died while idle
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn lend(self: &Arc<Self>, key: Authority, tx: SendRequest<Incoming>) -> Pooled {
        Pooled {
            tx,
            key,
            pool: self.clone(),
        }
    }
}

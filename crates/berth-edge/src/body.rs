//! Response body sent to clients: either a small page made by the proxy or
//! the upstream body streamed frame by frame while holding the in-flight
//! guard of its target.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::fast::RawBody;
use crate::pool::Pooled;
use crate::target::InflightGuard;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the edge sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<Streaming>),
    Raw(Box<RawStreaming>),
}

/// An upstream body read by the fast path (`fast.rs`).
#[derive(Debug)]
struct RawStreaming {
    inner: RawBody,
    guard: Option<InflightGuard>,
    abort_gen: u64,
    bell: Arc<Notify>,
    abort_wait: Option<Pin<Box<OwnedNotified>>>,
}

#[derive(Debug)]
struct Streaming {
    inner: Incoming,
    /// Dropped (in-flight decremented) at end of stream or when the client
    /// goes away and hyper drops the body.
    guard: Option<InflightGuard>,
    /// The upstream connection, back to its pool at end of stream.
    conn: Option<Pooled>,
    /// Abort generation recorded at the start of the request.
    abort_gen: u64,
    /// The worker's abort bell (see `target::wait_abort`).
    bell: Arc<Notify>,
    /// Created lazily, the first time the upstream makes us wait.
    abort_wait: Option<Pin<Box<OwnedNotified>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("response aborted: target drain deadline passed")]
struct Aborted;

impl ProxyBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
        }
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn upstream(
        inner: Incoming,
        guard: InflightGuard,
        conn: Pooled,
        abort_gen: u64,
        bell: Arc<Notify>,
    ) -> ProxyBody {
        let mut s = Streaming {
            inner,
            guard: Some(guard),
            conn: Some(conn),
            abort_gen,
            bell,
            abort_wait: None,
        };
        if s.inner.is_end_stream() {
            s.finished();
        }
        ProxyBody {
            kind: Kind::Upstream(Box::new(s)),
        }
    }
}

/// Ready once the request's target was aborted (drain deadline); otherwise
/// registers for the worker's bell.
pub(crate) fn poll_aborted(
    guard: &Option<InflightGuard>,
    abort_gen: u64,
    bell: &Arc<Notify>,
    abort_wait: &mut Option<Pin<Box<OwnedNotified>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        let wait = abort_wait.get_or_insert_with(|| {
            let mut w = Box::pin(bell.clone().notified_owned());
            w.as_mut().enable();
            w
        });
        if guard
            .as_ref()
            .is_some_and(|g| g.target.is_aborted(abort_gen))
        {
            return Poll::Ready(());
        }
        match wait.as_mut().poll(cx) {
            // rung for some target: re-arm and check again
            Poll::Ready(()) => *abort_wait = None,
            Poll::Pending => return Poll::Pending,
        }
    }
}

impl ProxyBody {
    /// A body read by the fast path; holds the in-flight guard until its end.
    pub(crate) fn raw(
        inner: RawBody,
        guard: InflightGuard,
        abort_gen: u64,
        bell: Arc<Notify>,
    ) -> ProxyBody {
        let guard = if inner.is_end() { None } else { Some(guard) };
        ProxyBody {
            kind: Kind::Raw(Box::new(RawStreaming {
                inner,
                guard,
                abort_gen,
                bell,
                abort_wait: None,
            })),
        }
    }
}

impl Streaming {
    /// End of the upstream body: the request is over, the connection reusable.
    fn finished(&mut self) {
        self.guard = None;
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(s) => {
                if s.guard.is_none() {
                    return Poll::Ready(None);
                }
                let mut polled = Pin::new(&mut s.inner).poll_frame(cx);
                if polled.is_pending() {
                    if let Some(c) = &mut s.conn {
                        // the upstream connection runs in this task
                        c.drive(cx);
                        polled = Pin::new(&mut s.inner).poll_frame(cx);
                    }
                }
                match polled {
                    Poll::Ready(None) => {
                        s.finished();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        s.guard = None;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(g), Some(d)) = (&mut s.guard, f.data_ref()) {
                            g.add_bytes(d.len());
                        }
                        if s.inner.is_end_stream() {
                            s.finished();
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Pending => {
                        ready!(poll_aborted(
                            &s.guard,
                            s.abort_gen,
                            &s.bell,
                            &mut s.abort_wait,
                            cx
                        ));
                        s.guard = None;
                        s.conn = None;
                        Poll::Ready(Some(Err(Box::new(Aborted))))
                    }
                }
            }
            Kind::Raw(s) => {
                if s.guard.is_none() {
                    return Poll::Ready(None);
                }
                match s.inner.poll_data(cx) {
                    Poll::Ready(None) => {
                        s.guard = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        s.guard = None;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(Some(Ok(d))) => {
                        if let Some(g) = &mut s.guard {
                            g.add_bytes(d.len());
                        }
                        if s.inner.is_end() {
                            s.guard = None;
                        }
                        Poll::Ready(Some(Ok(Frame::data(d))))
                    }
                    Poll::Pending => {
                        ready!(poll_aborted(
                            &s.guard,
                            s.abort_gen,
                            &s.bell,
                            &mut s.abort_wait,
                            cx
                        ));
                        s.guard = None;
                        s.inner.abandon();
                        Poll::Ready(Some(Err(Box::new(Aborted))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(s) => s.guard.is_none() || s.inner.is_end_stream(),
            Kind::Raw(s) => s.guard.is_none() || s.inner.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(s) => s.inner.size_hint(),
            Kind::Raw(s) => match s.inner.exact_len() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

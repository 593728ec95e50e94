//! Hand-written HTTP/1.1 upstream client for the common request: a `GET`,
//! `HEAD` or `OPTIONS` without a body and without an upgrade (see `proxy.rs`
//! and `front.rs` for the exact tests; everything else goes through hyper in
//! `pool.rs`).
//!
//! The request head is written in one `write`, the response head is parsed
//! with `httparse` and handed, without hop-by-hop headers, to a [`HeadSink`]
//! (a `HeaderMap` for hyper's server side, raw bytes for `front.rs`), and
//! the body is read by `Content-Length`, the chunked encoding or until the
//! upstream closes (a `HEAD` response has none). Interim `1xx` heads are
//! skipped; a `101` is refused (no upgrade was asked).
//!
//! Invariants:
//! * A connection returns to the pool only after its response body was read
//!   to the end, it was framed by length or chunks, and the upstream did not
//!   ask to close (`Connection: close`, or HTTP/1.0 without `keep-alive`).
//! * A pooled connection that fails before any byte of the response arrived
//!   (the upstream closed it while idle) is retried once on a fresh
//!   connection, and only for idempotent requests; a new connection that
//!   fails so is `SendError::NoAnswer` (the proxy may try another replica);
//!   any other failure is an error (502). So is a `408` read on a pooled connection (some upstreams
//!   send one on a keep-alive connection they time out, then close it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h1::chunked::{BadChunk, Decoder};
use crate::h1::framing::{is_chunked, parse_length_list};
use crate::h1::hop::is_hop_by_hop;
use crate::h1::{MAX_HEAD, MAX_HEADERS};
use crate::pool::{Pool, RawCheckout, SendError};

/// Free room kept in the read buffer before each read.
const READ_ROOM: usize = 8 * 1024;

/// One upstream connection of the fast path and its unread bytes.
pub(crate) struct RawConn {
    io: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub(crate) fn new(io: TcpStream) -> RawConn {
        RawConn {
            io,
            buf: BytesMut::with_capacity(READ_ROOM),
        }
    }

    /// True if the idle connection shows no sign of being closed (checked
    /// without blocking; a close not yet seen is caught by the retry).
    pub(crate) fn looks_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(self.io.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at end of stream.
    /// (Through `AsyncRead`, which takes a short read as the socket being
    /// drained: the next call waits for readiness instead of trying a read
    /// that would fail with `EAGAIN`.)
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Decoder),
    Close,
}

/// Receives the response head as it is parsed: the status, then every
/// header to pass on (hop-by-hop headers and those named in `Connection`
/// are already left out).
pub(crate) trait HeadSink {
    /// A final response head starts; forget what an earlier one left.
    fn start(&mut self, status: StatusCode);
    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), SendError>;
}

/// A response head for hyper's server side.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    /// The headers to pass on: hop-by-hop ones and those named in
    /// `Connection` are already removed.
    pub(crate) headers: HeaderMap,
}

impl HeadSink for Head {
    fn start(&mut self, status: StatusCode) {
        self.status = status;
        self.headers.clear();
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(), SendError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SendError::BadResponse("bad header name"))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| SendError::BadResponse("bad header value"))?;
        self.headers.append(name, value);
        Ok(())
    }
}

/// The response body being read from a fast-path connection.
pub(crate) struct RawBody {
    conn: Option<RawConn>,
    framing: Framing,
    reuse: bool,
    id: u64,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("framing", &self.framing)
            .finish()
    }
}

/// Why a fast-path body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("upstream read: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before the end of the body")]
    Truncated,
    #[error("upstream body: {0}")]
    Chunk(#[from] BadChunk),
}

/// Appends `data` to `out` as one chunk of the chunked encoding.
fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = data.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

impl RawBody {
    pub(crate) fn is_end(&self) -> bool {
        self.conn.is_none()
    }

    /// Drops the connection (response cut short): never reused.
    pub(crate) fn abandon(&mut self) {
        self.conn = None;
    }

    pub(crate) fn exact_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// True if the body has no length known in advance (chunked, or until
    /// the upstream closes): it has to be sent in chunks.
    pub(crate) fn needs_chunks(&self) -> bool {
        !matches!(self.framing, Framing::Length(_))
    }

    /// The body has been read to its end: the connection may go back.
    fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.reuse && c.buf.is_empty() {
                self.pool.release_raw(self.id, c);
            }
        }
    }

    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) => {
                    if !c.buf.is_empty() {
                        let n = (*rem).min(c.buf.len() as u64) as usize;
                        let data = c.buf.split_to(n).freeze();
                        *rem -= n as u64;
                        if *rem == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::Close => {
                    if !c.buf.is_empty() {
                        return Poll::Ready(Some(Ok(c.buf.split().freeze())));
                    }
                }
                Framing::Chunked(state) => {
                    let step = match state.decode(&c.buf) {
                        Ok(s) => s,
                        Err(e) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    };
                    c.buf.advance(step.framing);
                    let data = (step.data > 0).then(|| c.buf.split_to(step.data).freeze());
                    if state.is_done() {
                        self.finish();
                    }
                    if let Some(d) = data {
                        return Poll::Ready(Some(Ok(d)));
                    }
                    if self.conn.is_none() {
                        return Poll::Ready(None);
                    }
                }
            }
            // the buffer is empty (or holds a partial chunk line): read more
            if let Some(end) = ready!(self.poll_more(cx)) {
                return Poll::Ready(end.err().map(Err));
            }
        }
    }

    /// Reads more of the body into the connection's buffer: `None` when
    /// something was read, `Some(Ok)` when the body ended with the stream
    /// (read until close), `Some(Err)` on a failure.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(), BodyError>>> {
        let Some(c) = self.conn.as_mut() else {
            return Poll::Ready(Some(Ok(())));
        };
        match ready!(c.poll_fill(cx)) {
            Ok(0) => {
                self.conn = None;
                if self.framing == Framing::Close {
                    return Poll::Ready(Some(Ok(())));
                }
                Poll::Ready(Some(Err(BodyError::Truncated)))
            }
            Ok(_) => Poll::Ready(None),
            Err(e) => {
                self.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    /// Appends the body bytes available now to `out`, without allocating:
    /// as they are when the body has a length, else as chunks of the
    /// chunked encoding (with the last chunk at the end; see
    /// [`RawBody::needs_chunks`]). `Ready(Ok(true))` once the body has
    /// ended, `Ready(Ok(false))` when bytes were appended, `Pending` while
    /// the upstream has nothing more yet.
    pub(crate) fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, BodyError>> {
        let chunked = self.needs_chunks();
        let done = |out: &mut Vec<u8>| {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Poll::Ready(Ok(true))
        };
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(Ok(true));
            };
            let before = out.len();
            match &mut self.framing {
                Framing::Length(rem) => {
                    let n = (*rem).min(c.buf.len() as u64) as usize;
                    out.extend_from_slice(&c.buf[..n]);
                    c.buf.advance(n);
                    *rem -= n as u64;
                    if *rem == 0 {
                        self.finish();
                        return Poll::Ready(Ok(true));
                    }
                }
                Framing::Close => {
                    if !c.buf.is_empty() {
                        put_chunk(out, &c.buf);
                        c.buf.clear();
                    }
                }
                Framing::Chunked(state) => {
                    loop {
                        let step = match state.decode(&c.buf) {
                            Ok(s) => s,
                            Err(e) => {
                                self.conn = None;
                                return Poll::Ready(Err(e.into()));
                            }
                        };
                        c.buf.advance(step.framing);
                        if step.data == 0 {
                            break;
                        }
                        put_chunk(out, &c.buf[..step.data]);
                        c.buf.advance(step.data);
                    }
                    if state.is_done() {
                        self.finish();
                        return done(out);
                    }
                }
            }
            if out.len() > before {
                return Poll::Ready(Ok(false));
            }
            match ready!(self.poll_more(cx)) {
                None => {}
                Some(Ok(())) => return done(out),
                Some(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// An exchange that failed, and whether any response byte had arrived.
struct Failed {
    error: SendError,
    before_response: bool,
}

fn failed(error: SendError, before_response: bool) -> Failed {
    Failed {
        error,
        before_response,
    }
}

/// What the fast path sends upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange<'a> {
    /// Upstream id (see `Registry::upstream_id`).
    pub(crate) id: u64,
    /// The whole request head of a bodiless request.
    pub(crate) head: &'a [u8],
    /// Retried once on a fresh connection if a pooled one turns out closed.
    pub(crate) idempotent: bool,
    /// A `HEAD` request: the response has no body whatever it announces.
    pub(crate) head_method: bool,
}

/// Sends the request to the upstream and reads the response head into
/// `sink`. See the module invariants for pooling and retries.
pub(crate) async fn send<S: HeadSink>(
    pool: &Arc<Pool>,
    req: Exchange<'_>,
    sink: &mut S,
) -> Result<(StatusCode, RawBody), SendError> {
    let mut force_fresh = false;
    loop {
        let (fresh, mut conn) = match pool.checkout_raw(req.id, force_fresh) {
            RawCheckout::Idle(c) => (false, c),
            RawCheckout::Connect(authority) => {
                (true, RawConn::new(pool.connect_tcp(&authority).await?))
            }
            RawCheckout::Unknown => return Err(SendError::Closed),
        };
        match exchange(&mut conn, req, sink).await {
            // what an upstream sends on a keep-alive connection it times out
            // before closing it: read now, it is not this request's answer
            Ok((status, _, _))
                if status == StatusCode::REQUEST_TIMEOUT
                    && !fresh
                    && req.idempotent
                    && !force_fresh =>
            {
                tracing::debug!("pooled upstream connection answered 408; retrying on a new one");
                pool.forget_raw_idle(req.id);
                force_fresh = true;
            }
            Ok((status, framing, reuse)) => {
                let length0 = framing == Framing::Length(0);
                let mut body = RawBody {
                    conn: Some(conn),
                    framing,
                    reuse,
                    id: req.id,
                    pool: pool.clone(),
                };
                if length0 {
                    body.finish();
                }
                return Ok((status, body));
            }
            Err(f) if f.before_response && !fresh && req.idempotent && !force_fresh => {
                tracing::debug!(error = %f.error, "pooled upstream connection was closed; retrying on a new one");
                // its idle siblings are likely stale too (upstream restart)
                pool.forget_raw_idle(req.id);
                force_fresh = true;
            }
            // a new connection that closed before answering: the upstream
            // is going away (see `SendError::refused`)
            Err(f) if f.before_response => return Err(SendError::NoAnswer(Box::new(f.error))),
            Err(f) => return Err(f.error),
        }
    }
}

async fn exchange<S: HeadSink>(
    conn: &mut RawConn,
    req: Exchange<'_>,
    sink: &mut S,
) -> Result<(StatusCode, Framing, bool), Failed> {
    if let Err(e) = conn.io.write_all(req.head).await {
        return Err(failed(SendError::Io(e), true));
    }
    conn.buf.clear();
    let mut received = false;
    loop {
        let n = conn
            .fill()
            .await
            .map_err(|e| failed(SendError::Io(e), !received))?;
        if n == 0 {
            return Err(failed(SendError::Closed, !received));
        }
        received = true;
        loop {
            match parse_head(&conn.buf, req.head_method, sink).map_err(|e| failed(e, false))? {
                None => {
                    if conn.buf.len() > MAX_HEAD {
                        return Err(failed(SendError::BadResponse("head too long"), false));
                    }
                    break;
                }
                Some(Parsed::Interim(n)) => conn.buf.advance(n),
                Some(Parsed::Final(n, status, framing, reuse)) => {
                    conn.buf.advance(n);
                    return Ok((status, framing, reuse));
                }
            }
            if conn.buf.is_empty() {
                break;
            }
        }
    }
}

#[derive(Debug)]
enum Parsed {
    /// A `1xx` head of this length, to skip.
    Interim(usize),
    /// A final head of this length (its headers went to the sink), its body
    /// framing, and whether the connection may be reused after the body.
    Final(usize, StatusCode, Framing, bool),
}

/// Parses a response head at the start of `buf`; `None` if incomplete.
/// `head_method`: the request was a `HEAD` (no body follows).
fn parse_head<S: HeadSink>(
    buf: &[u8],
    head_method: bool,
    sink: &mut S,
) -> Result<Option<Parsed>, SendError> {
    let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(SendError::BadResponse("unparsable head")),
    };
    let code = res.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| SendError::BadResponse("bad status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(SendError::UnexpectedSwitch);
    }
    if status.is_informational() {
        return Ok(Some(Parsed::Interim(len)));
    }
    let http11 = res.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut close = false;
    let mut keep_alive = false;
    // other headers named in `Connection` (rare): left out below
    let mut named: Vec<&[u8]> = Vec::new();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v =
                parse_length_list(h.value).ok_or(SendError::BadResponse("bad content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(SendError::BadResponse("conflicting content-length"));
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // the last coding decides
            chunked = Some(is_chunked(h.value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !t.is_empty() {
                    named.push(t);
                }
            }
        }
    }
    sink.start(status);
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        sink.header(h.name, h.value)?;
    }
    let mut reuse = if http11 { !close } else { keep_alive && !close };
    let framing =
        if head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else {
            match (chunked, length) {
                (Some(true), l) => {
                    // both: framed by chunks, but the connection is not trusted
                    reuse &= l.is_none();
                    Framing::Chunked(Decoder::new())
                }
                (Some(false), _) => Framing::Close,
                (None, Some(l)) => Framing::Length(l),
                (None, None) => Framing::Close,
            }
        };
    if framing == Framing::Close {
        reuse = false;
    }
    Ok(Some(Parsed::Final(len, status, framing, reuse)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }

    fn final_head(raw: &[u8]) -> (StatusCode, Framing, bool) {
        match parse_head(raw, false, &mut map()).unwrap().unwrap() {
            Parsed::Final(n, s, f, r) => {
                assert_eq!(n, raw.len());
                (s, f, r)
            }
            Parsed::Interim(_) => panic!("interim"),
        }
    }

    #[test]
    fn framing_and_reuse_follow_the_response_head() {
        let (s, f, r) = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n");
        assert_eq!((s, f, r), (StatusCode::OK, Framing::Length(24), true));
        let (_, f, r) = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((f, r), (Framing::Chunked(Decoder::new()), true));
        let (_, f, r) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!((f, r), (Framing::Chunked(Decoder::new()), false));
        let (_, f, r) = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((f, r), (Framing::Close, false));
        let (_, f, r) =
            final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\n\r\n");
        assert_eq!((f, r), (Framing::Length(2), false));
        let (_, f, r) = final_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert_eq!((f, r), (Framing::Length(2), false));
        let (_, f, r) =
            final_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!((f, r), (Framing::Length(2), true));
        let (_, f, r) = final_head(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((f, r), (Framing::Close, false));
        let (s, f, r) = final_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        assert_eq!(
            (s, f, r),
            (StatusCode::NOT_MODIFIED, Framing::Length(0), true)
        );
    }

    #[test]
    fn hop_by_hop_response_headers_are_dropped() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-App: kept\r\nContent-Length: 0\r\n\r\n";
        let mut head = map();
        let Some(Parsed::Final(_, _, _, reuse)) = parse_head(raw, false, &mut head).unwrap() else {
            panic!("not a final head");
        };
        assert!(reuse);
        let mut names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-app"]);
    }

    #[test]
    fn bad_heads_are_errors_and_interim_heads_are_skipped() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200", false, &mut map()),
            Ok(Some(Parsed::Interim(n))) if n == 40
        ));
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                &mut map()
            ),
            Err(SendError::UnexpectedSwitch)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-", false, &mut map()),
            Ok(None)
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                parse_head(bad, false, &mut map()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

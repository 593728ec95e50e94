//! Hand-written HTTP/1.1 upstream client for the common request: a `GET` or
//! `OPTIONS` without a body and without an upgrade (see `proxy.rs` for the
//! exact test; everything else goes through hyper in `pool.rs`).
//!
//! The request head is written in one `write`, the response head is parsed
//! with `httparse`, and the body is read by `Content-Length`, the chunked
//! encoding or until the upstream closes. Interim `1xx` heads are skipped;
//! a `101` is refused (no upgrade was asked).
//!
//! Invariants:
//! * A connection returns to the pool only after its response body was read
//!   to the end, it was framed by length or chunks, and the upstream did not
//!   ask to close (`Connection: close`, or HTTP/1.0 without `keep-alive`).
//! * A pooled connection that fails before any byte of the response arrived
//!   (the upstream closed it while idle) is retried once on a fresh
//!   connection, and only for idempotent requests; any other failure is an
//!   error (502). So is a `408` read on a pooled connection (some upstreams
//!   send one on a keep-alive connection they time out, then close it).

use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pool::{Pool, RawCheckout, SendError};
use crate::proxy::hop_by_hop;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 100;
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
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Chunked decoder state (RFC 9112 7.1); trailers are read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        size: u64,
        digits: u8,
    },
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer line; `empty` while nothing but its start was seen.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

const CHUNK_START: Chunk = Chunk::Size { size: 0, digits: 0 };

/// Bad chunked framing from the upstream.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent malformed chunked framing")]
pub(crate) struct BadChunk;

impl Chunk {
    /// Consumes framing bytes from `buf`; returns body data when some is
    /// available, `None` when `buf` is exhausted or the body is done.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, BadChunk> {
        loop {
            if let Chunk::Data(rem) = *self {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = rem.min(buf.len() as u64) as usize;
                let data = buf.split_to(n).freeze();
                *self = if rem == n as u64 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(rem - n as u64)
                };
                return Ok(Some(data));
            }
            if *self == Chunk::Done || buf.is_empty() {
                return Ok(None);
            }
            let b = buf[0];
            buf.advance(1);
            *self = match (*self, b) {
                (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        size: size * 16 + d,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { size, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunk::Ext(size)
                }
                (Chunk::Size { size, digits }, b'\r') if digits > 0 => Chunk::SizeLf(size),
                (Chunk::Ext(size), b'\r') => Chunk::SizeLf(size),
                (Chunk::Ext(_), b'\n') => return Err(BadChunk),
                (Chunk::Ext(size), _) => Chunk::Ext(size),
                (Chunk::SizeLf(0), b'\n') => Chunk::Trailer { empty: true },
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => CHUNK_START,
                (Chunk::Trailer { empty }, b'\r') => Chunk::TrailerLf { empty },
                (Chunk::Trailer { .. }, b'\n') => return Err(BadChunk),
                (Chunk::Trailer { .. }, _) => Chunk::Trailer { empty: false },
                (Chunk::TrailerLf { empty: true }, b'\n') => Chunk::Done,
                (Chunk::TrailerLf { empty: false }, b'\n') => Chunk::Trailer { empty: true },
                _ => return Err(BadChunk),
            };
        }
    }
}

/// A response head from the upstream.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    /// The headers to pass on: hop-by-hop ones and those named in
    /// `Connection` are already removed.
    pub(crate) headers: HeaderMap,
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
    #[error(transparent)]
    Chunk(#[from] BadChunk),
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
                    let data = match state.decode(&mut c.buf) {
                        Ok(d) => d,
                        Err(e) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    };
                    if *state == Chunk::Done {
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
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(c.poll_fill(cx)) {
                Ok(0) => {
                    self.conn = None;
                    if self.framing == Framing::Close {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
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

/// Sends the request `head` (a bodiless request) to upstream `id` and reads
/// the response head. See the module invariants for pooling and retries.
pub(crate) async fn send(
    pool: &Arc<Pool>,
    id: u64,
    head: &[u8],
    idempotent: bool,
) -> Result<(Head, RawBody), SendError> {
    let mut force_fresh = false;
    loop {
        let (fresh, mut conn) = match pool.checkout_raw(id, force_fresh) {
            RawCheckout::Idle(c) => (false, c),
            RawCheckout::Connect(authority) => {
                (true, RawConn::new(pool.connect_tcp(&authority).await?))
            }
            RawCheckout::Unknown => return Err(SendError::Closed),
        };
        match exchange(&mut conn, head).await {
            // what an upstream sends on a keep-alive connection it times out
            // before closing it: read now, it is not this request's answer
            Ok((h, _, _))
                if h.status == StatusCode::REQUEST_TIMEOUT
                    && !fresh
                    && idempotent
                    && !force_fresh =>
            {
                tracing::debug!("pooled upstream connection answered 408; retrying on a new one");
                pool.forget_raw_idle(id);
                force_fresh = true;
            }
            Ok((head, framing, reuse)) => {
                let mut body = RawBody {
                    conn: Some(conn),
                    framing,
                    reuse,
                    id,
                    pool: pool.clone(),
                };
                if framing == Framing::Length(0) {
                    body.finish();
                }
                return Ok((head, body));
            }
            Err(f) if f.before_response && !fresh && idempotent && !force_fresh => {
                tracing::debug!(error = %f.error, "pooled upstream connection was closed; retrying on a new one");
                // its idle siblings are likely stale too (upstream restart)
                pool.forget_raw_idle(id);
                force_fresh = true;
            }
            Err(f) => return Err(f.error),
        }
    }
}

async fn exchange(conn: &mut RawConn, head: &[u8]) -> Result<(Head, Framing, bool), Failed> {
    if let Err(e) = conn.io.write_all(head).await {
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
            match parse_head(&conn.buf).map_err(|e| failed(e, false))? {
                None => {
                    if conn.buf.len() > MAX_HEAD {
                        return Err(failed(SendError::BadResponse("head too long"), false));
                    }
                    break;
                }
                Some(Parsed::Interim(n)) => conn.buf.advance(n),
                Some(Parsed::Final(n, head, framing, reuse)) => {
                    conn.buf.advance(n);
                    return Ok((head, framing, reuse));
                }
            }
            if conn.buf.is_empty() {
                break;
            }
        }
    }
}

enum Parsed {
    /// A `1xx` head of this length, to skip.
    Interim(usize),
    Final(usize, Head, Framing, bool),
}

/// Parses a response head at the start of `buf`; `None` if incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, SendError> {
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
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut close = false;
    let mut keep_alive = false;
    // other headers named in `Connection`, removed at the end (rare)
    let mut named: Vec<HeaderName> = Vec::new();
    let hop = hop_by_hop();
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| SendError::BadResponse("bad header name"))?;
        if name == http::header::CONTENT_LENGTH {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(SendError::BadResponse("bad content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(SendError::BadResponse("conflicting content-length"));
            }
            length = Some(v);
        } else if name == http::header::TRANSFER_ENCODING {
            // the last coding decides
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        // hop-by-hop headers are not passed on
        if hop.iter().any(|n| **n == name) {
            continue;
        }
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| SendError::BadResponse("bad header value"))?;
        headers.append(name, value);
    }
    for n in named {
        headers.remove(&n);
    }
    let mut reuse = if http11 { !close } else { keep_alive && !close };
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), l) => {
                // both: framed by chunks, but the connection is not trusted
                reuse &= l.is_none();
                Framing::Chunked(CHUNK_START)
            }
            (Some(false), _) => Framing::Close,
            (None, Some(l)) => Framing::Length(l),
            (None, None) => Framing::Close,
        }
    };
    if framing == Framing::Close {
        reuse = false;
    }
    Ok(Some(Parsed::Final(
        len,
        Head { status, headers },
        framing,
        reuse,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool), BadChunk> {
        let mut state = CHUNK_START;
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(d) = state.decode(&mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, state == Chunk::Done && buf.is_empty()))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in [1, 2, 3, 7, 100] {
            let (out, done) = decode_all(input, split).unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz", "split {split}");
            assert!(done, "split {split}");
        }
        let (out, done) = decode_all(b"0\r\n\r\n", 1).unwrap();
        assert!(out.is_empty() && done);
        let (_, done) = decode_all(b"3\r\nabc\r\n", 2).unwrap();
        assert!(!done, "no last chunk yet");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX\r\n",
            b"3\nabc",
            b"11111111111111111\r\n",
            b"0\r\nx\n",
        ] {
            assert!(
                decode_all(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn final_head(raw: &[u8]) -> (StatusCode, Framing, bool) {
        match parse_head(raw).unwrap().unwrap() {
            Parsed::Final(n, h, f, r) => {
                assert_eq!(n, raw.len());
                (h.status, f, r)
            }
            Parsed::Interim(_) => panic!("interim"),
        }
    }

    #[test]
    fn framing_and_reuse_follow_the_response_head() {
        let (s, f, r) = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n");
        assert_eq!((s, f, r), (StatusCode::OK, Framing::Length(24), true));
        let (_, f, r) = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((f, r), (Framing::Chunked(CHUNK_START), true));
        let (_, f, r) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!((f, r), (Framing::Chunked(CHUNK_START), false));
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
        let Some(Parsed::Final(_, head, _, reuse)) = parse_head(raw).unwrap() else {
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
            parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200"),
            Ok(Some(Parsed::Interim(n))) if n == 40
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(SendError::UnexpectedSwitch)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-"),
            Ok(None)
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

//! Request-framing watcher of a client connection (HTTP/1 smuggling guard).
//!
//! hyper drops `Content-Length` when `Transfer-Encoding` is present, so the
//! service cannot tell that a request carried both. [`ScanIo`] wraps the
//! client socket and scans the bytes hyper reads, in order, exactly once:
//! each request head is parsed with `httparse` (the parser hyper uses), its
//! verdict is recorded, and its body is skipped by the same framing rules
//! (`Content-Length` bytes, or the chunked encoding up to the end of the
//! trailers) to find the next head. Pipelined and keep-alive requests are
//! therefore matched to their heads by position: the n-th request hyper hands
//! to the service is the n-th head scanned.
//!
//! The scanner stops (and the requests after that point are refused with
//! 400) when it cannot follow the framing: a head it cannot parse (hyper
//! refuses it too, or it is the HTTP/2 preface, whose requests are not
//! checked), a head longer than [`MAX_HEAD`], a malformed chunk, or a
//! refused head (the connection is closed after it). After an upgrade request
//! (`Upgrade` header or `CONNECT`) the bytes are another protocol: the
//! scanner stops and the response to that request closes the connection
//! unless it is `101 Switching Protocols`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h1::chunked::{BadChunk, Decoder};
use crate::h1::{self, framing, MAX_HEAD};

const NONE: u64 = u64::MAX;

/// What the service must do with a request (HTTP/1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ok,
    /// An upgrade request: close the connection unless the answer is 101.
    CloseUnlessSwitching,
    /// 400 and close: CL+TE, conflicting lengths, or framing not followed.
    Refuse,
}

/// Shared between the scanner (IO side) and the service of one connection.
#[derive(Debug)]
pub(crate) struct ScanState {
    /// Heads scanned so far.
    scanned: AtomicU64,
    /// Index of the first refused head.
    bad: AtomicU64,
    /// Index of the upgrade head after which the scanner stopped.
    upgrade: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

impl Default for ScanState {
    fn default() -> Self {
        ScanState {
            scanned: AtomicU64::new(0),
            bad: AtomicU64::new(NONE),
            upgrade: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
        }
    }
}

impl ScanState {
    /// Verdict of the next HTTP/1 request; call once per request, in order.
    pub(crate) fn next_request(&self) -> Verdict {
        let n = self.served.fetch_add(1, Ordering::AcqRel);
        if n >= self.scanned.load(Ordering::Acquire) || n >= self.bad.load(Ordering::Acquire) {
            Verdict::Refuse
        } else if n == self.upgrade.load(Ordering::Acquire) {
            Verdict::CloseUnlessSwitching
        } else {
            Verdict::Ok
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Decoder),
    /// Not HTTP/1 any more, or framing lost: nothing more is scanned.
    Stopped,
}

/// The byte scanner; see the module docs.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// A head split across reads.
    partial: Vec<u8>,
    shared: Arc<ScanState>,
    /// Test builds: the request lines (`METHOD target`) scanned, in order.
    #[cfg(test)]
    pub(crate) seen: Vec<String>,
}

struct HeadInfo {
    refuse: bool,
    upgrade: bool,
    body: Option<State>,
}

fn inspect(req: &httparse::Request<'_, '_>) -> HeadInfo {
    let upgrade = req.method == Some("CONNECT")
        || req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    match framing::request_body(req.headers, req.version == Some(1)) {
        Err(_) => HeadInfo {
            refuse: true,
            upgrade,
            body: None,
        },
        Ok(body) => HeadInfo {
            refuse: false,
            upgrade,
            body: Some(match body {
                framing::Body::Length(n) => State::Body(n),
                framing::Body::Chunked => State::Chunked(Decoder::new()),
            }),
        },
    }
}

impl Scanner {
    pub(crate) fn new(shared: Arc<ScanState>) -> Scanner {
        Scanner {
            state: State::Head,
            partial: Vec::new(),
            shared,
            #[cfg(test)]
            seen: Vec::new(),
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.partial = Vec::new();
    }

    /// Parses a head at the start of `buf`: `Some(len)` when complete.
    fn head(&mut self, buf: &[u8]) -> Result<Option<usize>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
            Ok(httparse::Status::Complete(len)) => {
                #[cfg(test)]
                self.seen.push(format!(
                    "{} {}",
                    req.method.unwrap_or_default(),
                    req.path.unwrap_or_default()
                ));
                let info = inspect(&req);
                let idx = self.shared.scanned.load(Ordering::Relaxed);
                if info.refuse {
                    self.shared.bad.store(idx, Ordering::Release);
                }
                if info.upgrade {
                    self.shared.upgrade.store(idx, Ordering::Release);
                }
                self.shared.scanned.store(idx + 1, Ordering::Release);
                self.state = match info.body {
                    Some(next) if !info.refuse && !info.upgrade => next,
                    _ => State::Stopped,
                };
                Ok(Some(len))
            }
        }
    }

    /// Feeds the bytes just read from the client.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Stopped => return,
                State::Head => {
                    if self.partial.is_empty() {
                        match self.head(data) {
                            Ok(Some(len)) => data = &data[len..],
                            Ok(None) => {
                                if data.len() > MAX_HEAD {
                                    self.stop();
                                } else {
                                    self.partial.extend_from_slice(data);
                                }
                                return;
                            }
                            Err(()) => return self.stop(),
                        }
                    } else {
                        let before = self.partial.len();
                        let take = data.len().min(MAX_HEAD + 1 - before.min(MAX_HEAD));
                        let mut buf = std::mem::take(&mut self.partial);
                        buf.extend_from_slice(&data[..take]);
                        match self.head(&buf) {
                            Ok(Some(len)) => data = &data[len - before..],
                            Ok(None) if buf.len() <= MAX_HEAD => {
                                self.partial = buf;
                                return;
                            }
                            _ => return self.stop(),
                        }
                    }
                }
                State::Body(n) => {
                    let skip = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                    data = &data[skip..];
                    let left = *n - skip as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Chunked(d) => match d.decode(data) {
                    Ok(step) => {
                        data = &data[step.framing + step.data..];
                        if d.is_done() {
                            self.state = State::Head;
                        }
                    }
                    Err(BadChunk) => return self.stop(),
                },
            }
        }
    }
}

/// The client socket, with every byte read fed to a [`Scanner`].
#[derive(Debug)]
pub(crate) struct ScanIo<T> {
    io: T,
    scanner: Scanner,
}

impl<T> ScanIo<T> {
    pub(crate) fn new(io: T, shared: Arc<ScanState>) -> ScanIo<T> {
        ScanIo {
            io,
            scanner: Scanner::new(shared),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScanIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if this.scanner.state != State::Stopped {
                this.scanner.feed(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ScanIo<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the verdicts of the
    /// first `n` requests.
    fn verdicts(input: &[u8], step: usize, n: usize) -> Vec<Verdict> {
        let shared = Arc::new(ScanState::default());
        let mut s = Scanner::new(shared.clone());
        for piece in input.chunks(step) {
            s.feed(piece);
        }
        (0..n).map(|_| shared.next_request()).collect()
    }

    const OK: Verdict = Verdict::Ok;
    const REFUSE: Verdict = Verdict::Refuse;

    #[test]
    fn keep_alive_requests_with_bodies_are_followed() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 7, input.len()] {
            assert_eq!(
                verdicts(input, step, 4),
                [OK, OK, OK, REFUSE],
                "step {step}"
            );
        }
    }

    #[test]
    fn cl_and_te_together_are_refused_whatever_the_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
        ] {
            assert_eq!(verdicts(head, 3, 1), [REFUSE]);
        }
        // a good request first: only the second is refused, nothing after
        let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        input.extend_from_slice(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(verdicts(&input, 5, 3), [OK, REFUSE, REFUSE]);
    }

    #[test]
    fn upgrade_stops_the_scan_and_closes_unless_switching() {
        let input = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        assert_eq!(
            verdicts(input, 4, 2),
            [Verdict::CloseUnlessSwitching, REFUSE]
        );
    }

    #[test]
    fn unparsable_input_and_huge_heads_stop_the_scan() {
        assert_eq!(
            verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 100, 1),
            [REFUSE]
        );
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(verdicts(&big, 1000, 1), [REFUSE]);
        let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(bad_chunk, 100, 2), [OK, REFUSE]);
    }
}

//! Property test: the edge's hand-written HTTP/1 parsers against hyper's
//! server, on generated and mutated requests.
//!
//! Each case is one generated request (method, target, version, headers
//! with every framing variant, a body framed by length or by chunks, with
//! extensions and trailers), optionally mutated (bytes replaced, inserted or
//! deleted), followed by a plain second request. The bytes go to hyper's
//! HTTP/1 server (configured with the edge's limits) over an in-memory pipe,
//! and to the edge's parsers: the framing scanner (`scan.rs`, fed in pieces),
//! the chunked decoder and the client loop's head parser (`front.rs`). The
//! verdicts must agree:
//! * the scanner reads the same request lines, in the same order, as hyper;
//! * a request hyper hands on with a good body is one the scanner lets
//!   through, unless it carries both `Content-Length` and
//!   `Transfer-Encoding` (the edge's documented stricter rule: 400);
//! * the scanner goes past a body exactly when hyper could read it, and the
//!   chunked decoder yields the same bytes, or fails, as hyper's;
//! * a request the client loop answers itself is one hyper hands on, with
//!   the same method, target and `Host`, and no body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::Decoder;
use crate::front::{self, Parse};
use crate::scan::{ScanState, Scanner, Verdict};

/// A request as hyper's server handed it on.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    host: Option<Vec<u8>>,
    /// The body, or `Err` if hyper failed to read it.
    body: Result<Vec<u8>, ()>,
}

/// Runs hyper's HTTP/1 server over `input`; the requests it handed on.
fn hyper_view(input: &[u8]) -> Vec<Seen> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let seen = s2.clone();
            async move {
                let line = format!("{} {}", req.method(), req.uri());
                let host = req.headers().get("host").map(|v| v.as_bytes().to_vec());
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .map_err(|_| ());
                seen.lock().unwrap().push(Seen { line, host, body });
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(super::MAX_HEAD)
            .max_headers(super::MAX_HEADERS)
            // the input is written at once and the pipe closed: hyper must
            // still serve every request it holds
            .half_close(true);
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let server = tokio::spawn(conn);
        client.write_all(input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        let seen = seen.lock().unwrap().clone();
        seen
    })
}

/// The scanner's view of `input` fed in pieces of `step` bytes: the request
/// lines it scanned and its verdict for each.
fn scanner_view(input: &[u8], step: usize) -> (Vec<String>, Vec<Verdict>) {
    let shared = Arc::new(ScanState::default());
    let mut s = Scanner::new(shared.clone());
    for piece in input.chunks(step.max(1)) {
        s.feed(piece);
    }
    let verdicts = (0..s.seen.len() + 1)
        .map(|_| shared.next_request())
        .collect();
    (s.seen, verdicts)
}

/// Decodes a chunked body at the start of `input`: the data and the bytes
/// used, `Err` if malformed or not ended within `input`.
fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ()> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut used = 0;
    for end in (step.max(1)..input.len() + step.max(1)).step_by(step.max(1)) {
        let avail = &input[..end.min(input.len())];
        loop {
            let st = d.decode(&avail[used..]).map_err(|_| ())?;
            out.extend_from_slice(&avail[used + st.framing..used + st.framing + st.data]);
            used += st.framing + st.data;
            if d.is_done() {
                return Ok((out, used));
            }
            if st.data == 0 {
                break;
            }
        }
    }
    Err(())
}

/// The head of the first request as `httparse` (hyper's parser) reads it:
/// its length, whether it has both `Content-Length` and
/// `Transfer-Encoding`, and whether it has `Transfer-Encoding`.
fn first_head(input: &[u8]) -> Option<(usize, bool, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(end) = req.parse(input).ok()? else {
        return None;
    };
    let has = |n: &str| req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
    let te = has("transfer-encoding");
    Some((end, te && has("content-length"), te))
}

const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: x.localhost\r\n\r\n";

#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    upper: bool,
    zeros: usize,
    ext: Option<String>,
    blanks: &'static str,
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        proptest::collection::vec(any::<u8>(), 1..40),
        any::<bool>(),
        0usize..3,
        proptest::option::of("[a-z]{1,5}(=[a-z0-9\"]{0,6})?"),
        prop_oneof![Just(""), Just(" "), Just("\t ")],
    )
        .prop_map(|(data, upper, zeros, ext, blanks)| Chunk {
            data,
            upper,
            zeros,
            ext,
            blanks,
        })
}

fn encode_chunks(chunks: &[Chunk], trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let hex = if c.upper {
            format!("{:X}", c.data.len())
        } else {
            format!("{:x}", c.data.len())
        };
        out.extend_from_slice("0".repeat(c.zeros).as_bytes());
        out.extend_from_slice(hex.as_bytes());
        out.extend_from_slice(c.blanks.as_bytes());
        if let Some(e) = &c.ext {
            out.push(b';');
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&c.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One generated request, before mutation.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET"),
        Just("HEAD"),
        Just("OPTIONS"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE")
    ];
    let version = prop_oneof![9 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")];
    let framing = prop_oneof![
        3 => Just(0u8), // no body
        3 => Just(1),   // Content-Length
        4 => Just(2),   // chunked
        1 => Just(3),   // both
    ];
    let cl_spelling = prop_oneof![
        Just("{}"),
        Just(" {} "),
        Just("{}, {}"),
        Just("+{}"),
        Just("{}0"),
        Just("{}, 7")
    ];
    let te_value = prop_oneof![
        6 => Just("chunked"),
        1 => Just("Chunked"),
        1 => Just("gzip, chunked"),
        1 => Just("chunked, gzip"),
        1 => Just("identity")
    ];
    let extra = proptest::collection::vec(
        prop_oneof![
            Just("Accept: */*".to_string()),
            Just("Connection: keep-alive".to_string()),
            Just("Connection: close".to_string()),
            Just("Keep-Alive: 5".to_string()),
            Just("X-Forwarded-For: 6.6.6.6".to_string()),
            Just("Host: other.localhost".to_string()),
            Just("TE: trailers".to_string()),
            "x-[a-z]{1,6}: [ -~]{0,12}".prop_map(|s| s),
        ],
        0..4,
    );
    (
        method,
        "/[a-z0-9/._~%?=&-]{0,16}",
        version,
        framing,
        cl_spelling,
        te_value,
        extra,
        proptest::collection::vec(chunk(), 0..4),
        proptest::collection::vec(("x-t[a-z]{0,4}", "[ -~]{0,8}"), 0..2),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(method, target, version, framing, cl, te, extra, chunks, trailers, plain)| {
                let mut head = format!("{method} {target} {version}\r\nHost: x.localhost\r\n");
                for e in &extra {
                    head.push_str(e);
                    head.push_str("\r\n");
                }
                let chunked = encode_chunks(&chunks, &trailers);
                let body: Vec<u8> = match framing {
                    0 => Vec::new(),
                    1 => {
                        let cl = cl.replace("{}", &plain.len().to_string());
                        head.push_str(&format!("Content-Length: {cl}\r\n"));
                        plain
                    }
                    2 => {
                        head.push_str(&format!("Transfer-Encoding: {te}\r\n"));
                        chunked
                    }
                    _ => {
                        head.push_str(&format!(
                            "Content-Length: {}\r\nTransfer-Encoding: {te}\r\n",
                            chunked.len()
                        ));
                        chunked
                    }
                };
                let mut out = head.into_bytes();
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
                out
            },
        )
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replaces the n-th framing byte (CR, LF, `;`, `:` or a digit) of the
    /// body.
    Framing(usize, u8),
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b'\t'),
        Just(b';'),
        Just(b':'),
        Just(b'0'),
        Just(b'9'),
        Just(b'a'),
        Just(b'F'),
        Just(b'z'),
        Just(b'x'),
        Just(b'G'),
        Just(0u8),
        Just(0x7f),
        Just(0xff),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Framing(i, b)),
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut req: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if req.is_empty() {
            break;
        }
        match *m {
            Mutation::Framing(n, b) => {
                let body = req
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4);
                let framing: Vec<usize> = (body..req.len())
                    .filter(|i| matches!(req[*i], b'\r' | b'\n' | b';' | b':' | b'0'..=b'9'))
                    .collect();
                if !framing.is_empty() {
                    req[framing[n % framing.len()]] = b;
                }
            }
            Mutation::Replace(i, b) => {
                let i = i % req.len();
                req[i] = b;
            }
            Mutation::Insert(i, b) => req.insert(i % (req.len() + 1), b),
            Mutation::Delete(i) => {
                req.remove(i % req.len());
            }
        }
    }
    req
}

fn check(first: &[u8], step: usize) -> Result<(), TestCaseError> {
    let mut input = first.to_vec();
    input.extend_from_slice(SECOND);
    check_input(&input, step)
        .map_err(|e| TestCaseError::fail(format!("{e} on {:?}", String::from_utf8_lossy(&input))))
}

fn check_input(input: &[u8], step: usize) -> Result<(), TestCaseError> {
    let input = input.to_vec();
    let hyper = hyper_view(&input);
    let (seen, verdicts) = scanner_view(&input, step);
    // the same request lines, in the same order
    for (k, (h, s)) in hyper.iter().zip(&seen).enumerate() {
        prop_assert_eq!(&h.line, s, "request {}", k);
    }
    // (the scanner may scan past a head hyper refuses, e.g. a target that
    // is not a URI: hyper answers 400 and closes, so nothing after it is
    // served)
    let head = first_head(&input);
    let both = head.is_some_and(|h| h.1);
    if let Some(h) = hyper.first() {
        if both {
            prop_assert_eq!(verdicts[0], Verdict::Refuse, "CL+TE let through");
            return Ok(());
        }
        if h.body.is_ok() {
            prop_assert_ne!(
                verdicts[0],
                Verdict::Refuse,
                "hyper took it, the scanner refused"
            );
        }
        // the scanner goes past the body only when hyper could read it, and
        // whenever hyper read the next request (which then has the same
        // line, checked above); hyper may stop before the next request when
        // asked to close, or refuse it when a mutation shifted it)
        let scan_next = seen.len() > 1;
        if hyper.len() > 1 {
            prop_assert!(
                scan_next,
                "hyper read the next request, the scanner did not"
            );
        }
        if scan_next {
            prop_assert!(h.body.is_ok(), "scanner went past a body hyper refused");
        }
        // the chunked decoder against hyper's
        if let Some((end, _, true)) = head {
            let ours = decode(&input[end..], step).map(|(d, _)| d);
            prop_assert_eq!(&ours, &h.body, "chunked body");
        }
    }
    // the client loop answers only what hyper hands on, unchanged
    let mut up = Vec::new();
    match front::parse(&input, b"10.0.0.7", "http", None, &mut up) {
        Parse::Request(r) => {
            let h = hyper.first().ok_or_else(|| {
                TestCaseError::fail("front answered a request hyper refused".to_string())
            })?;
            let head = String::from_utf8_lossy(&input[..r.len]).into_owned();
            let mut words = head.split(' ');
            let line = format!(
                "{} {}",
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default()
            );
            prop_assert_eq!(&h.line, &line);
            prop_assert_eq!(h.host.as_deref(), Some(&input[r.host.0..r.host.1]));
            prop_assert_eq!(&h.body, &Ok(Vec::new()));
        }
        Parse::Partial => prop_assert!(hyper.is_empty(), "front waits, hyper answered"),
        Parse::Handover => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_requests_get_hypers_verdict(req in request(), step in 1usize..64) {
        check(&req, step)?;
    }

    #[test]
    fn mutated_requests_get_hypers_verdict(
        req in request(),
        muts in proptest::collection::vec(mutation(), 1..4),
        step in 1usize..64,
    ) {
        check(&mutate(req, &muts), step)?;
    }
}

/// Cases the generators found or that matter most, checked every run.
#[test]
fn known_cases_get_hypers_verdict() {
    for first in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcx\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \t;a=b\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx\n\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x.localhost\r\nContent-Length: 0, 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"OPTIONS / HTTP/1.1\n\nHost: x.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        if let Err(e) = check(first, 3) {
            panic!("{e}");
        }
    }
}

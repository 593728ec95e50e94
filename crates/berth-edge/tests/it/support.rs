//! Test upstreams and clients, all on 127.0.0.1 port 0.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_edge::{Edge, EdgeConfig, RouteChange, RouteSpec, TargetSpec};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type Body = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A small upstream app. Paths: `/` (its name), `/headers` (request headers
/// as JSON, repeated ones joined with `, `), `/slow?ms=N`, `/hang`, `/echo`
/// (streams the body back), `/hop` (answers with hop-by-hop headers), `/ws`
/// (101 then echo), `/p/...` (its request target, after its name).
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub paths: Arc<Mutex<Vec<String>>>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

pub async fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = oneshot::channel::<()>();
    let (h, p, c) = (hits.clone(), paths.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => return },
                _ = &mut rx => return,
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (h, p) = (h.clone(), p.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    p.lock().unwrap().push(req.uri().to_string());
                    app(name, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        paths,
        conns,
        _stop: tx,
    }
}

async fn app(name: &'static str, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/headers" => {
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in req.headers() {
                let v = v.to_str().unwrap_or("");
                map.entry(k.to_string())
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(v);
                    })
                    .or_insert_with(|| v.to_string());
            }
            Response::new(full(serde_json::to_vec(&map).unwrap()))
        }
        p if p.starts_with("/p/") => Response::new(full(format!("{name} {}", req.uri()))),
        "/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(name))
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(name))
        }
        "/echo" => Response::new(req.into_body().boxed()),
        // `kb` KiB of a repeating pattern (`0123456789` …)
        "/big" => {
            let kb: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("kb="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let body: Vec<u8> = (0..kb * 1024).map(|i| b'0' + (i % 10) as u8).collect();
            Response::new(full(body))
        }
        // the whole body first, then the answer
        "/collect" => match req.into_body().collect().await {
            Ok(b) => Response::new(full(b.to_bytes())),
            Err(_) => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full("bad body"))
                .unwrap(),
        },
        "/hop" => Response::builder()
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(full(name))
            .unwrap(),
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on_upgrade.await {
                    let mut io = TokioIo::new(io);
                    let mut buf = [0u8; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Empty::new().map_err(|never| match never {}).boxed())
                .unwrap()
        }
        _ => Response::new(full(name)),
    };
    Ok(resp)
}

pub struct Running {
    pub edge: Edge,
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn edge_with(cfg: EdgeConfig) -> Running {
    let edge = Edge::new(cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let e = edge.clone();
    let served = tokio::spawn(async move {
        e.serve(listener, async move {
            let _ = rx.await;
        })
        .await
    });
    Running {
        edge,
        addr,
        stop: Some(tx),
        served,
    }
}

pub async fn edge() -> Running {
    edge_with(EdgeConfig::default()).await
}

pub fn target(id: &str, addr: SocketAddr, weight: u32) -> TargetSpec {
    TargetSpec {
        deployment_id: None,
        sha: None,
        id: id.into(),
        upstream: addr.to_string(),
        weight,
    }
}

pub fn upsert(host: &str, targets: Vec<TargetSpec>) -> RouteChange {
    RouteChange::Upsert {
        host: host.into(),
        route: RouteSpec {
            targets,
            ..Default::default()
        },
    }
}

/// One HTTP/1.1 keep-alive connection to the edge.
pub struct Conn {
    send: hyper::client::conn::http1::SendRequest<Body>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Conn { send }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> (StatusCode, String) {
        let req = Request::get(path)
            .header("host", host)
            .body(full(""))
            .unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        self.send.ready().await?;
        self.send.send_request(req).await
    }

    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

pub fn body(s: &'static str) -> Body {
    full(s)
}

/// Writes raw bytes and reads until the server closes (bounded by 5 s).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Frames (opcode, unmasked payload) a [`ws_upstream`] received.
pub type Frames = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// Reads one client frame (masked, payload < 126 bytes); `None` at EOF.
pub async fn read_masked_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.ok()?;
    assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
    let len = usize::from(h[1] & 0x7F);
    assert!(len < 126);
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((h[0] & 0x0F, payload))
}

/// A masked client frame.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket upstream speaking real frames: greets with a text frame
/// "welcome"; on a text frame "half" sends the first half of a 10-byte text
/// frame, then the rest 300 ms later; records every frame it receives.
pub async fn ws_upstream() -> (SocketAddr, Frames) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frames: Frames = Arc::default();
    let f = frames.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let f = f.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let f = f.clone();
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(io) = on_upgrade.await else { return };
                    let mut io = TokioIo::new(io);
                    let _ = io.write_all(b"\x81\x07welcome").await;
                    while let Some((op, payload)) = read_masked_frame(&mut io).await {
                        f.lock().unwrap().push((op, payload.clone()));
                        if op == 1 && payload == b"half" {
                            let _ = io.write_all(b"\x81\x0a01234").await;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = io.write_all(b"56789").await;
                        }
                    }
                });
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, frames)
}

/// A hand-written HTTP/1.1 upstream for framing corner cases. By path:
/// `/chunked` (a 103 interim head, then a chunked body written in pieces),
/// `/close` (HTTP/1.0, no length: the body ends when the socket closes),
/// `/once` (a `Content-Length` answer, then the socket is closed without
/// `Connection: close`, as an upstream's idle timeout would), `/then408`
/// (an answer, then a 408 and a close 20 ms later), `/head` (the request
/// head it received, as the body), anything else `Content-Length: 2` "ok"
/// (with header names in mixed case, which hyper would lowercase). Counts
/// accepted connections and requests.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

pub async fn raw_upstream() -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // one request head (the edge sends bodiless GETs here)
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    r.fetch_add(1, Ordering::SeqCst);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let pause = || tokio::time::sleep(Duration::from_millis(20));
                    match path.as_str() {
                        "/chunked" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
                                .await;
                            pause().await;
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: raw\r\n\r\n5\r\nhel")
                                .await;
                            pause().await;
                            let _ = s.write_all(b"lo\r\n7;x=y\r\n, world\r\n0\r\n").await;
                            pause().await;
                            let _ = s.write_all(b"X-Trailer: 1\r\n\r\n").await;
                        }
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil ").await;
                            pause().await;
                            let _ = s.write_all(b"the end").await;
                            return;
                        }
                        "/then408" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            // an idle timeout's farewell, after the answer
                            pause().await;
                            let _ = s
                                .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                        "/head" => {
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                                head.len()
                            );
                            let _ = s.write_all(answer.as_bytes()).await;
                        }
                        "/once" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce")
                                .await;
                            return;
                        }
                        _ => {
                            let answer: &[u8] = if head.starts_with("HEAD ") {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Raw-Upstream: yes\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Raw-Upstream: yes\r\n\r\nok"
                            };
                            let _ = s.write_all(answer).await;
                        }
                    }
                }
            });
        }
    });
    RawUpstream {
        addr,
        conns,
        requests,
    }
}

/// One response read by [`RawClient`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The head as received, status line included.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name compared without case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A hand-driven HTTP/1.1 client connection: raw bytes out, responses read
/// one at a time (each read bounded by 5 s).
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn open(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false at end of stream (or on a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await {
            Err(_) => panic!("no response within 5 s; got so far: {:?}", self.text()),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next response; `None` if the connection closed before one.
    /// `head_request`: the request was a `HEAD` (no body follows).
    pub async fn try_response(&mut self, head_request: bool) -> Option<RawResponse> {
        let (status, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = res.parse(&self.buf).expect("a response head") {
                let get = |name: &str| {
                    res.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length = get("content-length").map(|v| v.parse::<usize>().unwrap());
                let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                break (res.code.unwrap(), n, length, chunked);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "closed mid-head: {:?}", self.text());
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        self.buf.drain(..head_len);
        let bodiless = head_request || status == 101 || status == 204 || status == 304;
        let body = if bodiless {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    assert!(self.fill().await, "closed mid-chunk");
                    continue;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..eol])
                        .split(';')
                        .next()
                        .unwrap(),
                    16,
                )
                .unwrap();
                while self.buf.len() < eol + 2 + size + 2 {
                    assert!(self.fill().await, "closed mid-chunk");
                }
                body.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                assert_eq!(&self.buf[eol + 2 + size..eol + 4 + size], b"\r\n");
                self.buf.drain(..eol + 4 + size);
                if size == 0 {
                    break body;
                }
            }
        } else if let Some(n) = length {
            while self.buf.len() < n {
                assert!(self.fill().await, "closed mid-body");
            }
            self.buf.drain(..n).collect()
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Some(RawResponse { status, head, body })
    }

    pub async fn response(&mut self, head_request: bool) -> RawResponse {
        match self.try_response(head_request).await {
            Some(r) => r,
            None => panic!("connection closed before a response"),
        }
    }

    /// Sends a `GET` of `path` for `host` and reads its response.
    pub async fn get(&mut self, host: &str, path: &str) -> RawResponse {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await;
        self.response(false).await
    }

    /// True if the peer closes (end of stream) within `within`, with
    /// nothing more sent.
    pub async fn closes_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
        }
    }
}

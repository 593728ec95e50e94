//! Integration tests of berth-edge on real sockets (127.0.0.1 only).

mod front;
mod latency;
mod observe;
mod policy;
mod replicas;
mod sticky;
mod support;
mod tls;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_edge::{EdgeConfig, RouteChange, RouteSpec};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn routes_by_host_ignoring_case_port_and_trailing_dot() {
    let (a, b) = (upstream("app-a").await, upstream("app-b").await);
    let e = edge().await;
    e.edge
        .apply(vec![
            upsert("a.localhost", vec![target("a", a.addr, 1)]),
            upsert("B.Localhost.", vec![target("b", b.addr, 1)]),
        ])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    assert_eq!(
        c.get("a.localhost", "/").await,
        (StatusCode::OK, "app-a".into())
    );
    assert_eq!(c.get("A.LOCALHOST:8080", "/").await.1, "app-a");
    assert_eq!(c.get("b.localhost.:80", "/").await.1, "app-b");
    assert_eq!(
        e.edge
            .routes()
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["a.localhost", "b.localhost"]
    );
}

#[tokio::test]
async fn proxy_errors_keep_the_connection_usable() {
    let a = upstream("app-a").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = edge().await;
    e.edge
        .apply(vec![
            upsert("a.localhost", vec![target("a", a.addr, 1)]),
            upsert("down.localhost", vec![target("down", closed, 1)]),
            upsert("empty.localhost", vec![]),
        ])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    let (s, body) = c.get("nobody.localhost", "/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("404"), "{body}");
    assert_eq!(c.get("a.localhost", "/").await.0, StatusCode::OK);
    assert_eq!(
        c.get("down.localhost", "/").await.0,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        c.get("empty.localhost", "/").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        c.get("a.localhost", "/").await,
        (StatusCode::OK, "app-a".into())
    );
    assert!(!c.is_closed());
    assert_eq!(e.edge.inflight("down"), 0);
    let m = e.edge.metrics_text();
    assert!(m.contains("berth_edge_unknown_host_total 1\n"), "{m}");
    assert!(m.contains("berth_edge_no_target_total 1\n"), "{m}");
    assert!(m.contains(
        "berth_edge_requests_total{host=\"a.localhost\",target=\"a\",class=\"2xx\"} 2\n"
    ));
    assert!(m.contains(
        "berth_edge_requests_total{host=\"down.localhost\",target=\"down\",class=\"5xx\"} 1\n"
    ));
    assert!(m.contains(
        "berth_edge_request_duration_seconds_count{host=\"a.localhost\",target=\"a\"} 2\n"
    ));
    assert!(m.contains("berth_edge_inflight_requests{target=\"a\"} 0\n"));
}

#[tokio::test]
async fn no_response_headers_in_time_is_504() {
    let a = upstream("app-a").await;
    let e = edge_with(EdgeConfig {
        upstream_timeout: Duration::from_millis(300),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    assert_eq!(
        c.get("a.localhost", "/hang").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(c.get("a.localhost", "/").await.0, StatusCode::OK);
    assert_eq!(e.edge.inflight("a"), 0);
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_stripped() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    let req = Request::get("/headers")
        .header("host", "a.localhost:9000")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .header("x-app", "kept")
        .body(body(""))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: BTreeMap<String, String> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "a.localhost:9000");
    assert_eq!(seen["host"], "a.localhost:9000");
    assert_eq!(seen["x-app"], "kept");
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!seen.contains_key(gone), "{gone} forwarded: {seen:?}");
    }
    // connection may be set by the pooled client itself, but never to x-hop
    assert!(!seen.get("connection").is_some_and(|v| v.contains("x-hop")));

    let resp = c
        .send(
            Request::get("/hop")
                .header("host", "a.localhost")
                .body(body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-app"], "kept");
    assert!(resp.headers().get("x-internal").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let stream = TcpStream::connect(e.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://A.localhost/headers")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: BTreeMap<String, String> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(seen["host"], "A.localhost");
        assert_eq!(seen["x-forwarded-host"], "A.localhost");
    }
    let req = Request::get("http://other.localhost/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let stream = TcpStream::connect(e.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut tx, chan) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(1);
    let req = Request::post("/echo")
        .header("host", "a.localhost")
        .body(chan)
        .unwrap();
    tx.send_data(Bytes::from_static(b"ping-1")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response headers before the request body ended")
        .unwrap();
    let mut body = resp.into_body();
    // Each chunk comes back before the next one is sent: nothing buffers the
    // whole body on either side.
    for i in 2..=4 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("echoed chunk")
            .unwrap()
            .unwrap();
        assert!(frame.into_data().unwrap().starts_with(b"ping-"));
        tx.send_data(Bytes::from(format!("ping-{i}")))
            .await
            .unwrap();
    }
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"ping-4"));
    assert_eq!(e.edge.inflight("a"), 0);
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_neutralised() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    // conflicting Content-Length values: 400 and closed, upstream untouched
    let (out, closed) = raw_exchange(
        e.addr,
        b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
    // non-chunked Transfer-Encoding: 400
    let (out, closed) = raw_exchange(
        e.addr,
        b"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // TE + CL, in both orders: 400, the connection closed, nothing forwarded;
    // the bytes after the chunked body are never read as a request.
    for head in [
        "Content-Length: 40\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 40",
    ] {
        let req = format!(
            "POST /first HTTP/1.1\r\nHost: a.localhost\r\n{head}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.localhost\r\n\r\n"
        );
        let (out, closed) = raw_exchange(e.addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(closed, "connection left open: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    }
    // the same after a good keep-alive request on the same connection
    let (out, closed) = raw_exchange(
        e.addr,
        b"GET /ok HTTP/1.1\r\nHost: a.localhost\r\n\r\nPOST /second HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("HTTP/1.1 400"), "{out}");
    assert!(closed, "connection left open: {out}");
    let paths = a.paths.lock().unwrap().clone();
    assert_eq!(paths, ["/ok"], "only the good request was forwarded");
}

#[tokio::test]
async fn malformed_chunked_request_body_is_400_and_closes() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    for body in [
        "zz\r\n\r\n",
        "3\r\nabc\r\nzz\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "3\nabc\n0\n\n",
    ] {
        // a request after it on the same connection is never answered
        let req = format!(
            "POST /collect HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n"
        );
        let (out, closed) = raw_exchange(e.addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{body:?}: {out}");
        assert!(out.contains("malformed request body"), "{body:?}: {out}");
        assert!(closed, "{body:?}: connection left open: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{body:?}: {out}");
    }
    assert!(!a.paths.lock().unwrap().iter().any(|p| p == "/after"));
    // not counted against the target as a bad gateway
    let metrics = e.edge.metrics_text();
    for line in metrics.lines().filter(|l| l.contains("5xx")) {
        assert!(line.ends_with(" 0"), "{line}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("class=\"4xx\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // a well-formed chunked body still goes through
    let (out, _) = raw_exchange(
        e.addr,
        b"POST /collect HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("abc"),
        "{out}"
    );
}

/// The `traceparent` and `tracestate` the app saw for one request.
async fn traced(
    c: &mut Conn,
    method: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> (String, Option<String>) {
    let mut req = Request::builder()
        .method(method)
        .uri("/headers")
        .header("host", "a.localhost");
    if let Some(v) = traceparent {
        req = req.header("traceparent", v);
    }
    if let Some(v) = tracestate {
        req = req.header("tracestate", v);
    }
    // a body sends the request through hyper's path, none through front.rs
    let body = if method == "POST" {
        body("x")
    } else {
        body("")
    };
    let resp = c.send(req.body(body).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen: BTreeMap<String, String> =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    (
        seen.get("traceparent")
            .cloned()
            .expect("the app got a traceparent"),
        seen.get("tracestate").cloned(),
    )
}

fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3].len() == 2
}

#[tokio::test]
async fn trace_context_reaches_the_app_on_both_paths() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    for method in ["GET", "POST"] {
        // a valid one: the same trace id, the edge's span as the new parent
        let (tp, ts) = traced(&mut c, method, Some(&incoming), Some("vendor=abc")).await;
        assert!(is_valid_traceparent(&tp), "{method}: {tp}");
        assert!(tp.starts_with(&format!("00-{trace}-")), "{method}: {tp}");
        assert_ne!(tp, incoming, "{method}: the parent id is the edge's span");
        assert!(tp.ends_with("-01"), "{method}: flags kept: {tp}");
        assert_eq!(ts.as_deref(), Some("vendor=abc"), "{method}");
        // none: a fresh valid one, a new trace each time
        let (t1, _) = traced(&mut c, method, None, None).await;
        let (t2, _) = traced(&mut c, method, None, None).await;
        assert!(
            is_valid_traceparent(&t1) && is_valid_traceparent(&t2),
            "{t1} {t2}"
        );
        assert_ne!(t1[3..35], t2[3..35], "{method}");
        // malformed: replaced, never forwarded, and its tracestate dropped
        let bad = format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase());
        let (tp, ts) = traced(&mut c, method, Some(&bad), Some("vendor=abc")).await;
        assert!(is_valid_traceparent(&tp), "{method}: {tp}");
        assert!(!tp.to_lowercase().contains(trace), "{method}: {tp}");
        assert_eq!(ts, None, "{method}");
    }
}

#[tokio::test]
async fn error_pages_name_the_deployment_and_short_sha_never_the_address() {
    let e = edge().await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut down = target("dep_1", dead, 1);
    down.deployment_id = Some("dep_1".into());
    down.sha = Some(sha.into());
    e.edge
        .apply(vec![
            upsert("a.localhost", vec![down]),
            upsert("b.localhost", vec![]),
        ])
        .unwrap();
    let port = dead.port().to_string();
    // GET goes through front.rs, POST with a body through hyper's path
    for (req_line, extra) in [
        ("GET / HTTP/1.1", ""),
        ("POST / HTTP/1.1", "Content-Length: 1\r\n"),
    ] {
        let body = if extra.is_empty() { "" } else { "x" };
        let req =
            format!("{req_line}\r\nHost: a.localhost\r\nConnection: close\r\n{extra}\r\n{body}");
        let (out, _) = raw_exchange(e.addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        assert!(
            out.contains("could not be reached (deployment dep_1, commit 0123456)\n"),
            "{out}"
        );
        assert!(!out.contains(&port) && !out.contains("127.0.0.1"), "{out}");
        assert!(!out.contains(sha), "only the short SHA: {out}");
        let req = format!("{req_line}\r\nHost: a.localhost\r\nAccept: application/json\r\nConnection: close\r\n{extra}\r\n{body}");
        let (out, _) = raw_exchange(e.addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap().trim()).unwrap();
        assert_eq!(json["status"], 502, "{json}");
        assert_eq!(json["deploymentId"], "dep_1", "{json}");
        assert_eq!(json["commit"], "0123456", "{json}");
        assert!(!json.to_string().contains(&port), "{json}");
    }
    // no target: 503, no deployment to name
    let (out, _) = raw_exchange(
        e.addr,
        b"GET / HTTP/1.1\r\nHost: b.localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.contains(
            "{\"error\":\"service unavailable: no healthy instance for this host\",\"status\":503}"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn pipelined_keep_alive_requests_with_bodies_are_all_served() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhelloPOST /echo HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /last HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed after the last request")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    assert!(out.contains("hello") && out.contains("abc"), "{out}");
}

#[tokio::test]
async fn websocket_upgrade_is_spliced_and_closed_by_drain() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"hello over ws").await.unwrap();
    let mut buf = [0u8; 13];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello over ws");

    // switch the route away, then drain: the spliced connection is closed
    e.edge
        .apply(vec![RouteChange::Remove {
            host: "a.localhost".into(),
        }])
        .unwrap();
    let report = e.edge.drain("a", Duration::from_secs(5)).await;
    assert_eq!(report.upgraded_closed, 1);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("client connection closed after drain")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn weights_split_traffic_exactly() {
    let (a, b) = (upstream("stable").await, upstream("canary").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("stable", a.addr, 75), target("canary", b.addr, 25)],
        )])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    let mut canary = 0;
    for _ in 0..400 {
        let (s, body) = c.get("a.localhost", "/").await;
        assert_eq!(s, StatusCode::OK);
        if body == "canary" {
            canary += 1;
        }
    }
    assert_eq!(canary, 100);
}

#[tokio::test]
async fn in_flight_request_survives_cutover_and_drain() {
    let (old, new) = (upstream("old").await, upstream("new").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("old", old.addr, 1)],
        )])
        .unwrap();
    let addr = e.addr;
    let slow = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        c.get("a.localhost", "/slow?ms=1500").await
    });
    // wait until the slow request is running on the old target
    let t0 = Instant::now();
    while e.edge.inflight("old") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "slow request never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("new", new.addr, 1)],
        )])
        .unwrap();
    let mut c = Conn::open(addr).await;
    assert_eq!(c.get("a.localhost", "/").await.1, "new");
    let report = e.edge.drain("old", Duration::from_secs(30)).await;
    assert_eq!(report.inflight_at_start, 1);
    assert_eq!(report.aborted, 0);
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "old".into()));
    assert_eq!(e.edge.inflight("old"), 0);
}

#[tokio::test]
async fn drain_deadline_aborts_with_504() {
    let (old, new) = (upstream("old").await, upstream("new").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("old", old.addr, 1)],
        )])
        .unwrap();
    let addr = e.addr;
    let hung = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        c.get("a.localhost", "/hang").await.0
    });
    let t0 = Instant::now();
    while e.edge.inflight("old") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "request never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("new", new.addr, 1)],
        )])
        .unwrap();
    let report = e.edge.drain("old", Duration::from_millis(200)).await;
    assert_eq!(report.aborted, 1);
    assert_eq!(hung.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(e.edge.inflight("old"), 0);
}

#[tokio::test]
async fn switching_routes_under_load_loses_nothing() {
    let (a, b) = (upstream("blue").await, upstream("green").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("blue", a.addr, 1)])])
        .unwrap();
    let addr = e.addr;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<Bytes>>();
        let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
        let (mut ok, mut bad, mut errors) = (0usize, 0usize, 0usize);
        let t0 = Instant::now();
        for _ in 0..2000 {
            if *stop_rx.borrow_and_update() || t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            let req = Request::get(uri.clone())
                .header("host", "a.localhost")
                .body(http_body_util::Empty::new())
                .unwrap();
            match client.request(req).await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.into_body().collect().await;
                    ok += 1
                }
                Ok(_) => bad += 1,
                Err(_) => errors += 1,
            }
        }
        (ok, bad, errors)
    });
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (id, up) = if i % 2 == 0 {
            ("green", b.addr)
        } else {
            ("blue", a.addr)
        };
        e.edge
            .apply(vec![upsert("a.localhost", vec![target(id, up, 1)])])
            .unwrap();
    }
    let _ = stop_tx.send(true);
    let (ok, bad, errors) = load.await.unwrap();
    assert_eq!((bad, errors), (0, 0));
    assert!(ok > 0);
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(a.hits.load(SeqCst) + b.hits.load(SeqCst), ok);
}

#[tokio::test]
async fn invalid_batch_keeps_the_old_table() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let before = e.edge.routes();
    let err = e
        .edge
        .apply(vec![
            RouteChange::Remove {
                host: "a.localhost".into(),
            },
            RouteChange::Upsert {
                host: "bad_host!.localhost".into(),
                route: RouteSpec::default(),
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("bad_host!.localhost"), "{err}");
    assert_eq!(e.edge.routes(), before);
    let mut c = Conn::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn persisted_routes_are_served_after_restart() {
    let a = upstream("app-a").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig {
        routes_file: Some(dir.path().join("routes.json")),
        ..EdgeConfig::default()
    };
    let first = edge_with(cfg.clone()).await;
    first
        .edge
        .apply(vec![
            upsert("a.localhost", vec![target("a", a.addr, 1)]),
            upsert("*.preview.localhost", vec![target("a", a.addr, 1)]),
        ])
        .unwrap();
    let routes = first.edge.routes();
    drop(first);
    let second = edge_with(cfg).await;
    assert_eq!(second.edge.routes(), routes);
    let mut c = Conn::open(second.addr).await;
    assert_eq!(c.get("a.localhost", "/").await.1, "app-a");
    assert_eq!(c.get("pr-7.preview.localhost", "/").await.1, "app-a");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let a = upstream("app-a").await;
    let mut e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let addr = e.addr;
    let slow = tokio::spawn(async move {
        let mut c = Conn::open(addr).await;
        c.get("a.localhost", "/slow?ms=500").await
    });
    let t0 = Instant::now();
    while e.edge.inflight("a") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "request never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = e.stop.take().unwrap().send(());
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "app-a".into()));
    e.served.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn drain_closes_websockets_with_1001_at_a_frame_boundary() {
    let (up, frames) = ws_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("ws.localhost", vec![target("w", up, 1)])])
        .unwrap();
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during handshake"
        );
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    let mut welcome = [0u8; 9];
    s.read_exact(&mut welcome).await.unwrap();
    assert_eq!(&welcome, b"\x81\x07welcome");

    // The upstream starts a 10-byte frame and finishes it 300 ms later; the
    // drain comes in between and must not cut the frame.
    s.write_all(&masked_frame(1, b"half")).await.unwrap();
    let mut first_half = [0u8; 7];
    s.read_exact(&mut first_half).await.unwrap();
    assert_eq!(&first_half, b"\x81\x0a01234");
    e.edge
        .apply(vec![RouteChange::Remove {
            host: "ws.localhost".into(),
        }])
        .unwrap();
    let report = e.edge.drain("w", Duration::from_secs(5)).await;
    assert_eq!(report.upgraded_closed, 1);

    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("client connection closed after drain")
        .unwrap();
    assert_eq!(
        rest, b"56789\x88\x02\x03\xe9",
        "rest of the frame, then close 1001"
    );

    // the upstream got a masked close frame with 1001 too
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = frames.lock().unwrap().clone();
        if got.iter().any(|(op, _)| *op == 8) {
            assert_eq!(got.last().unwrap(), &(8, vec![0x03, 0xE9]), "{got:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no close frame upstream: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_threads_serves_on_every_worker_and_stops() {
    let a = upstream("app-a").await;
    let edge = berth_edge::Edge::new(EdgeConfig::default()).unwrap();
    edge.apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = edge
        .serve_threads("127.0.0.1:0".parse().unwrap(), 2, async move {
            let _ = rx.await;
        })
        .unwrap();
    let addr = handle.local_addr();
    assert_ne!(addr.port(), 0);
    for _ in 0..8 {
        let mut c = Conn::open(addr).await;
        for _ in 0..3 {
            assert_eq!(
                c.get("a.localhost", "/").await,
                (StatusCode::OK, "app-a".to_string())
            );
        }
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 24);
    // a request in flight at shutdown still completes
    let mut slow = Conn::open(addr).await;
    let pending = tokio::spawn(async move { slow.get("a.localhost", "/slow?ms=300").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    assert_eq!(pending.await.unwrap().0, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("workers stopped");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn upstream_connections_are_reused_after_full_bodies_only() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    for _ in 0..5 {
        assert_eq!(c.get("a.localhost", "/").await.0, StatusCode::OK);
    }
    assert_eq!(
        a.conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one kept-alive upstream connection"
    );
    // a response abandoned half-way does not put its connection back: the
    // next request gets a fresh one and its own complete answer
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .unwrap();
    // wait until the upstream has the request, then go away
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.hits.load(std::sync::atomic::Ordering::SeqCst) < 6 {
        assert!(Instant::now() < deadline, "slow request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    assert_eq!(
        c.get("a.localhost", "/").await,
        (StatusCode::OK, "app-a".to_string())
    );
    assert_eq!(a.conns.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_interim_and_read_to_close_responses_are_relayed() {
    let up = raw_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("r.localhost", vec![target("r", up.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    for _ in 0..3 {
        assert_eq!(
            c.get("r.localhost", "/chunked").await,
            (StatusCode::OK, "hello, world".to_string())
        );
    }
    assert_eq!(
        up.conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a fully read chunked response keeps its connection"
    );
    assert_eq!(
        c.get("r.localhost", "/close").await,
        (StatusCode::OK, "until the end".to_string())
    );
    // the read-to-close connection is not reused
    assert_eq!(
        c.get("r.localhost", "/").await,
        (StatusCode::OK, "ok".to_string())
    );
    assert_eq!(up.conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(e.edge.inflight("r"), 0);
}

#[tokio::test]
async fn pooled_connections_closed_by_the_upstream_are_retried_not_502() {
    let up = raw_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("r.localhost", vec![target("r", up.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    // every answer leaves a pooled connection the upstream has closed
    for i in 0..20 {
        assert_eq!(
            c.get("r.localhost", "/once").await,
            (StatusCode::OK, "once".to_string()),
            "request {i}"
        );
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 20);
    // a 408 left on a pooled connection is not taken for the next answer
    for i in 0..5 {
        assert_eq!(
            c.get("r.localhost", "/then408").await,
            (StatusCode::OK, "ok".to_string()),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(e.edge.inflight("r"), 0);
}

//! The hand-written client side (`front.rs`): what it answers itself, and
//! the hand-over to hyper of everything else on the same connection.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use berth_edge::EdgeConfig;
use tokio::io::AsyncReadExt;

use crate::support::*;

/// Waits (at most 10 s) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    c.send(
        b"GET /p/1 HTTP/1.1\r\nHost: a.localhost\r\n\r\n\
          GET /p/2?x=y HTTP/1.1\r\nHost: a.localhost\r\n\r\n\
          HEAD /p/3 HTTP/1.1\r\nHost: a.localhost\r\n\r\n\
          GET /nowhere HTTP/1.1\r\nHost: b.localhost\r\n\r\n\
          OPTIONS /p/5 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    )
    .await;
    let r1 = c.response(false).await;
    assert_eq!((r1.status, r1.text()), (200, "app-a /p/1".to_string()));
    assert!(r1.header("date").is_some(), "{}", r1.head);
    assert_eq!(c.response(false).await.text(), "app-a /p/2?x=y");
    let head = c.response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("10"));
    let missing = c.response(false).await;
    assert_eq!(missing.status, 404);
    assert!(missing.text().starts_with("404 not found"));
    assert_eq!(c.response(false).await.text(), "app-a /p/5");
    // nothing left over: the connection still answers
    assert_eq!(c.get("a.localhost", "/p/6").await.text(), "app-a /p/6");
    assert_eq!(a.hits.load(SeqCst), 5);
    assert_eq!(a.conns.load(SeqCst), 1, "one upstream connection, reused");
    assert_eq!(e.edge.inflight("a"), 0);
    let m = e.edge.metrics_text();
    assert!(m.contains(
        "berth_edge_requests_total{host=\"a.localhost\",target=\"a\",class=\"2xx\"} 5\n"
    ));
    assert!(m.contains("berth_edge_unknown_host_total 1\n"), "{m}");
}

#[tokio::test]
async fn requests_with_bodies_are_handed_to_hyper_mid_connection() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    // one at a time
    let mut c = RawClient::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/p/1").await.text(), "app-a /p/1");
    c.send(b"POST /echo HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response(false).await.text(), "hello");
    c.send(b"POST /echo HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "abc");
    assert_eq!(c.get("a.localhost", "/p/2").await.text(), "app-a /p/2");

    // all in one write: the fast path answers the first, hyper the rest
    let mut c = RawClient::open(e.addr).await;
    c.send(
        b"GET /p/3 HTTP/1.1\r\nHost: a.localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nworld\
          POST /echo HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\
          GET /p/4 HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let texts = [
        c.response(false).await.text(),
        c.response(false).await.text(),
        c.response(false).await.text(),
        c.response(false).await.text(),
    ];
    assert_eq!(texts, ["app-a /p/3", "world", "ok", "app-a /p/4"]);
    assert!(c.closes_within(Duration::from_secs(5)).await);

    // smuggling after a fast-path request is still refused by the scanner
    let mut c = RawClient::open(e.addr).await;
    c.send(
        b"GET /p/5 HTTP/1.1\r\nHost: a.localhost\r\n\r\n\
          POST /p/6 HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /p/smuggled HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    )
    .await;
    assert_eq!(c.response(false).await.text(), "app-a /p/5");
    assert_eq!(c.response(false).await.status, 400);
    assert!(
        c.try_response(false).await.is_none(),
        "closed after the 400"
    );
    let paths = a.paths.lock().unwrap().clone();
    assert!(!paths.iter().any(|p| p.contains("smuggled") || p == "/p/6"));
    assert_eq!(e.edge.inflight("a"), 0);
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_is_spliced() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/p/1").await.text(), "app-a /p/1");
    c.send(b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    c.send(b"over the upgraded connection").await;
    let mut buf = [0u8; 28];
    c.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over the upgraded connection");
}

#[tokio::test]
async fn head_requests_get_the_length_and_no_body() {
    let up = raw_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("r.localhost", vec![target("r", up.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    c.send(b"HEAD / HTTP/1.1\r\nHost: r.localhost\r\n\r\n")
        .await;
    let r = c.response(true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("2"));
    // the upstream's header names are passed on as they were written
    assert!(r.head.contains("\r\nX-Raw-Upstream: yes\r\n"), "{}", r.head);
    // the framing of the connection is intact on both sides
    assert_eq!(c.get("r.localhost", "/").await.text(), "ok");
    // a proxy page to a HEAD has its length and no body either
    c.send(b"HEAD / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n")
        .await;
    let r = c.response(true).await;
    assert_eq!(r.status, 404);
    assert!(r.header("content-length").is_some());
    assert_eq!(c.get("r.localhost", "/").await.text(), "ok");
    assert_eq!(up.conns.load(SeqCst), 1);
}

#[tokio::test]
async fn responses_without_a_length_are_rechunked() {
    let up = raw_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("r.localhost", vec![target("r", up.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    for path in ["/chunked", "/close", "/chunked"] {
        let r = c.get("r.localhost", path).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("transfer-encoding").as_deref(),
            Some("chunked"),
            "{}",
            r.head
        );
        let want = if path == "/close" {
            "until the end"
        } else {
            "hello, world"
        };
        assert_eq!(r.text(), want);
    }
    assert_eq!(e.edge.inflight("r"), 0);
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_hypers_answers() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    // a malformed request line, first or after a good request
    let (out, closed) =
        raw_exchange(e.addr, b"GET / HTTP/1.1 extra\r\nHost: a.localhost\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET /p/1 HTTP/1.1\r\nHost: a.localhost\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "app-a /p/1");
    assert_eq!(c.response(false).await.status, 400);
    assert!(c.try_response(false).await.is_none());

    // a head too large for the fast path but not for hyper is still served
    let mut c = RawClient::open(e.addr).await;
    let big = format!(
        "GET /p/big HTTP/1.1\r\nHost: a.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    c.send(big.as_bytes()).await;
    assert_eq!(c.response(false).await.text(), "app-a /p/big");
    // so are more headers than the fast path parses
    let mut many = "GET /p/many HTTP/1.1\r\nHost: a.localhost\r\n".to_string();
    for i in 0..80 {
        many.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    c.send(many.as_bytes()).await;
    assert_eq!(c.response(false).await.text(), "app-a /p/many");

    // oversized: refused, never forwarded
    let hits = a.hits.load(SeqCst);
    let huge = format!(
        "GET /p/huge HTTP/1.1\r\nHost: a.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (out, closed) = raw_exchange(e.addr, huge.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 431"),
        "{out}"
    );
    assert!(closed);
    assert_eq!(a.hits.load(SeqCst), hits);
}

#[tokio::test]
async fn a_client_gone_mid_request_leaves_nothing_behind() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    for partial in [
        &b"GET /p/1 HTTP/1.1\r\nHost: a.loc"[..],
        b"GET /p/1 HTTP/1.1\r\nHost: a.localhost\r\n",
        b"GE",
    ] {
        let mut c = RawClient::open(e.addr).await;
        c.send(partial).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c);
    }
    // a client gone while its answer is being prepared
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    until("the slow request runs", || e.edge.inflight("a") == 1).await;
    drop(c);
    until("the slow request ends", || e.edge.inflight("a") == 0).await;
    assert_eq!(a.hits.load(SeqCst), 1, "partial heads were not forwarded");
    let mut c = RawClient::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/p/2").await.text(), "app-a /p/2");
}

#[tokio::test]
async fn heads_must_arrive_within_the_header_timeout() {
    let a = upstream("app-a").await;
    let e = edge_with(EdgeConfig {
        header_read_timeout: Duration::from_millis(600),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    // slow loris: a byte every 100 ms is not enough
    let mut c = RawClient::open(e.addr).await;
    let t0 = Instant::now();
    c.send(b"GET /p/1 HTTP/1.1\r\nHost: a.localhost\r\n").await;
    let mut cut = false;
    for b in b"X-Slow: 12345678901234567890123456789012345678901234567890\r\n" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.stream.try_write(&[*b]).is_err() || c.closes_within(Duration::ZERO).await {
            cut = true;
            break;
        }
    }
    assert!(cut || c.closes_within(Duration::from_secs(2)).await);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // an idle keep-alive connection is closed too, without an answer
    let mut c = RawClient::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/p/2").await.text(), "app-a /p/2");
    assert!(c.closes_within(Duration::from_secs(3)).await);
    // heads that each arrive in time are all served, however long the
    // connection lives
    let mut c = RawClient::open(e.addr).await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = format!("/p/{i}");
        assert_eq!(
            c.get("a.localhost", &path).await.text(),
            format!("app-a {path}")
        );
    }
    assert_eq!(a.hits.load(SeqCst), 7, "the slow head was not forwarded");
}

#[tokio::test]
async fn forwarded_headers_are_replaced_on_the_fast_path() {
    let up = raw_upstream().await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("r.localhost", vec![target("r", up.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    c.send(
        b"GET /head HTTP/1.1\r\nHost: R.localhost:80\r\nX-Forwarded-For: 6.6.6.6\r\n\
          x-forwarded-for: 7.7.7.7\r\nX-FORWARDED-HOST: evil.example\r\nX-Forwarded-Proto: https\r\n\
          Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic Zm9v\r\nX-App: Kept\r\n\r\n",
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    let sent = r.text();
    let mut lines = sent.split("\r\n");
    assert_eq!(lines.next(), Some("GET /head HTTP/1.1"));
    let headers: BTreeMap<String, Vec<String>> =
        lines
            .filter(|l| !l.is_empty())
            .fold(BTreeMap::new(), |mut m, l| {
                let (n, v) = l.split_once(':').unwrap();
                m.entry(n.to_ascii_lowercase())
                    .or_default()
                    .push(v.trim().to_string());
                m
            });
    assert_eq!(headers["x-forwarded-for"], ["127.0.0.1"], "{sent}");
    assert_eq!(headers["x-forwarded-proto"], ["http"]);
    assert_eq!(headers["x-forwarded-host"], ["R.localhost:80"]);
    assert_eq!(headers["host"], ["R.localhost:80"]);
    assert_eq!(headers["x-app"], ["Kept"]);
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
    ] {
        assert!(!headers.contains_key(gone), "{gone} forwarded: {sent}");
    }
}

#[tokio::test]
async fn fast_path_requests_count_in_flight_and_drain() {
    let (old, new) = (upstream("old").await, upstream("new").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("old", old.addr, 1)],
        )])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    until("the slow request runs", || e.edge.inflight("old") == 1).await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("new", new.addr, 1)],
        )])
        .unwrap();
    let edge = e.edge.clone();
    let drain = tokio::spawn(async move { edge.drain("old", Duration::from_secs(30)).await });
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "old".to_string()));
    let report = drain.await.unwrap();
    assert_eq!((report.inflight_at_start, report.aborted), (1, 0));
    // the next request on the same connection goes to the new target
    assert_eq!(c.get("a.localhost", "/p/1").await.text(), "new /p/1");

    // at the drain deadline a waiting fast-path request gets 504, and its
    // connection stays usable
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET /hang HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    until("the hanging request runs", || e.edge.inflight("new") == 1).await;
    let newer = upstream("newer").await;
    e.edge
        .apply(vec![upsert(
            "a.localhost",
            vec![target("newer", newer.addr, 1)],
        )])
        .unwrap();
    let report = e.edge.drain("new", Duration::from_millis(200)).await;
    assert_eq!(report.aborted, 1);
    let r = c.response(false).await;
    assert_eq!(r.status, 504);
    assert!(r.text().contains("drained"), "{}", r.text());
    assert_eq!(e.edge.inflight("new"), 0);
    assert_eq!(c.get("a.localhost", "/p/2").await.text(), "newer /p/2");
}

#[tokio::test]
async fn a_request_on_an_idle_connection_just_after_shutdown_is_answered_with_close() {
    let a = upstream("app-a").await;
    let mut e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    assert_eq!(c.get("a.localhost", "/p/1").await.status, 200);
    let _ = e.stop.take().unwrap().send(());
    // the client sent its next request as the shutdown began: it is served
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = c.get("a.localhost", "/p/2").await;
    assert_eq!((r.status, r.text()), (200, "app-a /p/2".to_string()));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.closes_within(Duration::from_secs(2)).await);
    tokio::time::timeout(Duration::from_secs(5), e.served)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

/// Two edges (as two berth processes would) on one listening socket: the
/// second takes a duplicate of it; the first stops; no connection is
/// refused or lost meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edge_serves_a_duplicated_listener_while_the_first_stops() {
    let a = upstream("app-a").await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let dup = socket.try_clone().unwrap();
    let route = || vec![upsert("a.localhost", vec![target("a", a.addr, 1)])];
    let first = berth_edge::Edge::new(EdgeConfig::default()).unwrap();
    first.apply(route()).unwrap();
    let (stop1, stopped1) = tokio::sync::oneshot::channel::<()>();
    let h1 = first
        .serve_listeners(vec![socket], async move {
            let _ = stopped1.await;
        })
        .unwrap();
    assert_eq!(h1.local_addr(), addr);
    let second = berth_edge::Edge::new(EdgeConfig::default()).unwrap();
    second.apply(route()).unwrap();

    let stop_clients = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..3 {
        let stop = stop_clients.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut c = RawClient::open(addr).await;
            let mut i = 0;
            while !stop.load(SeqCst) {
                i += 1;
                let r = c.get("a.localhost", &format!("/w{w}/{i}")).await;
                if r.status == 200 {
                    ok += 1;
                } else {
                    failed.push(r.status);
                }
                if r.header("connection").as_deref() == Some("close") {
                    c = RawClient::open(addr).await;
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    let h2 = second
        .serve_listeners(vec![dup], async move {
            let _ = stopped2.await;
        })
        .unwrap();
    let _ = stop1.send(());
    tokio::time::timeout(Duration::from_secs(5), h1.wait())
        .await
        .expect("the first edge stopped");
    let before = second.metrics_text();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_clients.store(true, SeqCst);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(failed.is_empty(), "failed: {failed:?}");
        total += ok;
    }
    assert!(total > 10, "only {total} requests");
    assert_ne!(before, second.metrics_text(), "the second edge served");
    let _ = stop2.send(());
    tokio::time::timeout(Duration::from_secs(5), h2.wait())
        .await
        .expect("the second edge stopped");
}

#[tokio::test]
async fn shutdown_closes_idle_fast_path_connections_after_a_short_linger() {
    let a = upstream("app-a").await;
    let mut e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut idle = RawClient::open(e.addr).await;
    assert_eq!(idle.get("a.localhost", "/p/1").await.status, 200);
    let mut busy = RawClient::open(e.addr).await;
    busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    until("the slow request runs", || e.edge.inflight("a") == 1).await;
    let _ = e.stop.take().unwrap().send(());
    assert!(idle.closes_within(Duration::from_secs(2)).await);
    let r = busy.response(false).await;
    assert_eq!((r.status, r.text()), (200, "app-a".to_string()));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    tokio::time::timeout(Duration::from_secs(5), e.served)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn proxy_pages_keep_the_fast_path_connection() {
    let a = upstream("app-a").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = edge_with(EdgeConfig {
        upstream_timeout: Duration::from_millis(300),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![
            upsert("a.localhost", vec![target("a", a.addr, 1)]),
            upsert("down.localhost", vec![target("down", closed, 1)]),
            upsert("empty.localhost", vec![]),
        ])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    for (host, path, status, text) in [
        ("down.localhost", "/", 502, "502 bad gateway"),
        ("empty.localhost", "/", 503, "503 service unavailable"),
        ("a.localhost", "/hang", 504, "504 gateway timeout"),
        ("nobody.localhost", "/", 404, "404 not found"),
        ("a.localhost:", "/", 200, "app-a"),
    ] {
        let r = c.get(host, path).await;
        assert_eq!(r.status, status, "{host}{path}: {}", r.head);
        assert!(r.text().starts_with(text), "{host}{path}: {}", r.text());
        if status != 200 {
            assert_eq!(
                r.header("content-type").as_deref(),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
            assert!(r.header("connection").is_none(), "{}", r.head);
        }
    }
    assert_eq!(e.edge.inflight("a"), 0);
    assert_eq!(e.edge.inflight("down"), 0);
    let m = e.edge.metrics_text();
    assert!(m.contains(
        "berth_edge_requests_total{host=\"down.localhost\",target=\"down\",class=\"5xx\"} 1\n"
    ));
    assert!(m.contains("berth_edge_no_target_total 1\n"), "{m}");
}

#[tokio::test]
async fn connection_close_and_exact_targets_on_the_fast_path() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET /p/a%20b/;x=1?q=%2F&r=(1)*2,3:@!$'~ HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    assert_eq!(
        c.response(false).await.text(),
        "app-a /p/a%20b/;x=1?q=%2F&r=(1)*2,3:@!$'~"
    );
    c.send(b"GET /p/last HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.text(), "app-a /p/last");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.closes_within(Duration::from_secs(5)).await);
    // a 400 for an empty host key, as hyper's path answers it
    let mut c = RawClient::open(e.addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.text().contains("missing host"));
    assert_eq!(c.get("a.localhost", "/p/1").await.text(), "app-a /p/1");
}

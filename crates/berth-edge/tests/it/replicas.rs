//! Replicas of one deployment (issue 11): a request that finds a replica
//! refusing its connection, or a new connection closed before any answer,
//! goes to another replica of the same deployment, and the replica leaves
//! the rotation at once (passive health) until a probe says it is healthy.
//! A request whose body was sent is never sent twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use berth_edge::{Balance, EdgeConfig, TargetSpec, STICKY_COOKIE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// Replica `index` (from 0) of deployment `dep`, ids as berth-server gives
/// them (`d1`, `d1~2`, ...).
fn replica(dep: &str, index: usize, addr: SocketAddr, weight: u32) -> TargetSpec {
    let id = if index == 0 {
        dep.to_string()
    } else {
        format!("{dep}~{}", index + 1)
    };
    TargetSpec {
        deployment_id: Some(dep.into()),
        sha: Some(format!("{dep}0000000")),
        ..target(&id, addr, weight)
    }
}

/// A port nothing listens on: connections to it are refused.
fn refused_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An upstream that accepts connections, reads the request until `until`
/// appeared (the whole head, or a body marker), then closes without a byte
/// of answer. Counts the connections it took.
async fn dropper(until: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(until.len()).any(|w| w == until) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, n)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// One raw request on a fresh connection; the status and body.
async fn raw(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut c = RawClient::open(addr).await;
    c.send(req.as_bytes()).await;
    let r = c.response(req.starts_with("HEAD")).await;
    (r.status, r.text())
}

#[tokio::test]
async fn a_refused_replica_costs_no_request_and_leaves_the_rotation() {
    let (a, c) = (upstream("a").await, upstream("c").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![
                replica("d1", 0, a.addr, 1),
                replica("d1", 1, refused_port(), 1),
                replica("d1", 2, c.addr, 1),
            ],
        )])
        .unwrap();
    // the hand-written path (keep-alive, and fresh connections)...
    let mut conn = Conn::open(e.addr).await;
    for _ in 0..30 {
        let (status, body) = conn.get("shop.localhost", "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body == "a" || body == "c", "{body}");
    }
    for _ in 0..10 {
        let (status, _) = raw(
            e.addr,
            "HEAD / HTTP/1.1\r\nhost: shop.localhost\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
    }
    // ...hyper's side with its own fast client (a GET with a length)...
    for _ in 0..10 {
        let (status, body) = raw(
            e.addr,
            "GET / HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // ...and hyper's client (a body)
    for _ in 0..10 {
        let (status, body) = raw(
            e.addr,
            "POST /echo HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    assert!(
        e.edge.is_down("d1~2"),
        "the refusing replica left the rotation"
    );
    assert!(!e.edge.is_down("d1") && !e.edge.is_down("d1~3"));
    let m = e.edge.metrics_text();
    assert_eq!(metric(&m, "berth_edge_passive_down_total"), 1, "{m}");
    // out of rotation at the first refusal: later requests do not try it
    assert_eq!(metric(&m, "berth_edge_retried_total"), 1, "{m}");
    assert_eq!(
        a.hits.load(Ordering::SeqCst) + c.hits.load(Ordering::SeqCst),
        60
    );
    assert!(!m.contains("status=\"5xx\""), "no request failed: {m}");
}

#[tokio::test]
async fn a_probe_puts_a_replica_back_and_takes_one_out() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![replica("d1", 0, a.addr, 1), replica("d1", 1, b.addr, 1)],
        )])
        .unwrap();
    e.edge.report_health("d1~2", false);
    let mut conn = Conn::open(e.addr).await;
    for _ in 0..10 {
        assert_eq!(conn.get("shop.localhost", "/").await.1, "a");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    e.edge.report_health("d1~2", true);
    let mut seen_b = 0;
    for _ in 0..10 {
        if conn.get("shop.localhost", "/").await.1 == "b" {
            seen_b += 1;
        }
    }
    assert_eq!(seen_b, 5, "back in turn after a healthy probe");
    // every replica down: the route still tries them rather than a 503
    e.edge.report_health("d1", false);
    e.edge.report_health("d1~2", false);
    assert_eq!(conn.get("shop.localhost", "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_new_connection_closed_before_an_answer_sends_idempotent_requests_elsewhere() {
    let a = upstream("a").await;
    let (gone, taken) = dropper(b"\r\n\r\n").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![replica("d1", 0, gone, 1), replica("d1", 1, a.addr, 1)],
        )])
        .unwrap();
    let (status, body) = raw(
        e.addr,
        "GET / HTTP/1.1\r\nhost: shop.localhost\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "a"));
    assert_eq!(
        taken.load(Ordering::SeqCst),
        1,
        "the dropping replica got it first"
    );
    assert!(e.edge.is_down("d1"));
    // a bodiless PUT on hyper's client, once a probe put the replica back;
    // round robin: send until the dropping replica has had one
    e.edge.report_health("d1", true);
    let before = taken.load(Ordering::SeqCst);
    for _ in 0..4 {
        let (status, body) = raw(
            e.addr,
            "PUT / HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "a"));
        if taken.load(Ordering::SeqCst) > before {
            break;
        }
    }
    assert_eq!(
        taken.load(Ordering::SeqCst),
        before + 1,
        "the PUT went there first"
    );
    assert!(e.edge.is_down("d1"));
}

#[tokio::test]
async fn a_post_whose_body_was_sent_is_not_sent_twice() {
    let a = upstream("a").await;
    // closes once it has read the whole body
    let (gone, taken) = dropper(b"payload-end").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![replica("d1", 0, gone, 1), replica("d1", 1, a.addr, 1)],
        )])
        .unwrap();
    let post = "POST /collect HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 11\r\nconnection: close\r\n\r\npayload-end";
    let mut statuses = Vec::new();
    // round robin: two requests, one lands on each replica
    for _ in 0..2 {
        statuses.push(raw(e.addr, post).await.0);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 502],
        "the dropped POST failed, not retried"
    );
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        1,
        "the app saw the POST once"
    );
}

#[tokio::test]
async fn no_retry_onto_another_deployment() {
    let b = upstream("b").await;
    let e = edge().await;
    // a canary: d1 (refusing) and d2 are different versions
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![
                replica("d1", 0, refused_port(), 1),
                replica("d2", 0, b.addr, 1),
            ],
        )])
        .unwrap();
    let mut conn = Conn::open(e.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(conn.get("shop.localhost", "/").await.0.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 502]);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_sticky_visitor_is_spread_over_the_replicas_of_its_version() {
    let (a1, a2, a3, b) = (
        upstream("a1").await,
        upstream("a2").await,
        upstream("a3").await,
        upstream("b").await,
    );
    let e = edge().await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![
                replica("d1", 0, a1.addr, 50),
                replica("d1", 1, a2.addr, 50),
                replica("d1", 2, a3.addr, 50),
                replica("d2", 0, b.addr, 50),
            ],
        )])
        .unwrap();
    let cookie = format!("{STICKY_COOKIE}={}", e.edge.pin_value("d1"));
    let mut conn = Conn::open(e.addr).await;
    for _ in 0..30 {
        let req = Request::get("/")
            .header("host", "shop.localhost")
            .header("cookie", &cookie)
            .body(body(""))
            .unwrap();
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_ne!(&text[..], b"b", "the visitor left its version");
    }
    let hits = [&a1, &a2, &a3].map(|u| u.hits.load(Ordering::SeqCst));
    assert_eq!(hits, [10, 10, 10], "spread evenly over its replicas");
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn least_inflight_sends_new_requests_to_the_idle_replica() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let e = edge_with(EdgeConfig {
        balance: Balance::LeastInflight,
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![replica("d1", 0, a.addr, 1), replica("d1", 1, b.addr, 1)],
        )])
        .unwrap();
    // two slow requests: one on each replica (ties go in turn)
    let slow = |addr| async move {
        let mut c = Conn::open(addr).await;
        c.get("shop.localhost", "/slow?ms=1500").await
    };
    let s1 = tokio::spawn(slow(e.addr));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(e.edge.inflight("d1") + e.edge.inflight("d1~2"), 1);
    let busy = if e.edge.inflight("d1") == 1 { "a" } else { "b" };
    // while one replica is busy, every quick request goes to the other
    let mut conn = Conn::open(e.addr).await;
    for _ in 0..6 {
        let (status, who) = conn.get("shop.localhost", "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(who, busy);
    }
    assert_eq!(s1.await.unwrap().0, StatusCode::OK);
}

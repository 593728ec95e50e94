//! Edge policies (issue 15 item 4) on real sockets: `allow` by the socket's
//! address, `rate_limit` per client address, `max_body` before the app sees
//! the body, basic authentication of previews, maintenance.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_edge::{basic_auth_digest, Policy, RouteChange, RouteSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn with_policy(host: &str, addr: SocketAddr, policy: Policy) -> RouteChange {
    RouteChange::Upsert {
        host: host.into(),
        route: RouteSpec {
            targets: vec![target("app", addr, 1)],
            policy,
        },
    }
}

/// Sends `req` (with `connection: close`) from the local address `from`;
/// the status, the whole answer.
async fn from(from: &str, edge: SocketAddr, req: &[u8]) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut s = sock.connect(edge).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nconnection: close\r\n\r\n";
const POST: &[u8] =
    b"POST /echo HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";

#[tokio::test]
async fn allow_uses_the_socket_address_never_a_header() {
    let app = upstream("app").await;
    let e = edge().await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                allow: vec!["127.0.0.2/32".into()],
                ..Policy::default()
            },
        )])
        .unwrap();
    for req in [GET, POST] {
        let (status, text) = from("127.0.0.1", e.addr, req).await;
        assert_eq!(status, 403, "{text}");
        let (status, text) = from("127.0.0.2", e.addr, req).await;
        assert_eq!(status, 200, "{text}");
    }
    let forged = b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nx-forwarded-for: 127.0.0.2\r\nx-real-ip: 127.0.0.2\r\nconnection: close\r\n\r\n";
    assert_eq!(from("127.0.0.1", e.addr, forged).await.0, 403);
    assert_eq!(app.hits.load(Ordering::SeqCst), 2);
}

/// A counter of the edge's `/metrics` text.
fn counter(e: &Running, name: &str) -> u64 {
    e.edge
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_held_back_and_another_address_is_served_meanwhile() {
    let app = upstream("app").await;
    // (the burst's connections all get in: this is about the tarpit)
    let e = edge_with(berth_edge::EdgeConfig {
        flagged_conns_per_client: u32::MAX,
        ..berth_edge::EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                rate_limit: Some(20),
                ..Policy::default()
            },
        )])
        .unwrap();
    // 100 at once from one address, half of them POSTs (hyper's path), half
    // GETs (the hand-written one)
    let answered_429 = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let (edge, answered_429) = (e.addr, answered_429.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let (status, text) =
                    from("127.0.0.1", edge, if i % 2 == 0 { GET } else { POST }).await;
                if status == 429 {
                    answered_429.fetch_add(1, Ordering::SeqCst);
                }
                (i, status, text, sent.elapsed())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&e, "berth_edge_rate_limited_total") < 50 {
        assert!(Instant::now() < deadline, "the burst was not refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // the 429s are held; another address is answered meanwhile (some of
    // the 429s decided before its request started are still held when its
    // answer arrives)
    let refused_before = counter(&e, "berth_edge_rate_limited_total") as usize;
    let (status, text) = from("127.0.0.2", e.addr, GET).await;
    assert_eq!(status, 200, "{text}");
    let answered = answered_429.load(Ordering::SeqCst);
    assert!(
        answered < refused_before,
        "all {refused_before} 429s left before another address's request was answered"
    );
    for _ in 0..15 {
        assert_eq!(from("127.0.0.2", e.addr, GET).await.0, 200);
    }
    let mut limited = [0, 0];
    for b in burst {
        let (i, status, text, took) = b.await.unwrap();
        if status == 429 {
            limited[i % 2] += 1;
            assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
            assert!(
                took >= Duration::from_millis(900),
                "a 429 left after {took:?}"
            );
        } else {
            assert_eq!(status, 200, "{text}");
        }
    }
    assert!(
        limited[0] + limited[1] >= 50,
        "only {limited:?} of 100 refused"
    );
    assert!(
        limited[0] > 0 && limited[1] > 0,
        "GETs and POSTs: {limited:?}"
    );
    assert_eq!(counter(&e, "berth_edge_rate_limited_closed_total"), 0);
    assert_eq!(
        app.hits.load(Ordering::SeqCst) as u64,
        116 - counter(&e, "berth_edge_rate_limited_total"),
        "a refused request reached the app"
    );
}

/// Sends a keep-alive GET on a new connection from 127.0.0.1; the response
/// head and how long it took.
async fn keep_alive_get(edge: SocketAddr) -> (String, Duration) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(edge).await.unwrap();
    let sent = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: shop.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!("no answer: {other:?}"),
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), sent.elapsed())
}

#[tokio::test]
async fn a_full_tarpit_answers_429_at_once_and_closes_the_connection() {
    let app = upstream("app").await;
    let e = edge_with(berth_edge::EdgeConfig {
        tarpit_per_client: 16,
        flagged_conns_per_client: u32::MAX,
        ..berth_edge::EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                rate_limit: Some(1),
                ..Policy::default()
            },
        )])
        .unwrap();
    let many = 16 + 44;
    let all: Vec<_> = (0..many)
        .map(|_| tokio::spawn(keep_alive_get(e.addr)))
        .collect();
    let (mut held, mut closed, mut ok) = (0, 0, 0);
    for a in all {
        let (head, took) = a.await.unwrap();
        if head.starts_with("HTTP/1.1 200") {
            ok += 1;
            continue;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head}");
        if head.contains("\r\nconnection: close\r\n") {
            closed += 1;
            assert!(
                took < Duration::from_millis(900),
                "held {took:?} and closed"
            );
        } else {
            held += 1;
            assert!(
                took >= Duration::from_millis(900),
                "a 429 left after {took:?}"
            );
        }
    }
    assert!(ok <= 4, "{ok} answered under a limit of 1/s");
    assert!(closed > 0, "the tarpit never filled ({held} held)");
    assert!(held >= 16, "only {held} held");
    assert_eq!(counter(&e, "berth_edge_rate_limited_closed_total"), closed);
    assert_eq!(counter(&e, "berth_edge_rate_limited_total"), held + closed);
}

/// A keep-alive GET on a new connection from `from`; the status, or 0
/// when the connection was closed without an answer.
/// (The connection, to keep it open, when it was answered.)
async fn try_get(from: &str, edge: SocketAddr) -> (u16, Option<tokio::net::TcpStream>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    // a connection reset at once may fail its connect already
    let Ok(mut s) = sock.connect(edge).await else {
        return (0, None);
    };
    if s.write_all(b"GET / HTTP/1.1\r\nhost: shop.localhost\r\n\r\n")
        .await
        .is_err()
    {
        return (0, None);
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            Ok(_) => break,
            Err(_) => panic!("neither an answer nor a close"),
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, Some(s))
}

#[tokio::test]
async fn an_address_over_its_limit_gets_new_connections_closed_and_comes_back_after_its_retry_after(
) {
    let app = upstream("app").await;
    let e = edge_with(berth_edge::EdgeConfig {
        flagged_conns_per_client: 3,
        ..berth_edge::EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                rate_limit: Some(2),
                ..Policy::default()
            },
        )])
        .unwrap();
    // under its limit, an address is never refused a connection
    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, s) = try_get("127.0.0.1", e.addr).await;
        assert_eq!(status, 200);
        open.push(s);
    }
    // over it: a 429 (held in the tarpit), and the address is flagged
    let held = tokio::spawn(try_get("127.0.0.1", e.addr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&e, "berth_edge_rate_limited_total") < 1 {
        assert!(Instant::now() < deadline, "no 429");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // 3 more connections get in (they are counted), the next ones are
    // closed unread, while another address is served
    let mut counted = Vec::new();
    for _ in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        counted.push(sock.connect(e.addr).await.unwrap());
    }
    for i in 0..20 {
        let (status, _) = try_get("127.0.0.1", e.addr).await;
        assert_eq!(status, 0, "connection {i} over the allowance was answered");
        if i % 10 == 0 {
            // (twice: within its own limit)
            let (status, _) = try_get("127.0.0.2", e.addr).await;
            assert_eq!(status, 200, "another address");
        }
    }
    assert_eq!(counter(&e, "berth_edge_connections_refused_total"), 20);
    // the counted connections are served (the bucket has refilled or not)
    for mut s in counted {
        s.write_all(b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 429"),
            "{text}"
        );
    }
    let (status, _) = held.await.unwrap();
    assert_eq!(status, 429);
    // once the last 429 was written and its Retry-After passed, the
    // address is admitted again and served
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = counter(&e, "berth_edge_connections_refused_total");
    for _ in 0..5 {
        let (status, s) = try_get("127.0.0.1", e.addr).await;
        assert_ne!(status, 0, "refused after its Retry-After");
        open.push(s);
    }
    assert_eq!(counter(&e, "berth_edge_connections_refused_total"), refused);
}

#[tokio::test]
async fn without_a_rate_limit_no_connection_is_refused() {
    let app = upstream("app").await;
    let e = edge_with(berth_edge::EdgeConfig {
        flagged_conns_per_client: 1,
        ..berth_edge::EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy::default(),
        )])
        .unwrap();
    let all: Vec<_> = (0..64)
        .map(|_| tokio::spawn(try_get("127.0.0.1", e.addr)))
        .collect();
    for a in all {
        assert_eq!(a.await.unwrap().0, 200);
    }
    assert_eq!(counter(&e, "berth_edge_connections_refused_total"), 0);
}

#[tokio::test]
async fn pipelined_requests_over_the_limit_are_answered_one_a_second_not_read_ahead() {
    let app = upstream("app").await;
    let e = edge().await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                rate_limit: Some(1),
                ..Policy::default()
            },
        )])
        .unwrap();
    // 50 requests in one write, without waiting for an answer
    let mut s = tokio::net::TcpStream::connect(e.addr).await.unwrap();
    let one = b"GET / HTTP/1.1\r\nhost: shop.localhost\r\n\r\n";
    s.write_all(&one.repeat(50)).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    // a 200, then a 429 held back for a second, after which the bucket has
    // a token again: a 200 and a 429 a second, the requests behind the
    // held one waiting unread
    let (ok, limited) = (
        text.matches("HTTP/1.1 200 ").count(),
        text.matches("HTTP/1.1 429 ").count(),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(limited >= 1 && ok <= 3 && limited <= 3, "{text}");
    let judged = counter(&e, "berth_edge_rate_limited_total");
    assert!(judged <= 3, "{judged} pipelined requests refused in 2.5 s");
    assert_eq!(app.hits.load(Ordering::SeqCst), ok);
}

#[tokio::test]
async fn a_body_over_max_body_gets_413_and_never_reaches_the_app() {
    let app = upstream("app").await;
    let e = edge().await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                max_body: Some(1024),
                ..Policy::default()
            },
        )])
        .unwrap();
    let big = "x".repeat(2048);
    let with_length = format!(
        "POST /collect HTTP/1.1\r\nhost: shop.localhost\r\ncontent-length: 2048\r\nconnection: close\r\n\r\n{big}"
    );
    let (status, text) = from("127.0.0.1", e.addr, with_length.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    let chunked = format!(
        "POST /collect HTTP/1.1\r\nhost: shop.localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        &big[..1024],
        &big[..1024]
    );
    let (status, text) = from("127.0.0.1", e.addr, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0, "the app saw a request");
    // under the limit, chunked or not, the body arrives whole
    let small = "POST /collect HTTP/1.1\r\nhost: shop.localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let (status, text) = from("127.0.0.1", e.addr, small.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("hello world"), "{text}");
    assert_eq!(from("127.0.0.1", e.addr, POST).await.0, 200);
}

#[tokio::test]
async fn a_preview_asks_for_its_password() {
    let app = upstream("app").await;
    let e = edge().await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                basic_auth: Some(basic_auth_digest("ann", "s3cret")),
                ..Policy::default()
            },
        )])
        .unwrap();
    for req in [GET, POST] {
        let (status, text) = from("127.0.0.1", e.addr, req).await;
        assert_eq!(status, 401, "{text}");
        assert!(
            text.contains("www-authenticate: Basic realm=\"berth preview\""),
            "{text}"
        );
    }
    // "ann:s3cret" in base64
    let good = b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nauthorization: Basic YW5uOnMzY3JldA==\r\nconnection: close\r\n\r\n";
    assert_eq!(from("127.0.0.1", e.addr, good).await.0, 200);
    let wrong = b"GET / HTTP/1.1\r\nhost: shop.localhost\r\nauthorization: Basic YW5uOnMzY3JldR==\r\nconnection: close\r\n\r\n";
    assert_eq!(from("127.0.0.1", e.addr, wrong).await.0, 401);
    let good_post = b"POST /echo HTTP/1.1\r\nhost: shop.localhost\r\nauthorization: Basic YW5uOnMzY3JldA==\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    assert_eq!(from("127.0.0.1", e.addr, good_post).await.0, 200);
    assert_eq!(app.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn maintenance_answers_503_with_retry_after() {
    let app = upstream("app").await;
    let e = edge().await;
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy {
                maintenance: true,
                ..Policy::default()
            },
        )])
        .unwrap();
    let (status, text) = from("127.0.0.1", e.addr, GET).await;
    assert_eq!(status, 503);
    assert!(text.contains("retry-after: 120"), "{text}");
    assert!(text.contains("down for maintenance"), "{text}");
    assert_eq!(app.hits.load(Ordering::SeqCst), 0);
    // off again in the next table swap
    e.edge
        .apply(vec![with_policy(
            "shop.localhost",
            app.addr,
            Policy::default(),
        )])
        .unwrap();
    assert_eq!(from("127.0.0.1", e.addr, GET).await.0, 200);
}

#[tokio::test]
async fn a_bad_policy_refuses_the_batch() {
    let app = upstream("app").await;
    let e = edge().await;
    for bad in [
        Policy {
            allow: vec!["10.0.0.0/33".into()],
            ..Policy::default()
        },
        Policy {
            rate_limit: Some(0),
            ..Policy::default()
        },
    ] {
        let err = e
            .edge
            .apply(vec![with_policy("shop.localhost", app.addr, bad)])
            .unwrap_err();
        assert!(err.to_string().contains("shop.localhost"), "{err}");
    }
    assert!(e.edge.routes().is_empty());
}

//! Edge policies (issue 15 item 4) on real sockets: `allow` by the socket's
//! address, `rate_limit` per client address, `max_body` before the app sees
//! the body, basic authentication of previews, maintenance.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

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

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_and_another_address_is_unaffected() {
    let app = upstream("app").await;
    let e = edge().await;
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
    let mut limited = 0;
    let mut retry_after = None;
    for _ in 0..100 {
        let (status, text) = from("127.0.0.1", e.addr, GET).await;
        if status == 429 {
            limited += 1;
            retry_after = text
                .lines()
                .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_string));
        } else {
            assert_eq!(status, 200, "{text}");
        }
    }
    assert!(limited >= 50, "only {limited} of 100 refused");
    assert_eq!(retry_after.as_deref(), Some("1"));
    for _ in 0..15 {
        assert_eq!(from("127.0.0.2", e.addr, GET).await.0, 200);
    }
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

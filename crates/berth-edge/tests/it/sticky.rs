//! Sticky canary assignment (issue 16) on real sockets: new visitors split
//! by weight and get a cookie, a visitor keeping it stays on its version,
//! a pin value forces one, a forged cookie is ignored, and after the
//! rollout the cookie is neither read nor set.

use berth_edge::{EdgeConfig, TargetSpec, PIN_HEADER, STICKY_COOKIE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;

use crate::support::*;

fn version(id: &str, addr: std::net::SocketAddr, weight: u32) -> TargetSpec {
    TargetSpec {
        deployment_id: Some(id.into()),
        sha: Some(format!("{id}0000000")),
        ..target(id, addr, weight)
    }
}

/// One request on a fresh connection; `post` takes hyper's path.
async fn call(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    post: bool,
) -> (StatusCode, String, HeaderMap) {
    let mut c = Conn::open(addr).await;
    let mut req = Request::builder()
        .method(if post { "POST" } else { "GET" })
        .uri("/")
        .header("host", "shop.localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .send(req.body(body(if post { "x" } else { "" })).unwrap())
        .await
        .unwrap();
    let (parts, b) = resp.into_parts();
    let b = b.collect().await.unwrap().to_bytes();
    (
        parts.status,
        String::from_utf8_lossy(&b).into_owned(),
        parts.headers,
    )
}

fn cookie_of(h: &HeaderMap) -> Option<String> {
    let v = h.get("set-cookie")?.to_str().unwrap();
    Some(v.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn visitors_stay_on_the_version_they_first_got() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("edge.key");
    let e = edge_with(EdgeConfig {
        pin_key_file: Some(key.clone()),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![version("d1", v1.addr, 75), version("d2", v2.addr, 25)],
        )])
        .unwrap();

    for post in [false, true] {
        // 200 fresh visitors: exactly a quarter see v2, each gets a cookie
        // naming the version it saw
        let mut seen = std::collections::HashMap::<String, String>::new();
        let mut v2_count = 0;
        for _ in 0..200 {
            let (status, body, h) = call(e.addr, &[], post).await;
            assert_eq!(status, StatusCode::OK);
            let set = h.get("set-cookie").unwrap().to_str().unwrap().to_string();
            assert!(
                set.ends_with("; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"),
                "{set}"
            );
            assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
            let cookie = cookie_of(&h).unwrap();
            if let Some(before) = seen.insert(cookie.clone(), body.clone()) {
                assert_eq!(before, body, "one cookie, one version");
            }
            v2_count += usize::from(body == "v2");
        }
        assert_eq!(v2_count, 50, "post={post}");
        assert_eq!(seen.len(), 2, "one cookie value per version: {seen:?}");

        // a visitor that keeps its cookie sees one version, and is not
        // given a new cookie
        for (cookie, body) in &seen {
            let header = format!("other=1; {cookie}");
            for _ in 0..20 {
                let (_, b, h) = call(e.addr, &[("cookie", &header)], post).await;
                assert_eq!(&b, body);
                assert!(h.get("set-cookie").is_none());
            }
        }
    }

    // a pin value forces a version, by header or cookie; the app never
    // sees the header
    let pin = e.edge.pin_value("d2");
    for _ in 0..10 {
        let (_, b, h) = call(e.addr, &[(PIN_HEADER, &pin)], false).await;
        assert_eq!(b, "v2");
        assert!(h.get("set-cookie").is_none());
    }
    let (_, b, _) = call(
        e.addr,
        &[("cookie", &format!("{STICKY_COOKIE}={pin}"))],
        true,
    )
    .await;
    assert_eq!(b, "v2");
    let mut c = Conn::open(e.addr).await;
    let req = Request::get("/headers")
        .header("host", "shop.localhost")
        .header(PIN_HEADER, &pin)
        .body(body(""))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    let echoed = String::from_utf8_lossy(&echoed);
    assert!(!echoed.contains(PIN_HEADER), "{echoed}");

    // a forged or foreign value is ignored: split, and a cookie given
    let forged = format!("{STICKY_COOKIE}=d2.000000000000000000000000");
    let bare = format!("{STICKY_COOKIE}=d2");
    let mut forced = 0;
    for _ in 0..40 {
        for c in [&forged, &bare] {
            let (_, b, h) = call(e.addr, &[("cookie", c)], false).await;
            forced += usize::from(b == "v2");
            assert!(h.get("set-cookie").is_some());
        }
        let (_, b, _) = call(e.addr, &[(PIN_HEADER, "d2")], false).await;
        forced += usize::from(b == "v2");
    }
    assert!(forced < 60, "{forced} of 120 went to v2");

    // a restarted edge with the same key file keeps honouring the cookie
    let again = edge_with(EdgeConfig {
        pin_key_file: Some(key),
        ..EdgeConfig::default()
    })
    .await;
    assert_eq!(again.edge.pin_value("d2"), pin);

    // the rollout ends: one version, no cookie read or set
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![version("d2", v2.addr, 100), version("d1", v1.addr, 0)],
        )])
        .unwrap();
    let old = format!("{STICKY_COOKIE}={}", e.edge.pin_value("d1"));
    for post in [false, true] {
        let (_, b, h) = call(e.addr, &[("cookie", &old)], post).await;
        assert_eq!(b, "v2");
        assert!(h.get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn replicas_of_one_deployment_are_not_a_canary() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let e = edge().await;
    let mut r1 = version("d1", a.addr, 1);
    r1.id = "d1-0".into();
    let mut r2 = version("d1", b.addr, 1);
    r2.id = "d1-1".into();
    e.edge
        .apply(vec![upsert("shop.localhost", vec![r1, r2])])
        .unwrap();
    let (status, _, h) = call(e.addr, &[], false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.get("set-cookie").is_none());
}

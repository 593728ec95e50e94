//! The latency the canary judge reads, against what clients measure
//! (issue 16): a steady 400 ms candidate against a 5 ms baseline, through
//! real sockets.

use std::time::{Duration, Instant};

use berth_core::canary::{judge, Verdict, Window};
use berth_core::config::CanaryConfig;
use http::StatusCode;

use crate::support::*;

/// `conns` keep-alive clients send `each` requests to `path`; the
/// latencies each client measured (request sent to body read).
async fn measure(
    addr: std::net::SocketAddr,
    host: &'static str,
    path: &'static str,
    conns: usize,
    each: usize,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut out = Vec::new();
            for _ in 0..each {
                let t = Instant::now();
                let (status, _) = c.get(host, path).await;
                out.push(t.elapsed());
                assert_eq!(status, StatusCode::OK);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p95(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    let rank = (v.len() as f64 * 0.95).ceil() as usize;
    v[rank - 1].as_secs_f64()
}

fn window(e: &Running, target: &str) -> Window {
    let s = e.edge.target_stats(target);
    Window {
        requests: s.requests,
        errors: s.errors,
        latency: s.latency,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judged_p95_is_within_five_percent_of_what_clients_measure() {
    let (base, cand) = (upstream("base").await, upstream("cand").await);
    let e = edge().await;
    e.edge
        .apply(vec![
            upsert("b.localhost", vec![target("base", base.addr, 100)]),
            upsert("c.localhost", vec![target("cand", cand.addr, 100)]),
        ])
        .unwrap();
    let (b, c) = tokio::join!(
        measure(e.addr, "b.localhost", "/slow?ms=5", 4, 25),
        measure(e.addr, "c.localhost", "/slow?ms=400", 10, 4),
    );
    let (client_base, client_cand) = (p95(b), p95(c));
    let (wb, wc) = (window(&e, "base"), window(&e, "cand"));
    assert_eq!((wb.requests, wc.requests), (100, 40));
    let edge_cand = wc.p95().unwrap();
    // 5 % (the histogram's bound is 3.1 %) plus 10 ms for the client's own
    // scheduling on a loaded CI machine; the old coarse buckets were 80 ms off.
    let slack = |client: f64| client * 0.05 + 0.010;
    assert!(
        (edge_cand - client_cand).abs() <= slack(client_cand),
        "edge p95 {edge_cand} against client p95 {client_cand}"
    );
    assert!(wb.p95().unwrap() <= client_base * 1.05, "{wb:?}");
    // The figure in the failure message is that p95.
    let cfg = CanaryConfig {
        min_requests: 20,
        ..CanaryConfig::default()
    };
    let Verdict::Regressed(why) = judge(&wb, &wc, &cfg, 0) else {
        panic!("a 400 ms candidate against 5 ms passed");
    };
    let ms: f64 = why
        .strip_prefix("p95 latency ")
        .and_then(|r| r.split("ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{why}"));
    eprintln!("client p95 {client_cand:.4}s, edge p95 {edge_cand:.4}s; {why}");
    // The upstream sleeps at least 400 ms; how much more depends on the
    // machine's load, hence the comparison with the client, not a range.
    assert!(ms >= 380.0, "{why}");
    assert!(
        (ms / 1000.0 - client_cand).abs() <= slack(client_cand),
        "{why} against client p95 {client_cand}"
    );
}

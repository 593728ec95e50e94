//! Runs the edge with one route, for benchmarks (see bench/proxy.sh).
//!
//! `edge_bench --listen 127.0.0.1:18080 --host bench.localhost --upstream 127.0.0.1:18000 [--threads 2]
//! [--otlp-endpoint http://127.0.0.1:4318 [--trace-sample 0.01]]`
//!
//! `--upstream A,B,C` makes one target per address, all replicas of one
//! deployment (see bench/replicas.sh); `--balance rr|least` chooses among
//! them (round robin, the default, or least in-flight). `--rate-limit N`
//! gives the route a per-client rate limit (bench/policy.sh).
//! `--tls-cert chain.pem --tls-key key.pem` serves HTTPS instead of plain
//! HTTP on `--listen` with that certificate (bench/tls.sh).

use std::time::Duration;

use berth_edge::{
    certified_key, Balance, Edge, EdgeConfig, OtlpConfig, Policy, RouteChange, RouteSpec,
    TargetSpec, TlsCerts,
};

fn main() {
    let mut listen = "127.0.0.1:18080".to_string();
    let mut host = "bench.localhost".to_string();
    let mut upstream = String::new();
    let mut threads = 2usize;
    let mut otlp_endpoint = None;
    let mut trace_sample = 0.01f64;
    let mut balance = Balance::RoundRobin;
    let mut policy = Policy::default();
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => listen = value,
            "--host" => host = value,
            "--upstream" => upstream = value,
            "--threads" => threads = value.parse().unwrap_or(2),
            "--otlp-endpoint" => otlp_endpoint = Some(value),
            "--trace-sample" => trace_sample = value.parse().unwrap_or(0.01),
            "--rate-limit" => policy.rate_limit = value.parse().ok(),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            "--balance" => {
                balance = match value.as_str() {
                    "rr" => Balance::RoundRobin,
                    "least" => Balance::LeastInflight,
                    other => {
                        eprintln!("--balance takes rr or least, not {other:?}");
                        std::process::exit(2);
                    }
                }
            }
            other => {
                eprintln!("unknown flag {other}; usage: --listen ADDR --host H --upstream ADDR [--threads N]");
                std::process::exit(2);
            }
        }
    }
    if upstream.is_empty() {
        eprintln!("--upstream ADDR is required");
        std::process::exit(2);
    }
    let edge = Edge::new(EdgeConfig {
        upstream_timeout: Duration::from_secs(30),
        otlp: otlp_endpoint.map(|endpoint| OtlpConfig {
            endpoint,
            sample: trace_sample,
        }),
        balance,
        ..EdgeConfig::default()
    })
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    if let Err(e) = edge.apply(vec![RouteChange::Upsert {
        host,
        route: RouteSpec {
            policy,
            targets: upstream
                .split(',')
                .enumerate()
                .map(|(i, up)| TargetSpec {
                    deployment_id: Some("bench".into()),
                    sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
                    id: if i == 0 {
                        "bench".into()
                    } else {
                        format!("bench~{}", i + 1)
                    },
                    upstream: up.to_string(),
                    weight: 1,
                })
                .collect(),
        },
    }]) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|e| {
        eprintln!("bad --listen {listen}: {e}");
        std::process::exit(2);
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // The fast path: one single-threaded runtime per worker, each with its
    // own SO_REUSEPORT listener and upstream pool (Edge::serve_threads).
    let served = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &str| {
                std::fs::read_to_string(p).unwrap_or_else(|e| {
                    eprintln!("cannot read {p}: {e}");
                    std::process::exit(2);
                })
            };
            let certified = certified_key(&read(&cert), &read(&key)).unwrap_or_else(|e| {
                eprintln!("{e}");
                std::process::exit(2);
            });
            let certs = TlsCerts::new(certified);
            eprintln!("edge_bench listening on https://{listen} with {threads} worker threads");
            edge.serve_tls_threads(addr, threads, certs, shutdown)
        }
        (None, None) => {
            eprintln!("edge_bench listening on {listen} with {threads} worker threads");
            edge.serve_threads(addr, threads, shutdown)
        }
        _ => {
            eprintln!("--tls-cert and --tls-key go together");
            std::process::exit(2);
        }
    };
    let handle = served.unwrap_or_else(|e| {
        eprintln!("cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    handle.join();
}

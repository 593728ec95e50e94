//! Runs the edge with one route, for benchmarks (see bench/proxy.sh).
//!
//! `edge_bench --listen 127.0.0.1:18080 --host bench.localhost --upstream 127.0.0.1:18000 [--threads 2]`

use std::time::Duration;

use berth_edge::{Edge, EdgeConfig, RouteChange, RouteSpec, TargetSpec};

fn main() {
    let mut listen = "127.0.0.1:18080".to_string();
    let mut host = "bench.localhost".to_string();
    let mut upstream = String::new();
    let mut threads = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => listen = value,
            "--host" => host = value,
            "--upstream" => upstream = value,
            "--threads" => threads = value.parse().unwrap_or(2),
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
    // One single-threaded runtime per worker, each with its own SO_REUSEPORT
    // listener (the kernel spreads connections), all sharing one Edge: no
    // work stealing between cores, like nginx's worker processes.
    let edge = Edge::new(EdgeConfig {
        upstream_timeout: Duration::from_secs(30),
        ..EdgeConfig::default()
    })
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    if let Err(e) = edge.apply(vec![RouteChange::Upsert {
        host,
        route: RouteSpec {
            targets: vec![TargetSpec {
                id: "bench".into(),
                upstream,
                weight: 1,
            }],
        },
    }]) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|e| {
        eprintln!("bad --listen {listen}: {e}");
        std::process::exit(2);
    });
    eprintln!("edge_bench listening on {listen} with {threads} worker threads");
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let edge = edge.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| {
                        eprintln!("cannot start runtime: {e}");
                        std::process::exit(1);
                    });
                rt.block_on(async move {
                    let listener = bind(addr).unwrap_or_else(|e| {
                        eprintln!("cannot listen on {addr}: {e}");
                        std::process::exit(1);
                    });
                    let shutdown = async {
                        let _ = tokio::signal::ctrl_c().await;
                    };
                    if let Err(e) = edge.serve(listener, shutdown).await {
                        eprintln!("serve: {e}");
                    }
                });
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

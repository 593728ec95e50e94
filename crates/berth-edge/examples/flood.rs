//! An open-loop flood from one address, for bench/policy.sh: it never waits
//! for an answer before sending more, for a bounded time.
//!
//! `flood --target 127.0.0.1:18201 --host bench.localhost --secs 10
//! [--mode conns|pipeline] [--tasks 64] [--from 127.0.0.1]`
//!
//! * `conns`: `--tasks` loops, each opening a connection, writing one GET
//!   and closing it at once, as fast as it can;
//! * `pipeline`: `--tasks` connections, each writing GETs back to back
//!   (what the socket takes) while another task reads and drops whatever
//!   comes back.
//!
//! Prints one line: the mode; connections opened per second; connections
//! reset by the edge per second (before or right after the connect
//! completed, before an answer); answers read per second (`pipeline`; a
//! `conns` loop reads none); other connect failures (out of ports), after
//! each of which its loop pauses 1 ms.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Count {
    opened: AtomicU64,
    reset: AtomicU64,
    answers: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    let mut target = String::new();
    let mut host = "bench.localhost".to_string();
    let mut secs = 10u64;
    let mut mode = "conns".to_string();
    let mut tasks = 64usize;
    let mut from = "127.0.0.1".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--target" => target = value,
            "--host" => host = value,
            "--secs" => secs = value.parse().unwrap_or(10).clamp(1, 600),
            "--mode" => mode = value,
            "--tasks" => tasks = value.parse().unwrap_or(64).clamp(1, 4096),
            "--from" => from = value,
            other => {
                eprintln!("unknown flag {other}; usage: --target ADDR --host H --secs N [--mode conns|pipeline] [--tasks N] [--from IP]");
                std::process::exit(2);
            }
        }
    }
    let target: SocketAddr = target.parse().unwrap_or_else(|e| {
        eprintln!("bad --target {target:?}: {e}");
        std::process::exit(2);
    });
    let from: SocketAddr = SocketAddr::new(
        from.parse().unwrap_or_else(|e| {
            eprintln!("bad --from {from:?}: {e}");
            std::process::exit(2);
        }),
        0,
    );
    if mode != "conns" && mode != "pipeline" {
        eprintln!("bad --mode {mode:?}: conns or pipeline");
        std::process::exit(2);
    }
    let request: Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .into_bytes()
        .into();
    let count = Arc::new(Count::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    rt.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (request, count, mode) = (request.clone(), count.clone(), mode.clone());
            all.spawn(async move {
                let work = async {
                    if mode == "conns" {
                        loop {
                            conn_once(target, from, &request, &count).await;
                        }
                    } else {
                        loop {
                            pipeline(target, from, &request, &count).await;
                        }
                    }
                };
                let _ = tokio::time::timeout_at(end, work).await;
            });
        }
        while all.join_next().await.is_some() {}
    });
    let took = started.elapsed().as_secs_f64();
    let rate = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / took;
    println!(
        "{mode} opened/s {:.0} reset/s {:.0} answers/s {:.0} failed {}",
        rate(&count.opened),
        rate(&count.reset),
        rate(&count.answers),
        count.failed.load(Ordering::Relaxed)
    );
}

async fn connect(target: SocketAddr, from: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if from.ip() != target.ip() {
        // (the same address as the target's is the default source; not
        // binding then lets the kernel reuse TIME_WAIT ports on loopback)
        sock.bind(from)?;
    }
    sock.connect(target).await
}

/// A connect that failed: a reset by the edge is counted and the loop
/// goes on; anything else (out of ports) pauses the loop a moment.
async fn connect_failed(e: std::io::Error, count: &Count) {
    if e.kind() == std::io::ErrorKind::ConnectionReset {
        count.reset.fetch_add(1, Ordering::Relaxed);
    } else {
        count.failed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One connection: one GET written, closed without waiting.
async fn conn_once(target: SocketAddr, from: SocketAddr, request: &[u8], count: &Count) {
    match connect(target, from).await {
        Ok(mut s) => {
            count.opened.fetch_add(1, Ordering::Relaxed);
            if s.write_all(request).await.is_err() {
                count.reset.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => connect_failed(e, count).await,
    }
}

/// One connection written GETs back to back until it fails.
async fn pipeline(target: SocketAddr, from: SocketAddr, request: &[u8], count: &Count) {
    let s = match connect(target, from).await {
        Ok(s) => s,
        Err(e) => return connect_failed(e, count).await,
    };
    count.opened.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = s.into_split();
    let batch = request.repeat(64);
    let write = async { while wr.write_all(&batch).await.is_ok() {} };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut any = false;
        loop {
            match rd.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    any = true;
                    // answers start with their status line
                    let answers = buf[..n].windows(9).filter(|w| w == b"HTTP/1.1 ").count();
                    count.answers.fetch_add(answers as u64, Ordering::Relaxed);
                }
                Err(e) if !any && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    count.reset.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => return,
            }
        }
    };
    // until the edge closes the connection
    tokio::join!(write, read);
}

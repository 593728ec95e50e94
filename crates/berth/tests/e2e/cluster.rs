//! Two `berth server` processes on one real PostgreSQL (`--database-url`),
//! each with its own data dir and ports: one leader, the data shared, a
//! follower's edge following the route table, the database lost and back
//! (through a TCP relay the test cuts), kill -9 of the leader. Needs
//! PostgreSQL (`berth_store::testpg`: a failure under CI=true when missing).

use crate::harness::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The master key every server of the test cluster shares.
pub const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// A fresh database on the test PostgreSQL, or `None` (skipped).
pub fn database() -> Option<String> {
    let base = berth_store::testpg::require()?;
    let rt = tokio::runtime::Runtime::new().unwrap();
    Some(rt.block_on(berth_store::testpg::fresh_database(&base)))
}

pub fn member(url: &str) -> Server {
    Server::start_with(&["--database-url", url, "--master-key", KEY])
}

/// (leader id, epoch) as `berth cluster status --json` on `s` shows it.
pub fn leader(s: &Server) -> Option<(String, u64)> {
    let o = s.cli(&["cluster", "status", "--json"]);
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    let leaders: Vec<&Value> = v
        .as_array()?
        .iter()
        .filter(|m| m["isLeader"] == true)
        .collect();
    assert!(leaders.len() <= 1, "two leaders: {v}");
    leaders.first().map(|m| {
        (
            m["id"].as_str().unwrap().to_string(),
            m["epoch"].as_u64().unwrap(),
        )
    })
}

/// The server's instance id (written once it opened the store, which may
/// be after its API port is bound).
pub fn instance_id(s: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(id) = std::fs::read_to_string(s.data_dir().join("instance.id")) {
            if !id.trim().is_empty() {
                return id.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "no instance.id:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `s` reports a leader for which `ok` holds; returns it.
pub fn wait_leader(s: &Server, within: Duration, ok: impl Fn(&str, u64) -> bool) -> (String, u64) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((id, epoch)) = leader(s) {
            if ok(&id, epoch) {
                return (id, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no such leader within {within:?}:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP relay to PostgreSQL that the test can cut (every connection
/// closed, nothing accepted) and restore on the same port.
struct Relay {
    port: u16,
    target: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let mut r = Relay {
            port: free_port(),
            target: target.to_string(),
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            listener: None,
        };
        r.restore();
        r
    }

    fn restore(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port free again");
        l.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, target) = (self.up.clone(), self.conns.clone(), self.target.clone());
        self.listener = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        let mut all = conns.lock().unwrap();
                        all.push(client.try_clone().unwrap());
                        all.push(server.try_clone().unwrap());
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(h) = self.listener.take() {
            h.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn url(&self, db_url: &str) -> String {
        db_url.replacen(&self.target, &format!("127.0.0.1:{}", self.port), 1)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A plain upstream answering every request "legacy" (for an external route).
fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlegacy",
                );
            });
        }
    });
    port
}

fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn two_servers_one_database_one_leader_routes_followed_database_lost_and_failover() {
    let Some(url) = database() else {
        return;
    };
    let target = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the test PostgreSQL URL has host:port")
        .to_string();
    let mut relay = Relay::start(&target);
    let url = relay.url(&url);

    let a = member(&url);
    let (a_id, epoch) = wait_leader(&a, Duration::from_secs(10), |_, _| true);
    assert_eq!(a_id, instance_id(&a));
    let b = member(&url);
    let b_id = instance_id(&b);
    assert_ne!(a_id, b_id);
    wait_until(Duration::from_secs(10), "both members listed", || {
        b.json(&["cluster", "status", "--json"])
            .as_array()
            .is_some_and(|m| m.len() == 2)
    });
    let members = b.json(&["cluster", "status", "--json"]);
    let members = members.as_array().unwrap();
    assert_eq!(
        members.iter().filter(|m| m["isLeader"] == true).count(),
        1,
        "{members:?}"
    );
    let b_row = members.iter().find(|m| m["id"] == b_id.as_str()).unwrap();
    assert_eq!(b_row["apiUrl"], b.api());
    assert!(b_row["lastSeenAt"].is_string(), "{b_row}");
    let human = b.ok(&["cluster", "status"]);
    assert!(
        human.contains("leader") && human.contains("follower"),
        "{human}"
    );

    // The data is shared.
    a.ok(&["projects", "create", "shop", "--repo", "/srv/git/shop.git"]);
    assert_eq!(b.json(&["projects", "list", "--json"])[0]["name"], "shop");

    // A route added on the leader is served by the follower's edge within 1 s.
    let up = upstream();
    a.ok(&[
        "routes",
        "add",
        "legacy.example.com",
        "--upstream",
        &format!("127.0.0.1:{up}"),
    ]);
    let took = wait_until(
        Duration::from_secs(5),
        "the follower's edge serves the route",
        || matches!(b.get_host("legacy.example.com", "/"), Ok((200, body)) if body == "legacy"),
    );
    assert!(took < Duration::from_secs(1), "the follower took {took:?}");

    // The database is lost: the API answers 503 saying so; the edges keep serving.
    relay.cut();
    let r = b
        .client()
        .get(format!("{}/api/v1/projects", b.api()))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    let o = b.cli(&["projects", "list"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("database"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for s in [&a, &b] {
        assert_eq!(
            s.get_host("legacy.example.com", "/").unwrap(),
            (200, "legacy".to_string())
        );
    }
    // It comes back: everything answers again, without a restart.
    relay.restore();
    wait_until(Duration::from_secs(20), "the API answers again", || {
        b.cli(&["projects", "list", "--json"]).status.success()
    });
    let (_, epoch_after) = wait_leader(&b, Duration::from_secs(15), |_, _| true);
    assert!(epoch_after >= epoch);

    // kill -9 of the leader: the other server leads within 10 s.
    let (leader_id, leader_epoch) = wait_leader(&b, Duration::from_secs(10), |_, _| true);
    let (mut dead, survivor) = if leader_id == a_id { (a, b) } else { (b, a) };
    let started = Instant::now();
    dead.kill9();
    let (new_id, new_epoch) =
        wait_leader(&survivor, Duration::from_secs(10), |id, _| id != leader_id);
    eprintln!(
        "failover (kill -9 -> the other leads): {:?}",
        started.elapsed()
    );
    assert_eq!(new_id, instance_id(&survivor));
    assert!(new_epoch > leader_epoch);
    assert_eq!(
        survivor.get_host("legacy.example.com", "/").unwrap(),
        (200, "legacy".to_string())
    );
}

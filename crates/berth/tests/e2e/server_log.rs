//! The server's own log (`--log-format json`, stderr): one line per
//! deployment outcome, per refused webhook and (at most one a second) per
//! upstream failure at the edge.

use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The JSON lines of the server log with this message.
fn lines(s: &Server, message: &str) -> Vec<Value> {
    s.log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["message"] == message)
        .collect()
}

fn wait_line(s: &Server, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = lines(s, message).into_iter().find(&matches) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?} line:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_json_log_has_a_line_per_outcome_refused_webhook_and_upstream_failure() {
    let s = Server::start_with(&["--log-format", "json"]);
    let repo = AppRepo::new("v1");
    s.ok(&["projects", "create", "logged", "--repo", repo.path()]);

    // A webhook without a valid signature: refused, with its delivery id.
    let r = s
        .client()
        .post(format!("{}/hooks/github/logged", s.api()))
        .header("x-github-event", "push")
        .header("x-github-delivery", "delivery-4711")
        .header("x-hub-signature-256", "sha256=00")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let v = wait_line(&s, "webhook refused", |v| v["delivery"] == "delivery-4711");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["project"], "logged");
    assert!(v["reason"].as_str().unwrap().contains("secret"), "{v}");

    // A deployment that fails: its id, slot, trigger, result and reason.
    let o = s.cli(&[
        "deploy",
        "--project",
        "logged",
        "--ref",
        "no-such-branch",
        "--wait",
        "--json",
    ]);
    assert!(!o.status.success());
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = d["id"].as_str().unwrap().to_string();
    let v = wait_line(&s, "deployment failed", |v| v["deployment"] == id.as_str());
    assert_eq!(v["slot"], "logged/production/web");
    assert_eq!(v["trigger"], "manual");
    assert_eq!(v["result"], "failed");
    assert_eq!(v["reason"], d["failureMessage"], "{v}");
    assert_eq!(
        lines(&s, "deployment failed")
            .iter()
            .filter(|v| v["deployment"] == id.as_str())
            .count(),
        1,
        "one line per outcome"
    );

    // An upstream that refuses connections: 502s, logged at most once a
    // second.
    let closed = free_port();
    s.ok(&[
        "routes",
        "add",
        "down.example.com",
        "--upstream",
        &format!("127.0.0.1:{closed}"),
    ]);
    let started = Instant::now();
    let mut bad = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        if let Ok((502, _)) = s.get_host("down.example.com", "/") {
            bad += 1;
        }
    }
    assert!(bad > 5, "{bad} 502s");
    let v = wait_line(&s, "upstream request failed", |_| true);
    assert_eq!(v["level"], "WARN");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(v["target_id"].as_str().is_some(), "{v}");
    let n = lines(&s, "upstream request failed").len();
    assert!(n <= 3, "{n} lines for {bad} failures in 1.5 s (rate limit)");
}

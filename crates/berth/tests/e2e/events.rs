//! `GET /api/v1/deployments/{id}/events`: the deployment as it changes,
//! over Server-Sent Events, ending after its terminal state (what `berth
//! deploy --wait` follows). No Docker: the deployment fails at its clone.

use crate::harness::{Server, TOKEN};
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

#[test]
fn the_event_stream_follows_a_deployment_to_its_end_and_closes() {
    let s = Server::start();
    let missing = s.dir.path().join("no-such-repo");
    s.ok(&[
        "projects",
        "create",
        "ev",
        "--repo",
        missing.to_str().unwrap(),
    ]);
    let d = s.json(&["deploy", "--project", "ev", "--json"]);
    let id = d["id"].as_str().unwrap().to_string();

    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut r = c
        .get(format!("{}/api/v1/deployments/{id}/events", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The server ends the stream after the terminal state: read to the end.
    let mut text = String::new();
    r.read_to_string(&mut text)
        .expect("the stream ends by itself");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| b.contains("data:")) {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(field("event:").as_deref(), Some("deployment"), "{block}");
        let version: u64 = field("id:").unwrap().parse().unwrap();
        let body: Value = serde_json::from_str(&field("data:").unwrap()).unwrap();
        events.push((version, body));
    }
    assert!(events.len() >= 2, "{text}");
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "versions only grow: {text}"
    );
    let (_, last) = events.last().unwrap();
    assert_eq!(last["id"], id.as_str());
    assert_eq!(last["status"], "failed", "{last}");
    assert!(
        last["failureMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("clone:")),
        "{last}"
    );
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|(_, d)| d["status"] != "failed"),
        "one terminal event, the last: {text}"
    );

    // --wait follows it: exit 1 with the reason.
    let o = s.cli(&["deploy", "--project", "ev", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("failed: clone:"),
        "{err}"
    );

    // An unknown deployment: 404 in berth's JSON, not an empty stream.
    let r = c
        .get(format!("{}/api/v1/deployments/nope/events", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().unwrap()["message"].is_string());
}

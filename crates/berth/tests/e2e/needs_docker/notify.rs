//! `berth notify`: a signed JSON POST per deployment event to a receiver on
//! 127.0.0.1, retried while the receiver is down, the attempts visible in
//! `notify list`, the URL's path never shown nor logged.

use super::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the receiver got: its lowercased headers and body.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A plain HTTP/1.1 receiver answering 204 to every request, on `port`.
fn receiver(port: u16) -> Arc<Mutex<Vec<Received>>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Default::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            sink.lock().unwrap().push(Received {
                path,
                headers,
                body,
            });
            let _ = conn.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    got
}

fn signature_of(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn wait_for(got: &Arc<Mutex<Vec<Received>>>, event: &str, within: Duration) -> Received {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = got
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.json()["event"] == event)
        {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {event} POST within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_failing_deploy_makes_one_signed_post_and_a_down_endpoint_is_retried() {
    let project = unique("e2en");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("notified v1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nbake = \"0\"\n[services.web.readiness]\ndeadline = \"3s\"\n",
    )
    .unwrap();
    repo.commit_app("notified v1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);

    // Bad input: one line naming what was wrong, nothing added.
    for (args, want) in [
        (
            vec!["--url", "ftp://127.0.0.1/x"],
            "must start with http:// or https://",
        ),
        (vec!["--url", "http://"], "has no host"),
        (
            vec![
                "--url",
                "http://127.0.0.1:1/x",
                "--events",
                "failed,deployed",
            ],
            "unknown event \"deployed\"",
        ),
    ] {
        let mut a = vec!["notify", "add", "--project", &project];
        a.extend(args);
        let o = s.cli(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{a:?} was accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{a:?}: {err}");
    }
    // The server refuses it too (a client that skips the CLI's check).
    let r = s
        .client()
        .post(format!(
            "{}/api/v1/projects/{project}/notifications",
            s.api()
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "url": "gopher://x/secret-gopher-path" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().unwrap();
    assert!(body.contains("must start with http"), "{body}");
    assert!(!body.contains("secret-gopher-path"), "{body}");
    assert_eq!(
        s.json(&["notify", "list", "--project", &project, "--json"]),
        serde_json::json!([])
    );

    // The endpoint is down (nothing listens on its port) when v1 succeeds.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks/T0/B0/secret-hook-path");
    let human = s.ok(&["notify", "add", "--project", &project, "--url", &url]);
    assert!(!human.contains("secret-hook-path"), "{human}");
    let secret_line = human
        .lines()
        .find(|l| l.contains("signing secret"))
        .unwrap_or_else(|| panic!("no secret printed: {human}"));
    let first_id = human
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(secret_line.contains("bnsec_"), "{human}");
    s.ok(&["notify", "remove", "--project", &project, &first_id]);
    let added = s.json(&[
        "notify",
        "add",
        "--project",
        &project,
        "--url",
        &url,
        "--events",
        "succeeded,failed",
        "--json",
    ]);
    let secret = added["secret"].as_str().unwrap().to_string();
    assert_eq!(added["url"], format!("http://127.0.0.1:{port}/…"));
    assert_eq!(added["events"], serde_json::json!(["succeeded", "failed"]));
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivery = loop {
        let list = s.json(&["notify", "list", "--project", &project, "--json"]);
        let ds = list[0]["deliveries"].as_array().unwrap().clone();
        if let Some(d) = ds
            .iter()
            .find(|d| !d["attempts"].as_array().unwrap().is_empty())
        {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded: {list}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(delivery["event"], "succeeded");
    assert_eq!(delivery["deploymentId"], d1["id"]);
    assert_eq!(delivery["status"], "pending");
    assert!(delivery["nextAttemptAt"].is_string(), "{delivery}");
    let err = delivery["attempts"][0]["error"].as_str().unwrap();
    assert!(!err.contains("secret-hook-path"), "{err}");
    assert!(delivery["attempts"][0]["statusCode"].is_null());
    let listed = s.ok(&["notify", "list", "--project", &project]);
    assert!(
        listed.contains("pending") && listed.contains("NEXT RETRY"),
        "{listed}"
    );

    // The endpoint comes up: the retry delivers it, signed.
    let got = receiver(port);
    let ok_post = wait_for(&got, "succeeded", Duration::from_secs(30));
    assert_eq!(ok_post.path, "/hooks/T0/B0/secret-hook-path");
    assert_eq!(
        ok_post.header("x-berth-signature-256"),
        Some(signature_of(&secret, &ok_post.body).as_str())
    );
    assert_eq!(ok_post.json()["deploymentId"], d1["id"]);

    // A failing deploy: one signed POST with the failure reason.
    let wrong_port = DOCKERFILE.replace("\"-p\", \"3000\"", "\"-p\", \"3999\"");
    repo.commit_app("notified v2", &wrong_port, "listen on the wrong port");
    let started = Instant::now();
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(!ok);
    let reason = d2["failureMessage"].as_str().unwrap().to_string();
    assert!(reason.starts_with("health_check:"), "{reason}");
    let failed = wait_for(&got, "failed", Duration::from_secs(10));
    eprintln!("failed POST {:?} after the deploy began", started.elapsed());
    let sig = failed.header("x-berth-signature-256").unwrap();
    assert_eq!(sig, signature_of(&secret, &failed.body));
    assert_ne!(sig, signature_of("another-secret", &failed.body));
    assert_eq!(failed.header("content-type"), Some("application/json"));
    let body = failed.json();
    assert_eq!(body["deploymentId"], d2["id"]);
    assert_eq!(body["deployment"]["id"], d2["id"]);
    assert_eq!(body["project"], project.as_str());
    assert_eq!(body["service"], "web");
    assert_eq!(body["environment"], "production");
    assert_eq!(body["reason"], reason.as_str());
    assert!(body["text"].as_str().unwrap().contains(&reason), "{body}");
    // Exactly one per event: nothing more arrives.
    std::thread::sleep(Duration::from_secs(3));
    let all = got.lock().unwrap().clone();
    let events: Vec<String> = all
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["succeeded", "failed"], "{all:?}");
    let list = s.json(&["notify", "list", "--project", &project, "--json"]);
    let ds = list[0]["deliveries"].as_array().unwrap();
    assert!(ds.iter().all(|d| d["status"] == "delivered"), "{list}");
    assert!(!list.to_string().contains("secret-hook-path"));
    assert!(!list.to_string().contains(&secret));

    // The URL's path and the secret never reach the server's log.
    let log = s.log();
    assert!(log.contains("notification delivered"), "{log}");
    assert!(!log.contains("secret-hook-path"));
    assert!(!log.contains(&secret));

    s.ok(&[
        "notify",
        "remove",
        "--project",
        &project,
        added["id"].as_str().unwrap(),
    ]);
    assert_eq!(
        s.json(&["notify", "list", "--project", &project, "--json"]),
        serde_json::json!([])
    );
    let o = s.cli(&[
        "notify",
        "remove",
        "--project",
        &project,
        added["id"].as_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

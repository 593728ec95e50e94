//! End-to-end tests: the real `berth` binary (server and CLI), real SQLite
//! files, real HTTP on 127.0.0.1, real git, and — in `needs_docker` — a
//! real Docker Engine.

mod cluster;
mod cluster_tls;
mod console_host;
mod events;
mod harness;
mod https_redirect;
mod needs_docker;
mod postgres_store;
mod server_log;
mod tokens;
mod wildcard_row;

use harness::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn api_requires_the_token_and_answers_json_errors() {
    let s = Server::start();
    let c = s.client();
    let r = c
        .get(format!("{}/api/v1/projects", s.api()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    let r = c
        .get(format!("{}/api/v1/projects", s.api()))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/api/v1/openapi.json", s.api()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "only health and webhooks are open");
    let r = c.get(format!("{}/api/v1/health", s.api())).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/api/v1/projects", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap(), serde_json::json!([]));
    let r = c
        .get(format!("{}/api/v1/openapi.json", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let doc: Value = r.json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented operation exists on the running server, behind the
    // token: 401 without it (an undocumented path would be 404, a wrong
    // method 405), /health open.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{doc}");
    for (path, item) in paths {
        let url = format!("{}/api/v1{}", s.api(), path.replace(['{', '}'], ""));
        for (method, _) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let st = c.request(m, &url).send().unwrap().status().as_u16();
            let want = if path == "/health" { 200 } else { 401 };
            assert_eq!(st, want, "{method} {path}");
        }
    }

    // Malformed JSON, oversize body, unknown project: clear errors.
    let r = c
        .post(format!("{}/api/v1/projects", s.api()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"], "invalid_json");
    let big = format!("{{\"name\":\"x\",\"repo\":\"{}\"}}", "a".repeat(300 * 1024));
    let r = c
        .post(format!("{}/api/v1/projects", s.api()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    // The server closes a connection whose body it refused to read.
    let c = s.client();
    let r = c
        .get(format!("{}/api/v1/projects/nope", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().unwrap()["message"],
        "project \"nope\" not found"
    );
    let listed = s.json(&["projects", "list", "--json"]);
    assert_eq!(listed, serde_json::json!([]));
}

#[test]
fn generated_token_is_written_private_and_its_path_printed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let api = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{api}"),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env_remove("BERTH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let token_file = data.join("admin.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !token_file.exists() || std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let r = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{api}/api/v1/projects"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(token_file.to_str().unwrap()), "{stdout}");
    assert!(
        !stdout.contains(&token),
        "the token itself is never printed"
    );
}

#[test]
fn projects_and_variables_survive_kill_9_and_secrets_never_leak() {
    let secret = "sk_live_THIS-MUST-NEVER-LEAK-42";
    let mut s = Server::start();
    s.ok(&["projects", "create", "demo", "--repo", "/srv/git/demo.git"]);
    s.ok(&["env", "set", "--project", "demo", "PLAIN=hello", "EMPTY="]);
    let set = s.cli(&[
        "env",
        "set",
        "--project",
        "demo",
        "--secret",
        &format!("API_KEY={secret}"),
    ]);
    assert!(set.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&set.stdout),
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(!printed.contains(secret));

    s.kill9();
    s.spawn();

    let projects = s.json(&["projects", "list", "--json"]);
    assert_eq!(projects[0]["name"], "demo");
    assert_eq!(projects[0]["repo"], "/srv/git/demo.git");
    let vars = s.json(&["env", "list", "--project", "demo", "--json"]);
    let vars = vars.as_array().unwrap();
    assert_eq!(vars.len(), 3);
    let by_key = |k: &str| vars.iter().find(|v| v["key"] == k).unwrap().clone();
    assert_eq!(by_key("PLAIN")["value"], "hello");
    assert_eq!(by_key("EMPTY")["value"], "");
    assert_eq!(by_key("API_KEY")["secret"], true);
    assert_eq!(by_key("API_KEY")["value"], Value::Null);
    let human = s.ok(&["env", "list", "--project", "demo"]);
    assert!(human.contains("API_KEY") && !human.contains(secret));
    let raw = s
        .client()
        .get(format!(
            "{}/api/v1/projects/demo/environments/production/variables",
            s.api()
        ))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!raw.contains(secret));
    assert!(!s.log().contains(secret), "the server log holds the secret");

    // Not in any file of the data dir, WAL included.
    fn scan(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
        let mut hits = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                hits.extend(scan(&p, needle));
            } else if p.is_file() // not the takeover socket
                && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
        hits
    }
    let data = s.data_dir();
    assert!(data.join("berth.db").exists());
    assert!(scan(&data, secret.as_bytes()).is_empty());
    assert!(
        !scan(&data, b"hello").is_empty(),
        "the scan sees plain data"
    );
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let s = Server::start();
    s.ok(&["projects", "create", "demo", "--repo", "/srv/x"]);
    for (args, needle) in [
        (
            vec!["env", "set", "--project", "nope", "A=1"],
            "project \"nope\" not found",
        ),
        (vec!["env", "set", "--project", "demo", "1BAD=1"], "POSIX"),
        (
            vec!["env", "set", "--project", "demo", "=1"],
            "variable name",
        ),
        (
            vec!["env", "set", "--project", "demo", "--env", "staging", "A=1"],
            "not found",
        ),
        (
            vec!["projects", "create", "Bad_Name", "--repo", "/x"],
            "project name",
        ),
        (
            vec!["projects", "create", "demo", "--repo", "/x"],
            "already exists",
        ),
        (vec!["projects", "show", "nope"], "not found"),
        (vec!["inspect", "doesnotexist"], "not found"),
        (vec!["deploy", "--project", "nope"], "not found"),
    ] {
        let o = s.cli(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should mention {needle:?}"
        );
    }
    let big = format!("BIG={}", "x".repeat(64 * 1024 + 1));
    let o = s.cli(&["env", "set", "--project", "demo", &big]);
    assert!(!o.status.success());
    let vars = s.json(&["env", "list", "--project", "demo", "--json"]);
    assert_eq!(vars, serde_json::json!([]));
    let projects = s.json(&["projects", "list", "--json"]);
    assert_eq!(projects.as_array().unwrap().len(), 1);
}

/// A tiny HTTP server on 127.0.0.1 that answers every request with `body`
/// and echoes the X-Forwarded-* headers it got.
fn legacy_upstream(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten().take(50) {
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let fwd: Vec<&str> = req
                .lines()
                .filter(|l| l.starts_with("x-forwarded-"))
                .collect();
            let text = format!("{body}\n{}", fwd.join("\n"));
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    port
}

#[test]
fn external_routes_send_a_hostname_to_an_upstream_berth_does_not_run() {
    let s = Server::start();
    let port = legacy_upstream("legacy app");
    s.ok(&[
        "routes",
        "add",
        "Legacy.Example.com",
        "--upstream",
        &format!("127.0.0.1:{port}"),
    ]);
    let listed = s.json(&["routes", "list", "--json"]);
    assert_eq!(listed[0]["hostname"], "legacy.example.com");
    let (st, body) = s.get_host("legacy.example.com:80", "/").unwrap();
    assert_eq!(st, 200);
    assert!(body.starts_with("legacy app"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(
        body.contains("x-forwarded-host: legacy.example.com"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    // Invalid changes are refused and change nothing.
    for (host, up) in [
        ("bad host", "127.0.0.1:1"),
        ("ok.example.com", "127.0.0.1"),
        ("ok.example.com", "127.0.0.1:99999"),
    ] {
        let o = s.cli(&["routes", "add", host, "--upstream", up]);
        assert!(!o.status.success(), "{host} {up}");
    }
    assert_eq!(
        s.json(&["routes", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The route survives a restart, then goes away when removed.
    let mut s = s;
    s.kill9();
    s.spawn();
    assert_eq!(s.get_host("legacy.example.com", "/").unwrap().0, 200);
    s.ok(&["routes", "remove", "legacy.example.com"]);
    assert_eq!(s.get_host("legacy.example.com", "/").unwrap().0, 404);
}

#[test]
fn a_second_server_on_the_same_ports_refuses_to_start() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            // Port 0: only the --http-listen port can be the one in use.
            "--api-listen",
            "127.0.0.1:0",
            "--http-listen",
            &format!("127.0.0.1:{}", s.http_port),
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on --http-listen"), "{err}");
}

/// Durations, sizes and service names follow one rule in berth.toml, the
/// CLI and the API (berth-core's `units` and `names`): `?since=1d` works
/// on both log routes as `--since 1d` does, a bad value is a 400 naming
/// it, and a 40-character service name is accepted at create as at parse.
#[test]
fn since_and_service_names_follow_the_same_rule_in_api_and_cli() {
    let s = Server::start();
    let missing = s.dir.path().join("no-such-repo");
    s.ok(&[
        "projects",
        "create",
        "rules",
        "--repo",
        missing.to_str().unwrap(),
    ]);
    let forty = "s".repeat(40);
    let d = s.json(&[
        "deploy",
        "--project",
        "rules",
        "--service",
        &forty,
        "--json",
    ]);
    assert_eq!(d["serviceName"], forty.as_str(), "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let long = "s".repeat(64);
    let o = s.cli(&["deploy", "--project", "rules", "--service", &long]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("longer than 63 characters"), "{err}");

    // The clone fails (no such repository): the deployment ends with
    // berth's own log lines, no Docker needed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cur = s.json(&["inspect", &id, "--json"]);
        if cur["status"] == "failed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never failed: {cur}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let get = |path: &str| {
        let r = s
            .client()
            .get(format!("{}/api/v1/{path}", s.api()))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let svc = format!("logs?project=rules&service={forty}");
    for base in [format!("deployments/{id}/logs?"), format!("{svc}&")] {
        let (st, all) = get(&format!("{base}since=1d"));
        assert_eq!(st, 200, "{base}since=1d: {all}");
        let n = all.as_array().unwrap().len();
        assert!(n > 0, "{base}: no lines since 1d: {all}");
        assert_eq!(get(&format!("{base}since=10m")).1, all);
        let (st, none) = get(&format!("{base}since=2099-01-01T00:00:00Z"));
        assert_eq!((st, none), (200, serde_json::json!([])), "{base}");
        let (st, e) = get(&format!("{base}since=1x"));
        assert_eq!(st, 400, "{base}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("\"1x\"") && !msg.contains('\n'), "{msg}");
    }
    let cli = s.ok(&["logs", &id, "--since", "1d", "--json"]);
    assert!(!cli.trim().is_empty(), "CLI --since 1d printed nothing");
    let o = s.cli(&["logs", &id, "--since", "1x"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--since: \"1x\""));
}

/// `berth nodes` on a server that does not run on a swarm: a one-line
/// error saying so, non-zero exit.
#[test]
fn nodes_need_the_swarm_runtime() {
    let s = Server::start();
    let out = s.cli(&["nodes", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--runtime swarm"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = s.cli(&["nodes", "drain", "some-node"]);
    assert!(!out.status.success());
}

#[test]
fn metrics_is_one_openmetrics_page() {
    let s = Server::start();
    let r = s
        .client()
        .get(format!("{}/metrics", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let page = r.text().unwrap();
    // the edge's families, then the server's, one `# EOF` at the very end
    let edge = page.find("# TYPE berth_edge_requests counter\n");
    let server = page.find("# TYPE berth_illegal_transitions counter\n");
    assert!(
        edge.is_some() && server.is_some() && edge < server,
        "{page}"
    );
    assert!(page.ends_with("\n# EOF\n"), "{page}");
    assert_eq!(page.matches("# EOF").count(), 1, "{page}");
    assert!(
        page.contains("\nberth_log_lines_dropped_total 0\n"),
        "{page}"
    );
}

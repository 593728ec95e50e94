//! Scoped tokens, the audit log and console sessions, against the real
//! server on 127.0.0.1 with its SQLite store (no Docker needed: deployments
//! are created and audited; their builds may fail, that is not looked at).

use crate::harness::*;
use berth_core::access::Role;
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The CLI with another token.
fn cli_as(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_API", s.api())
        .env("BERTH_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok_as(s: &Server, token: &str, args: &[&str]) -> String {
    let o = cli_as(s, token, args);
    assert!(
        o.status.success(),
        "berth {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The one-line error of a failing CLI call.
fn err_as(s: &Server, token: &str, args: &[&str]) -> String {
    let o = cli_as(s, token, args);
    assert!(!o.status.success(), "berth {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

fn create_token(s: &Server, args: &[&str]) -> String {
    let mut a = vec!["tokens", "create"];
    a.extend(args);
    a.push("--json");
    let v = s.json(&a);
    let t = v["token"].as_str().unwrap().to_string();
    assert!(t.starts_with("berth_t_") && t.len() > 60, "{v}");
    t
}

#[test]
fn a_viewer_of_one_project_reads_it_and_nothing_else_and_the_audit_names_the_deployer() {
    let s = Server::start();
    s.ok(&["projects", "create", "a", "--repo", "/srv/git/a.git"]);
    s.ok(&["projects", "create", "b", "--repo", "/srv/git/b.git"]);
    s.ok(&["env", "set", "--project", "b", "B_ONLY=1"]);
    let viewer = create_token(&s, &["look", "--project", "a", "--role", "viewer"]);
    let boss = create_token(&s, &["ci-admin", "--role", "admin"]);

    // status and logs of A work.
    let st: Value =
        serde_json::from_str(&ok_as(&s, &viewer, &["status", "--project", "a", "--json"])).unwrap();
    assert_eq!(st, serde_json::json!([]));
    ok_as(&s, &viewer, &["logs", "--project", "a"]);
    ok_as(&s, &viewer, &["env", "list", "--project", "a"]);
    // deploy of A: 403 naming the role needed.
    let e = err_as(&s, &viewer, &["deploy", "--project", "a"]);
    assert!(
        e.contains("this needs the deployer role; token look is a viewer"),
        "{e}"
    );
    // B does not exist for it.
    for args in [
        &["status", "--project", "b"][..],
        &["logs", "--project", "b"],
        &["env", "list", "--project", "b"],
        &["projects", "show", "b"],
    ] {
        let e = err_as(&s, &viewer, args);
        assert!(e.contains("project \"b\" not found"), "{args:?}: {e}");
        assert!(!e.contains("B_ONLY"));
    }
    // projects list shows only A.
    let listed: Value =
        serde_json::from_str(&ok_as(&s, &viewer, &["projects", "list", "--json"])).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    // Server-wide routes are not for a scoped token.
    let e = err_as(&s, &viewer, &["routes", "list"]);
    assert!(e.contains("admin role"), "{e}");

    // An admin token deploys; the audit log names it.
    let d: Value =
        serde_json::from_str(&ok_as(&s, &boss, &["deploy", "--project", "a", "--json"])).unwrap();
    let id = d["id"].as_str().unwrap().to_string();
    // A deployment of B is 404 to the viewer of A, and absent from lists.
    let db: Value =
        serde_json::from_str(&ok_as(&s, &boss, &["deploy", "--project", "b", "--json"])).unwrap();
    let idb = db["id"].as_str().unwrap();
    let e = err_as(&s, &viewer, &["inspect", idb]);
    assert!(
        e.contains(&format!("deployment \"{idb}\" not found")),
        "{e}"
    );
    ok_as(&s, &viewer, &["inspect", &id]);
    let r = s
        .client()
        .get(format!("{}/api/v1/deployments", s.api()))
        .bearer_auth(&viewer)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let all: Value = r.json().unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|d| d["projectName"] == "a"),
        "{all}"
    );
    s.ok(&[
        "env",
        "set",
        "--project",
        "a",
        "--secret",
        "SECRET_KEY=hunter2",
    ]);

    let audit = s.json(&["audit", "--json"]);
    let entries = audit.as_array().unwrap();
    let deploy = entries
        .iter()
        .find(|e| e["action"] == "deploy" && e["project"] == "a")
        .unwrap_or_else(|| panic!("no deploy in {audit}"));
    assert_eq!(deploy["token"], "ci-admin");
    assert_eq!(deploy["sourceIp"], "127.0.0.1");
    assert!(deploy["target"].as_str().unwrap().contains(&id), "{deploy}");
    let set = entries
        .iter()
        .find(|e| e["action"] == "variables.set" && e["project"] == "a")
        .unwrap();
    assert_eq!(set["token"], "admin", "the server's --token is named admin");
    assert!(set["target"].as_str().unwrap().contains("SECRET_KEY"));
    assert!(!audit.to_string().contains("hunter2"), "names only");
    let created = entries
        .iter()
        .find(|e| e["action"] == "tokens.create")
        .unwrap();
    assert!(!audit.to_string().contains(&viewer), "never a token");
    assert_eq!(created["token"], "admin");
    // The refused deploy changed nothing and is not a change.
    assert!(!entries.iter().any(|e| e["token"] == "look"));
    // --project narrows; the human table shows the token's name.
    let table = s.ok(&["audit", "--project", "b"]);
    assert!(
        table.contains("ci-admin") && table.contains("deploy"),
        "{table}"
    );
    assert!(!table.contains("SECRET_KEY"), "{table}");
    // Only an admin reads the audit log.
    let e = err_as(&s, &viewer, &["audit"]);
    assert!(e.contains("admin role"), "{e}");

    // A deployer of A deploys A, is refused B (404) and token admin (403).
    let dep = create_token(&s, &["ship", "--project", "a", "--role", "deployer"]);
    ok_as(&s, &dep, &["deploy", "--project", "a", "--json"]);
    let e = err_as(&s, &dep, &["deploy", "--project", "b"]);
    assert!(e.contains("project \"b\" not found"), "{e}");
    let e = err_as(&s, &dep, &["tokens", "list"]);
    assert!(e.contains("admin role"), "{e}");

    // tokens list: never the token or its hash; the last use is recorded.
    let listed = s.json(&["tokens", "list", "--json"]);
    let text = listed.to_string();
    assert!(!text.contains(&viewer) && !text.contains(&boss));
    assert!(!text.contains("hash"));
    let look = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "look")
        .unwrap();
    assert_eq!(look["role"], "viewer");
    assert_eq!(look["project"], "a");
    assert!(look["lastUsedAt"].is_string(), "{look}");
    assert!(look["expiresAt"].is_null());
}

#[test]
fn revoked_and_expired_tokens_get_401_saying_which_and_a_log_stream_closes() {
    let s = Server::start();
    s.ok(&["projects", "create", "a", "--repo", "/srv/git/a.git"]);
    let gone = create_token(&s, &["gone", "--role", "viewer"]);
    let short = create_token(&s, &["short", "--role", "viewer", "--expires", "2s"]);
    ok_as(&s, &gone, &["projects", "list"]);
    ok_as(&s, &short, &["projects", "list"]);

    // An open SSE log stream of the token.
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut stream = c
        .get(format!("{}/api/v1/logs?project=a&follow=true", s.api()))
        .bearer_auth(&gone)
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(Instant::now());
    });
    // Still open a while later.
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err());

    let revoked_at = Instant::now();
    let out = s.ok(&["tokens", "revoke", "gone"]);
    assert!(out.contains("revoked token gone"), "{out}");
    // The next request is refused, saying why.
    let e = err_as(&s, &gone, &["projects", "list"]);
    assert!(
        e.contains("401") && e.contains("token gone was revoked"),
        "{e}"
    );
    let r = c
        .get(format!("{}/api/v1/projects", s.api()))
        .bearer_auth(&gone)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().unwrap()["message"],
        "token gone was revoked"
    );
    // The open stream ends too.
    let ended = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the log stream of a revoked token ends");
    assert!(ended - revoked_at < Duration::from_secs(5));

    std::thread::sleep(Duration::from_millis(2100));
    let e = err_as(&s, &short, &["projects", "list"]);
    assert!(e.contains("token short has expired"), "{e}");

    // Bad input: one line naming what was wrong; nothing created.
    let e = String::from_utf8(
        s.cli(&[
            "tokens",
            "create",
            "x",
            "--role",
            "viewer",
            "--expires",
            "soon",
        ])
        .stderr,
    )
    .unwrap();
    assert!(e.starts_with("error: expires:"), "{e}");
    let e = String::from_utf8(
        s.cli(&["tokens", "create", "admin", "--role", "viewer"])
            .stderr,
    )
    .unwrap();
    assert!(e.contains("--token"), "{e}");
    let e = String::from_utf8(
        s.cli(&[
            "tokens",
            "create",
            "y",
            "--role",
            "viewer",
            "--project",
            "nope",
        ])
        .stderr,
    )
    .unwrap();
    assert!(e.contains("project \"nope\" not found"), "{e}");
    let e = String::from_utf8(
        s.cli(&["tokens", "create", "gone", "--role", "viewer"])
            .stderr,
    )
    .unwrap();
    assert!(e.contains("already exists"), "{e}");
    let e = String::from_utf8(s.cli(&["tokens", "revoke", "nope"]).stderr).unwrap();
    assert!(e.contains("token \"nope\" not found"), "{e}");
    let names: Vec<String> = s
        .json(&["tokens", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["gone", "short"]);
    // The server's own token keeps working.
    s.ok(&["projects", "list"]);
}

/// Every route of the running server is guarded by its declared rule:
/// 401 without a token, 403 for a viewer where more is needed, 403 for a
/// scoped token on server-wide routes. A route without a rule answers 500
/// (never runs unguarded), which fails here.
#[test]
fn every_route_checks_the_role_its_rule_declares() {
    let s = Server::start();
    s.ok(&["projects", "create", "a", "--repo", "/srv/git/a.git"]);
    let viewer = create_token(&s, &["v", "--role", "viewer"]);
    let scoped_admin = create_token(&s, &["sa", "--role", "admin", "--project", "a"]);
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut checked = 0;
    for rule in berth_server::access::RULES {
        let path = rule
            .path
            .replace("{name}", "a")
            .replace("{p}", "a")
            .replace(['{', '}'], "");
        let url = format!("{}{path}", s.api());
        let m = reqwest::Method::from_bytes(rule.method.as_bytes()).unwrap();
        let no_token = c
            .request(m.clone(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16();
        let console = path.starts_with("/console");
        if console {
            // The console sends the browser to sign in.
            assert_eq!(no_token, 303, "{} {}", rule.method, rule.path);
        } else {
            assert_eq!(no_token, 401, "{} {}", rule.method, rule.path);
        }
        if console {
            checked += 1;
            continue;
        }
        let as_viewer = c
            .request(m.clone(), &url)
            .bearer_auth(&viewer)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16();
        if rule.need > Role::Viewer {
            assert_eq!(as_viewer, 403, "{} {}", rule.method, rule.path);
        } else {
            assert!(
                ![401, 403, 500].contains(&as_viewer),
                "{} {}: {as_viewer}",
                rule.method,
                rule.path
            );
        }
        if rule.scope == berth_server::access::Scope::Global {
            let st = c
                .request(m, &url)
                .bearer_auth(&scoped_admin)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(st, 403, "{} {}: scoped token", rule.method, rule.path);
        }
        checked += 1;
    }
    assert!(checked >= 50, "{checked}");
}

#[test]
fn console_sessions_survive_a_restart_and_a_viewer_sees_no_buttons() {
    let mut s = Server::start();
    s.ok(&["projects", "create", "a", "--repo", "/srv/git/a.git"]);
    s.ok(&["projects", "create", "b", "--repo", "/srv/git/b.git"]);
    let viewer = create_token(&s, &["eyes", "--role", "viewer", "--project", "a"]);
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = s.api();
    let login = |token: &str| {
        c.post(format!("{api}/login"))
            .form(&[("token", token), ("next", "/console")])
            .send()
            .unwrap()
    };
    let r = login("not-a-token");
    assert_eq!(r.status(), 401);
    let r = login(&viewer);
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let sid = cookie.split(';').next().unwrap().trim().to_string();
    // Over HTTPS (the form's origin) the cookie is Secure.
    let r = c
        .post(format!("{}/login", s.api()))
        .header("origin", format!("https://127.0.0.1:{}", s.api_port))
        .header("host", format!("127.0.0.1:{}", s.api_port))
        .form(&[("token", viewer.as_str())])
        .send()
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure"),
        "{:?}",
        r.headers()
    );

    let get = |path: &str| {
        c.get(format!("{api}{path}"))
            .header("cookie", &sid)
            .send()
            .unwrap()
    };
    let r = get("/console");
    assert_eq!(r.status(), 200);
    let html = r.text().unwrap();
    assert!(html.contains("/console/projects/a"));
    assert!(
        !html.contains("/console/projects/b"),
        "b does not exist for it"
    );
    let r = get("/console/projects/a");
    assert_eq!(r.status(), 200);
    let html = r.text().unwrap();
    assert!(
        !html.contains("/deploy\""),
        "a viewer sees no deploy button"
    );
    assert!(!html.contains("/variables\""), "nor the variables editor");
    assert_eq!(get("/console/projects/b").status(), 404);
    assert_eq!(get("/console/audit").status(), 403);

    // A restart does not sign the browser out.
    s.kill9();
    s.spawn();
    let r = get("/console/projects/a");
    assert_eq!(r.status(), 200, "signed in after a restart");
    // The session's API reads follow the token's scope too.
    assert_eq!(get("/api/v1/projects/a").status(), 200);
    assert_eq!(get("/api/v1/projects/b").status(), 404);

    // An admin's console shows the buttons and the audit log.
    let r = login(TOKEN);
    let admin_sid = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = c
        .get(format!("{api}/console/projects/a"))
        .header("cookie", &admin_sid)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        html.contains("/console/projects/a/deploy"),
        "admin: buttons"
    );
    // A change through the console is audited with the variable's name only.
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{api}/console/projects/a/variables"))
        .header("cookie", &admin_sid)
        .form(&[
            ("csrf", csrf.as_str()),
            ("environment", "production"),
            ("key", "CONSOLE_KEY"),
            ("value", "topsecret-value"),
            ("secret", "on"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let audit = s.json(&["audit", "--project", "a", "--json"]);
    let set = &audit[0];
    assert_eq!(set["action"], "variables.set", "{audit}");
    assert_eq!(set["token"], "admin");
    assert!(
        set["target"]
            .as_str()
            .unwrap()
            .contains("production/CONSOLE_KEY"),
        "{set}"
    );
    assert!(!audit.to_string().contains("topsecret"));
    // The viewer's session cannot post a change (403 page), whatever the form.
    let r = c
        .post(format!("{api}/console/projects/a/deploy"))
        .header("cookie", &sid)
        .form(&[("csrf", "x")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{api}/console/audit"))
        .header("cookie", &admin_sid)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().unwrap();
    assert!(html.contains("tokens.create"), "{html}");

    // Revoking the token ends its sessions at the next request.
    s.ok(&["tokens", "revoke", "eyes"]);
    let r = get("/console/projects/a");
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("token eyes was revoked"));
}

/// `git push` and fetch check the same roles and scope: a viewer of the
/// project may fetch but not push, another project's token sees no
/// repository, a revoked token is refused saying so.
#[test]
fn git_over_http_checks_role_and_scope() {
    let s = Server::start();
    s.ok(&["projects", "create", "a", "--repo", "/srv/git/a.git"]);
    s.ok(&["projects", "create", "b", "--repo", "/srv/git/b.git"]);
    let viewer = create_token(&s, &["reader", "--role", "viewer", "--project", "a"]);
    let pusher = create_token(&s, &["pusher", "--role", "deployer", "--project", "a"]);
    let c = s.client();
    let refs = |repo: &str, service: &str, token: &str| {
        c.get(format!(
            "{}/git/{repo}/info/refs?service={service}",
            s.api()
        ))
        .basic_auth("git", Some(token))
        .send()
        .unwrap()
    };
    assert_eq!(refs("a.git", "git-upload-pack", &viewer).status(), 200);
    let r = refs("a.git", "git-receive-pack", &viewer);
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("needs the deployer role"));
    assert_eq!(refs("a.git", "git-receive-pack", &pusher).status(), 200);
    assert_eq!(refs("b.git", "git-upload-pack", &pusher).status(), 404);
    assert_eq!(refs("a.git", "git-upload-pack", "wrong").status(), 401);
    assert_eq!(refs("b.git", "git-receive-pack", TOKEN).status(), 200);
    s.ok(&["tokens", "revoke", "pusher"]);
    let r = refs("a.git", "git-receive-pack", &pusher);
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("token pusher was revoked"));
}

//! Triggers, environments, release commands and retention (issue 5).

use super::{deploy_wait, host, step, unique, wait_body, Cleanup};
use crate::harness::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::{Duration, Instant};

fn sign(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

fn hook(
    s: &Server,
    project: &str,
    event: &str,
    delivery: &str,
    body: &Value,
    sig: Option<String>,
) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let mut req = s
        .client()
        .post(format!("{}/hooks/github/{project}", s.api()))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("content-type", "application/json");
    if let Some(sig) = sig {
        req = req.header("x-hub-signature-256", sig);
    }
    let r = req.body(raw).send().unwrap();
    let st = r.status().as_u16();
    (st, r.json().unwrap_or(Value::Null))
}

fn wait_idle(s: &Server, project: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = s.deployments(project);
        if all
            .iter()
            .all(|d| d["status"] != "queued" && d["status"] != "running")
        {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "deployments never settled: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn webhooks_are_verified_deduplicated_and_deploy_the_mapped_branch() {
    let project = unique("e2ew");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("from webhook");
    let secret = "whsec-e2e-secret";
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        repo.path(),
        "--webhook-secret",
        secret,
    ]);
    s.ok(&[
        "projects",
        "create",
        &format!("{project}x"),
        "--repo",
        repo.path(),
    ]);
    let push = json!({"ref": "refs/heads/main", "after": repo.head(), "deleted": false});
    let raw = serde_json::to_vec(&push).unwrap();

    // Bad, missing, or no secret at all: 401 and nothing queued.
    assert_eq!(
        hook(&s, &project, "push", "d0", &push, Some(sign("wrong", &raw))).0,
        401
    );
    assert_eq!(hook(&s, &project, "push", "d0", &push, None).0, 401);
    assert_eq!(
        hook(
            &s,
            &format!("{project}x"),
            "push",
            "d0",
            &push,
            Some(sign(secret, &raw))
        )
        .0,
        401
    );
    assert!(s.deployments(&project).is_empty());

    // ping answers; an unmapped branch deploys nothing.
    let ping = json!({"zen": "hi"});
    let (st, _) = hook(
        &s,
        &project,
        "ping",
        "d1",
        &ping,
        Some(sign(secret, &serde_json::to_vec(&ping).unwrap())),
    );
    assert_eq!(st, 200);
    let other = json!({"ref": "refs/heads/feature", "after": repo.head()});
    let (st, body) = hook(
        &s,
        &project,
        "push",
        "d2",
        &other,
        Some(sign(secret, &serde_json::to_vec(&other).unwrap())),
    );
    assert_eq!(st, 202);
    assert_eq!(body["status"], "ignored");
    assert!(s.deployments(&project).is_empty());

    // The same delivery twice makes one deployment.
    let started = Instant::now();
    let (st, body) = hook(&s, &project, "push", "d3", &push, Some(sign(secret, &raw)));
    assert_eq!(st, 202, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (st, body) = hook(&s, &project, "push", "d3", &push, Some(sign(secret, &raw)));
    assert_eq!((st, body["status"].as_str()), (202, Some("duplicate")));
    let all = wait_idle(&s, &project);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["trigger"], "webhook");
    assert_eq!(all[0]["status"], "succeeded", "{}", all[0]);
    assert_eq!(all[0]["commit"]["sha"], repo.head());
    wait_body(&s, &host(&project), "from webhook");
}

#[test]
fn pull_requests_get_a_preview_environment_that_is_torn_down_when_closed() {
    let project = unique("e2ep");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("main version");
    let secret = "pr-secret";
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        repo.path(),
        "--webhook-secret",
        secret,
    ]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        "PROD_ONLY=top-secret-prod",
    ]);
    git(repo.dir.path(), &["checkout", "-q", "-b", "feature"]);
    let sha = repo.commit_app("pr version", DOCKERFILE, "pr change");
    let opened = json!({"action": "opened", "number": 7, "pull_request": {"number": 7, "head": {"ref": "feature", "sha": sha}}});
    let raw = serde_json::to_vec(&opened).unwrap();
    let (st, body) = hook(
        &s,
        &project,
        "pull_request",
        "p1",
        &opened,
        Some(sign(secret, &raw)),
    );
    assert_eq!(st, 202, "{body}");
    let all = wait_idle(&s, &project);
    assert_eq!(all[0]["environmentName"], "pr-7");
    assert_eq!(all[0]["status"], "succeeded", "{}", all[0]);
    let pr_host = format!("{project}-pr-7.{BASE}");
    wait_body(&s, &pr_host, "pr version");
    // The preview has no production secrets.
    let vars = s.json(&[
        "env",
        "list",
        "--project",
        &project,
        "--env",
        "pr-7",
        "--json",
    ]);
    assert_eq!(vars, json!([]));

    let closed = json!({"action": "closed", "number": 7, "pull_request": {"number": 7}});
    let raw = serde_json::to_vec(&closed).unwrap();
    let (st, _) = hook(
        &s,
        &project,
        "pull_request",
        "p2",
        &closed,
        Some(sign(secret, &raw)),
    );
    assert_eq!(st, 202);
    assert_eq!(s.get_host(&pr_host, "/").unwrap().0, 404, "route gone");
    let envs = s.json(&["envs", "list", "--project", &project, "--json"]);
    assert!(envs.as_array().unwrap().iter().all(|e| e["name"] != "pr-7"));
    let out = docker(&[
        "ps",
        "-q",
        "--filter",
        "label=dev.berth.environment=pr-7",
        "--filter",
        &format!("label=dev.berth.project={project}"),
    ]);
    assert!(out.trim().is_empty(), "containers gone");
    let image = all[0]["image"]["ref"].as_str().unwrap();
    assert!(!image_exists(image), "the preview's image {image} is kept");
}

#[test]
fn an_idle_preview_whose_close_never_came_is_torn_down_after_the_ttl() {
    let project = unique("e2ettl");
    let _c = Cleanup(project.clone());
    let s = Server::start_with(&["--preview-ttl", "4s"]);
    let repo = AppRepo::new("main version");
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        repo.path(),
        "--webhook-secret",
        "ttl-secret",
    ]);
    git(repo.dir.path(), &["checkout", "-q", "-b", "feature"]);
    let sha = repo.commit_app("pr version", DOCKERFILE, "pr change");
    let opened = json!({"action": "opened", "number": 9, "pull_request": {"number": 9, "head": {"ref": "feature", "sha": sha}}});
    let raw = serde_json::to_vec(&opened).unwrap();
    let (st, body) = hook(
        &s,
        &project,
        "pull_request",
        "t1",
        &opened,
        Some(sign("ttl-secret", &raw)),
    );
    assert_eq!(st, 202, "{body}");
    let all = wait_idle(&s, &project);
    assert_eq!(all[0]["status"], "succeeded", "{}", all[0]);
    let image = all[0]["image"]["ref"].as_str().unwrap().to_string();
    let pr_host = format!("{project}-pr-9.{BASE}");
    wait_body(&s, &pr_host, "pr version");
    // Production is not a preview: it stays, however idle.
    s.ok(&["deploy", "--project", &project, "--wait"]);

    // No "closed" delivery: the TTL (4 s without a deployment) ends it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let envs = s.json(&["envs", "list", "--project", &project, "--json"]);
        if envs.as_array().unwrap().iter().all(|e| e["name"] != "pr-9") {
            break;
        }
        assert!(Instant::now() < deadline, "preview never reaped: {envs}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(s.get_host(&pr_host, "/").unwrap().0, 404, "route gone");
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=dev.berth.environment=pr-9",
        "--filter",
        &format!("label=dev.berth.project={project}"),
    ]);
    assert!(out.trim().is_empty(), "containers gone: {out}");
    // Images are pruned right after the teardown.
    let deadline = Instant::now() + Duration::from_secs(10);
    while image_exists(&image) {
        assert!(
            Instant::now() < deadline,
            "the preview's image {image} is kept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_body(&s, &host(&project), "main version");
    // Logged once the teardown (images included) returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains("preview environment idle") {
        assert!(Instant::now() < deadline, "the reaper logged nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn git_push_to_berth_deploys_the_branch_and_prints_its_stages() {
    let project = unique("e2eg");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("pushed");
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        "/nonexistent/origin.git",
    ]);
    let remote = format!(
        "http://git:{TOKEN}@127.0.0.1:{}/git/{project}.git",
        s.api_port
    );
    let out = std::process::Command::new("git")
        .args(["push", &remote, "main"])
        .current_dir(repo.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("remote: berth: deploying"), "{stderr}");
    assert!(stderr.contains("is live at"), "{stderr}");
    wait_body(&s, &host(&project), "pushed");
    let all = s.deployments(&project);
    assert_eq!(all[0]["trigger"], "git_push");
    assert_eq!(all[0]["commit"]["sha"], repo.head());

    // A project that clones over HTTP with a token in its URL (berth's own
    // git endpoint needs one): the token is stored sealed, never shown,
    // and given to the fetch.
    let mirror = format!("{project}m");
    let _cm = Cleanup(mirror.clone());
    let created = s.json(&["projects", "create", &mirror, "--repo", &remote, "--json"]);
    let bare = format!("http://127.0.0.1:{}/git/{project}.git", s.api_port);
    assert_eq!(created["repo"], bare.as_str());
    assert_eq!(created["hasRepoCredentials"], true);
    let shown = s.ok(&["projects", "show", &mirror]);
    assert!(!shown.contains(TOKEN), "{shown}");
    let d = s.json(&["deploy", "--project", &mirror, "--wait", "--json"]);
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["commit"]["sha"], repo.head());
    assert!(!d.to_string().contains(TOKEN), "{d}");
    for f in ["berth.db", "berth.db-wal"] {
        let bytes = std::fs::read(s.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{f} holds the repository token in clear"
        );
    }

    // A push whose berth.toml adds a service deploys it too, at that commit.
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\n\n[services.api]\nport = 3000\n",
    )
    .unwrap();
    let sha = repo.commit_app("pushed-2", DOCKERFILE, "add an api service");
    let out = std::process::Command::new("git")
        .args(["push", &remote, "main"])
        .current_dir(repo.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_body(&s, &host(&project), "pushed-2");
    wait_body(&s, &format!("api-{}", host(&project)), "pushed-2");
    let deadline = Instant::now() + Duration::from_secs(30);
    let api = loop {
        let all = s.deployments(&project);
        if let Some(api) = all
            .iter()
            .find(|d| d["serviceName"] == "api" && d["status"] == "succeeded")
        {
            break api.clone();
        }
        assert!(Instant::now() < deadline, "api never deployed: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(api["commit"]["sha"], sha.as_str());
    assert_eq!(api["trigger"], "git_push");
    let pushes = s.deployments(&project).len();

    // A branch no environment maps deploys nothing.
    git(repo.dir.path(), &["checkout", "-q", "-b", "unmapped"]);
    repo.commit_app("other", DOCKERFILE, "other");
    let out = std::process::Command::new("git")
        .args(["push", &remote, "unmapped"])
        .current_dir(repo.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mapped"));
    assert_eq!(s.deployments(&project).len(), pushes);

    // Without the token: refused.
    let bad = format!("http://git:nope@127.0.0.1:{}/git/{project}.git", s.api_port);
    let out = std::process::Command::new("git")
        .args(["push", &bad, "unmapped"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .current_dir(repo.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn ten_quick_triggers_end_with_the_last_commit_active_and_nothing_pending() {
    let project = unique("e2eq");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("q0");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let mut last = String::new();
    for i in 1..=10 {
        last = repo.commit_app(&format!("q{i}"), DOCKERFILE, &format!("q{i}"));
        s.ok(&["deploy", "--project", &project, "--ref", &last, "--json"]);
    }
    let all = wait_idle(&s, &project);
    assert_eq!(all.len(), 10);
    let active: Vec<_> = all.iter().filter(|d| d["isActive"] == true).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["commit"]["sha"], last);
    let cancelled = all.iter().filter(|d| d["status"] == "cancelled").count();
    assert!(cancelled >= 5, "queued ones were replaced: {cancelled}");
    assert!(all
        .iter()
        .filter(|d| d["status"] == "cancelled")
        .all(|d| d["failureMessage"]
            .as_str()
            .unwrap()
            .contains("replaced by")));
    wait_body(&s, &host(&project), "q10");
}

#[test]
fn release_commands_run_once_and_a_failing_one_keeps_the_previous_version() {
    let project = unique("e2er");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("r1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nrelease_command = \"echo release-ran-for-$BERTH_DEPLOYMENT_ID\"\n",
    )
    .unwrap();
    repo.commit_app("r1", DOCKERFILE, "with release");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    assert_eq!(step(&d1, "release")["status"], "succeeded");
    let id = d1["id"].as_str().unwrap();
    let logs = s.ok(&["logs", id]);
    assert_eq!(
        logs.matches(&format!("release-ran-for-{id}")).count(),
        1,
        "{logs}"
    );

    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nrelease_command = \"echo migrating; exit 3\"\n",
    )
    .unwrap();
    let r2 = repo.commit_app("r2", DOCKERFILE, "failing release");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(!ok);
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(
        msg.starts_with("release:") && msg.contains("code 3") && msg.contains("migrating"),
        "{msg}"
    );
    // the error report names the commit that failed
    assert!(msg.ends_with(&format!("(commit {})", &r2[..7])), "{msg}");
    assert_eq!(s.get_host(&host(&project), "/").unwrap().1, "r1");
}

#[test]
fn retention_prunes_old_images_and_promoting_a_pruned_one_rebuilds_it() {
    let project = unique("e2et");
    let _c = Cleanup(project.clone());
    // One warm deployment at most: the older ones' images may go.
    let s = Server::start_with(&["--max-warm", "1"]);
    let repo = AppRepo::new("t1");
    s.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        repo.path(),
        "--retain-images",
        "2",
    ]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let first_image = d1["image"]["ref"].as_str().unwrap().to_string();
    for i in 2..=4 {
        repo.commit_app(&format!("t{i}"), DOCKERFILE, &format!("t{i}"));
        let (ok, d) = deploy_wait(&s, &project);
        assert!(ok, "{d}");
    }
    assert!(!image_exists(&first_image), "the first image was pruned");
    let o = s.cli(&["promote", d1["id"].as_str().unwrap(), "--wait", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["trigger"], "promote");
    assert_eq!(step(&p, "build")["status"], "succeeded", "rebuilt: {p}");
    assert_eq!(p["commit"]["sha"], d1["commit"]["sha"]);
    wait_body(&s, &host(&project), "t1");
    let logs = s.ok(&["logs", p["id"].as_str().unwrap()]);
    assert!(logs.contains("pruned"), "{logs}");
}

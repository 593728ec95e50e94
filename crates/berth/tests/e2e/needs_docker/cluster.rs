//! Two servers on one PostgreSQL with real containers: a deploy asked of
//! the follower goes live on both edges; kill -9 of the leader during a
//! deploy with load on the other edge: 0 failed requests, the other leads
//! within 10 s, nothing stays queued or running, the next deploy succeeds.
//! `git push` and `berth cancel` asked of the follower work as on one
//! server. Traffic served by the follower's edge is in the leader's charts.

use super::{host, unique, Cleanup};
use crate::cluster::{database, instance_id, leader, member, wait_leader};
use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn deployments(s: &Server, project: &str) -> Vec<Value> {
    s.deployments(project)
}

fn wait_body(s: &Server, host: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, body)) = s.get_host(host, "/") {
            if body.contains(want) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{host} never served {want:?}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn deploy_on_a_follower_goes_live_on_both_edges_and_kill9_of_the_leader_mid_deploy() {
    let Some(url) = database() else {
        return;
    };
    let project = unique("e2ecl");
    let _c = Cleanup(project.clone());
    let a = member(&url);
    let (leader_id, _) = wait_leader(&a, Duration::from_secs(10), |_, _| true);
    let b = member(&url);
    assert_eq!(leader_id, instance_id(&a));
    let repo = AppRepo::new("cluster v1");
    a.ok(&["projects", "create", &project, "--repo", repo.path()]);

    // Asked of the follower: queued in the store, run by the leader, and
    // the answer is the one a single server gives.
    let o = b.cli(&["deploy", "--project", &project, "--wait", "--json"]);
    let d: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}\nA:\n{}\nB:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            a.log(),
            b.log()
        )
    });
    assert!(o.status.success(), "{d}\nA:\n{}", a.log());
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["promotionStage"], "active");
    wait_body(&a, &host(&project), "cluster v1", Duration::from_secs(5));
    wait_body(&b, &host(&project), "cluster v1", Duration::from_secs(2));

    // Load on the follower's edge; a deploy asked of it; kill -9 of the
    // leader while that deploy runs.
    let load = Load::start(
        b.http_port,
        &host(&project),
        4,
        200_000,
        Duration::from_secs(120),
    );
    repo.commit_app("cluster v2", DOCKERFILE, "second version");
    let queued = b.json(&["deploy", "--project", &project, "--json"]);
    let id = queued["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = b.json(&["inspect", &id, "--json"]);
        if d["status"] == "running" {
            break;
        }
        assert!(d["status"] == "queued", "{d}");
        assert!(
            Instant::now() < deadline,
            "the leader never picked it up\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut a = a;
    let killed = Instant::now();
    a.kill9();
    let (new_leader, _) = wait_leader(&b, Duration::from_secs(10), |id, _| id != leader_id);
    let failover = killed.elapsed();
    eprintln!("failover: kill -9 -> new leader in {failover:?}");
    assert_eq!(new_leader, instance_id(&b));

    // Nothing stays queued or running.
    let deadline = Instant::now() + Duration::from_secs(60);
    let interrupted = loop {
        let d = b.json(&["inspect", &id, "--json"]);
        if d["status"] != "queued" && d["status"] != "running" {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "still {}: {d}\n{}",
            d["status"],
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    match interrupted["status"].as_str().unwrap() {
        "failed" => assert!(
            interrupted["failureMessage"]
                .as_str()
                .unwrap()
                .contains("interrupted"),
            "{interrupted}"
        ),
        "succeeded" => {}
        other => panic!("{other}: {interrupted}"),
    }
    assert!(
        deployments(&b, &project)
            .iter()
            .all(|d| d["status"] != "queued" && d["status"] != "running"),
        "{:?}",
        deployments(&b, &project)
    );

    // The next deploy succeeds on the survivor, and its edge serves it.
    let (ok, d) = super::deploy_wait(&b, &project);
    assert!(ok, "{d}\n{}", b.log());
    wait_body(&b, &host(&project), "cluster v2", Duration::from_secs(5));
    let report = load.finish();
    assert!(report.ok > 0);
    assert_eq!(
        (report.errors, report.non2xx),
        (0, 0),
        "failed requests at the surviving edge: {:?}",
        report.samples
    );
}

/// `--takeover` of the leader of a cluster (issue 13 on a PostgreSQL
/// store): the new process leads under a new epoch (the old one's writes
/// are fenced), the follower stays a follower, the load on the leader's
/// edge sees no failure, the containers are kept and the next deploy asked
/// of the follower goes live on both edges.
#[test]
fn takeover_of_the_cluster_leader_leads_under_a_new_epoch_and_keeps_serving() {
    let Some(url) = database() else {
        return;
    };
    let project = unique("e2eclt");
    let _c = Cleanup(project.clone());
    let mut a = member(&url);
    let (leader_id, epoch) = wait_leader(&a, Duration::from_secs(10), |_, _| true);
    assert_eq!(leader_id, instance_id(&a));
    let b = member(&url);
    let repo = AppRepo::new("takeover v1");
    a.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = super::deploy_wait(&a, &project);
    assert!(ok, "{d1}\n{}", a.log());
    let id1 = d1["id"].as_str().unwrap().to_string();
    let c1 = a.json(&["inspect", &id1, "--json"])["runtime"]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_body(&a, &host(&project), "takeover v1", Duration::from_secs(5));
    wait_body(&b, &host(&project), "takeover v1", Duration::from_secs(5));
    let load = Load::start(
        a.http_port,
        &host(&project),
        4,
        200_000,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(300));

    let mut old = a.takeover();
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the old process did not exit:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "old process: {exit}\n{}", a.log());
    assert!(
        a.log().contains("took the listening sockets over"),
        "{}",
        a.log()
    );

    // Same member, a new epoch; one leader as both servers see it.
    let (id, new_epoch) = wait_leader(&a, Duration::from_secs(15), |_, e| e > epoch);
    assert_eq!(id, leader_id, "{}", a.log());
    assert_eq!(leader(&b), Some((id.clone(), new_epoch)));
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.finish();
    assert!(report.ok > 0);
    assert_eq!(
        (report.errors, report.non2xx),
        (0, 0),
        "failed requests across the takeover: {:?}\n{}",
        report.samples,
        a.log()
    );
    // The container was adopted, not replaced.
    let after = a.json(&["inspect", &id1, "--json"]);
    assert_eq!(after["isActive"], true, "{after}");
    assert_eq!(after["runtime"]["instanceId"], c1.as_str());

    // The control plane is the new process's: a deploy asked of the
    // follower is picked up and goes live on both edges.
    repo.commit_app("takeover v2", DOCKERFILE, "second version");
    let (ok, d2) = super::deploy_wait(&b, &project);
    assert!(ok, "{d2}\nA:\n{}", a.log());
    wait_body(&a, &host(&project), "takeover v2", Duration::from_secs(5));
    wait_body(&b, &host(&project), "takeover v2", Duration::from_secs(5));
    assert_eq!(leader(&b), Some((id, new_epoch)));
}

fn push(repo: &AppRepo, s: &Server, project: &str) -> std::process::Output {
    let remote = format!(
        "http://git:{TOKEN}@127.0.0.1:{}/git/{project}.git",
        s.api_port
    );
    std::process::Command::new("git")
        .args(["push", &remote, "main"])
        .current_dir(repo.dir.path())
        .output()
        .unwrap()
}

/// `git push` to the follower: the push is kept in the store, the leader
/// builds it from its own copy of it (not from the follower's disk) and it
/// goes live on both edges; a fetch from the leader sees the pushed commit.
/// A cancel asked of the follower of a build the leader runs: recorded in
/// the store, carried out by the leader, the answer a single server gives.
#[test]
fn git_push_and_cancel_asked_of_a_follower_work_as_on_one_server() {
    let Some(url) = database() else {
        return;
    };
    let project = unique("e2eclg");
    let _c = Cleanup(project.clone());
    let a = member(&url);
    let (leader_id, _) = wait_leader(&a, Duration::from_secs(10), |_, _| true);
    let b = member(&url);
    assert_eq!(leader_id, instance_id(&a));
    let repo = AppRepo::new("pushed to the follower");
    a.ok(&[
        "projects",
        "create",
        &project,
        "--repo",
        "/nonexistent/origin.git",
    ]);

    let out = push(&repo, &b, &project);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\nA:\n{}", a.log());
    assert!(stderr.contains("is live at"), "{stderr}\nA:\n{}", a.log());
    wait_body(
        &a,
        &host(&project),
        "pushed to the follower",
        Duration::from_secs(5),
    );
    wait_body(
        &b,
        &host(&project),
        "pushed to the follower",
        Duration::from_secs(2),
    );
    let all = deployments(&b, &project);
    assert_eq!(all[0]["trigger"], "git_push");
    assert_eq!(all[0]["commit"]["sha"], repo.head());
    // The leader's own copy holds the push (it cloned from it) ...
    let copy = a.data_dir().join(format!("git/{project}.git"));
    assert_eq!(
        git(&copy, &["rev-parse", "refs/heads/main"]),
        repo.head(),
        "the leader has no copy of the push"
    );
    // ... and a fetch from the leader's endpoint sees the pushed commit.
    let from_a = format!(
        "http://git:{TOKEN}@127.0.0.1:{}/git/{project}.git",
        a.api_port
    );
    let ls = git(repo.dir.path(), &["ls-remote", &from_a, "refs/heads/main"]);
    assert!(ls.starts_with(&repo.head()), "{ls}");

    // A slow build, pushed to the follower; cancelled there while the
    // leader builds it.
    let slow = DOCKERFILE.replace(
        "COPY www /www",
        "COPY www /www\nRUN [\"/bin/sleep\", \"48\"]",
    );
    repo.commit_app("never", &slow, "slow build");
    let pusher = {
        let dir = repo.dir.path().to_path_buf();
        let remote = format!(
            "http://git:{TOKEN}@127.0.0.1:{}/git/{project}.git",
            b.api_port
        );
        std::thread::spawn(move || {
            std::process::Command::new("git")
                .args(["push", &remote, "main"])
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let building = deployments(&b, &project).into_iter().find(|d| {
            d["commit"]["sha"] == repo.head().as_str()
                && super::step(d, "build")["status"] == "running"
        });
        if let Some(d) = building {
            break d["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the build never started: {:?}\nA:\n{}",
            deployments(&b, &project),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    let c = b.json(&["cancel", &id, "--json"]);
    assert_eq!(c["status"], "cancelled", "{c}\nA:\n{}", a.log());
    assert_eq!(super::step(&c, "build")["status"], "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    let out = pusher.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cancelled"), "{stderr}");
    // The build's container goes, and the previous version still serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    while docker(&["ps", "--no-trunc", "--format", "{{.Command}}"]).contains("sleep 48") {
        assert!(Instant::now() < deadline, "the build kept running");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_body(
        &b,
        &host(&project),
        "pushed to the follower",
        Duration::from_secs(2),
    );
    // Again: the same conflict a single server answers.
    let o = b.cli(&["cancel", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already ended"));
}

/// Requests to `host` through `s`'s edge until `n` got the app's answer
/// (the first ones may find no route yet: 404 until the server's edge
/// follows the table); returns how many reached the app.
fn serve(s: &Server, host: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reached = 0;
    while reached < n {
        let (status, body) = s.get_host(host, "/").expect("the edge answers");
        match status {
            200 => reached += 1,
            404 if reached == 0 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => panic!("{status} from the edge: {body}\n{}", s.log()),
        }
    }
    reached
}

/// The requests the service page of `s` charts for deployment `id` (its
/// legend key's `data-requests`; 0 while it has none).
fn charted(s: &Server, project: &str, id: &str) -> u64 {
    let url = format!(
        "{}/console/projects/{project}/services/production/web",
        s.api()
    );
    let r = s
        .client()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .expect("the console answers");
    assert_eq!(r.status().as_u16(), 200, "{url}");
    let html = r.text().unwrap();
    let key = format!(r#"data-deployment="{id}" data-requests=""#);
    html.find(&key)
        .and_then(|i| html[i + key.len()..].split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Wait until the service page of `s` charts exactly `want` requests of
/// `id` (every server samples its edge every 10 s).
fn wait_charted(s: &Server, project: &str, id: &str, want: u64, others: &Server) {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let got = charted(s, project, id);
        if got == want {
            return;
        }
        assert!(got < want, "{got} requests charted, {want} served");
        assert!(
            Instant::now() < deadline,
            "the charts show {got} of the {want} requests served\nthis server:\n{}\nthe other:\n{}",
            s.log(),
            others.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 15's charts with several servers: traffic served only by the
/// follower's edge is charted on the leader's service page (every server
/// writes its own per-minute rows, the page sums them), and traffic then
/// served by the leader's edge adds to it. Both pages show the same sum.
#[test]
fn traffic_through_the_followers_edge_is_charted_on_the_leader() {
    let Some(url) = database() else {
        return;
    };
    let project = unique("e2ecc");
    let _c = Cleanup(project.clone());
    let a = member(&url);
    let (leader_id, _) = wait_leader(&a, Duration::from_secs(10), |_, _| true);
    assert_eq!(leader_id, instance_id(&a));
    let b = member(&url);
    assert_ne!(instance_id(&b), leader_id);
    let repo = AppRepo::new("charts on two servers");
    a.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = super::deploy_wait(&a, &project);
    assert!(ok, "{d}\n{}", a.log());
    let id = d["id"].as_str().unwrap().to_string();

    // Only the follower's edge serves: the leader's page charts it.
    let through_b = serve(&b, &host(&project), 30);
    wait_charted(&a, &project, &id, through_b, &b);
    assert_eq!(charted(&b, &project, &id), through_b);

    // Then the leader's edge too: the page sums both servers.
    let through_a = serve(&a, &host(&project), 12);
    wait_charted(&a, &project, &id, through_b + through_a, &b);
    wait_charted(&b, &project, &id, through_b + through_a, &a);
}

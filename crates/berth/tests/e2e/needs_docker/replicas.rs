//! `replicas = 3` on the Docker runtime: three containers behind one
//! route, a cutover and a rollback under load without a failed request, a
//! `docker kill` of one replica taken out of the rotation and replaced.

use super::{deploy_wait, host, unique, wait_body, Cleanup};
use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Answers the container's hostname (its short id): which replica served.
const WHO_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
hostname
";

// No bake window: the replaced replicas are drained and removed at once.
const TOML: &str = "[services.web]
replicas = 3
bake = \"0\"

[services.web.readiness]
interval = \"2s\"
";

fn instances(d: &Value) -> Vec<Value> {
    d["instances"].as_array().cloned().unwrap_or_default()
}

fn who(s: &Server, h: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| s.get_host(h, "/cgi-bin/who").ok())
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b.trim().to_owned())
        .collect()
}

#[test]
fn three_replicas_cut_over_roll_back_and_survive_a_killed_one() {
    let project = unique("e2erp");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("v1");
    let p = repo.dir.path();
    std::fs::write(p.join("berth.toml"), TOML).unwrap();
    std::fs::write(p.join("www/cgi-bin/who"), WHO_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            p.join("www/cgi-bin/who"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    repo.commit_app("v1", DOCKERFILE, "three replicas");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}\n{}", s.log());
    assert_eq!(d1["replicas"], 3, "{d1}");
    let inst = instances(&d1);
    assert_eq!(inst.len(), 3, "{d1}");
    for i in &inst {
        for key in ["id", "node", "address", "health"] {
            assert!(i.get(key).is_some(), "{key} missing: {i}");
        }
        assert_eq!(i["health"], "healthy", "{i}");
        assert!(
            i["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{i}"
        );
    }
    let ids: BTreeSet<&str> = inst.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let h = host(&project);
    // The edge balances over the three.
    let served = who(&s, &h, 30);
    assert_eq!(served.len(), 3, "replicas that answered: {served:?}");

    // A cutover and a rollback under load: no failed request.
    let load = Load::start(s.http_port, &h, 4, 200_000, Duration::from_secs(180));
    repo.commit_app("v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}");
    wait_body(&s, &h, "v2");
    assert_eq!(instances(&d2).len(), 3);
    let o = s.cli(&[
        "rollback",
        "--project",
        &project,
        "--service",
        "web",
        "--wait",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rb: Value = serde_json::from_slice(&o.stdout).unwrap();
    wait_body(&s, &h, "v1");
    let report = load.finish();
    assert_eq!(
        report.non2xx + report.errors,
        0,
        "{} ok, {} non-2xx, {} errors; samples {:?}",
        report.ok,
        report.non2xx,
        report.errors,
        report.samples
    );
    assert!(report.ok > 200, "the load generator ran: {}", report.ok);
    assert_eq!(instances(&rb).len(), 3, "{rb}");
    // v2's three containers are stopped and removed.
    let d2_id = d2["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=dev.berth.deployment={d2_id}"),
        ]);
        if left.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "v2's containers left: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // docker kill of one replica: it leaves the rotation at the next probe
    // (interval 2 s), then is replaced; afterwards nothing fails.
    let rb_id = rb["id"].as_str().unwrap().to_owned();
    let victim = instances(&rb)[1].clone();
    let victim_id = victim["id"].as_str().unwrap().to_owned();
    let load = Load::start(s.http_port, &h, 4, 400_000, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    docker(&["kill", &victim_id]);
    let killed_at = Instant::now();
    let mut out_of_rotation = None;
    let replaced = loop {
        let cur = s.json(&["inspect", &rb_id, "--json"]);
        let now = instances(&cur);
        if out_of_rotation.is_none()
            && now
                .iter()
                .any(|i| i["id"] == victim["id"] && i["health"] == "unhealthy")
        {
            out_of_rotation = Some(killed_at.elapsed());
        }
        if now.len() == 3 && now.iter().all(|i| i["id"] != victim["id"]) {
            break cur;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the killed replica was not replaced: {cur}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let replaced_after = killed_at.elapsed();
    let during = (load.ok.load(std::sync::atomic::Ordering::Relaxed),);
    let failed_during = load.non2xx.load(std::sync::atomic::Ordering::Relaxed)
        + load.errors.load(std::sync::atomic::Ordering::Relaxed);
    // Once the replacement is routed, nothing fails any more.
    std::thread::sleep(Duration::from_secs(3));
    let report = load.finish();
    let failed = report.non2xx + report.errors;
    eprintln!(
        "docker kill of 1 of 3 replicas: out of rotation after {:?}, replaced after {:.1}s; \
         {failed} of {} requests failed ({} ok before the replacement); samples {:?}",
        out_of_rotation,
        replaced_after.as_secs_f64(),
        report.ok + failed,
        during.0,
        report.samples.iter().take(2).collect::<Vec<_>>()
    );
    assert_eq!(
        failed, failed_during,
        "requests failed after the replacement was routed"
    );
    assert!(
        replaced["health"] == "healthy",
        "the deployment stayed healthy: {replaced}"
    );
    let served = who(&s, &h, 30);
    assert_eq!(served.len(), 3, "replicas that answer now: {served:?}");
    assert!(
        !served.contains(&victim_id[..12]),
        "the killed replica answered"
    );
}

//! Canary rollouts (004): weighted stages judged against the previous
//! deployment, automatic rollback on regression.

use super::{deploy_wait, host, unique, Cleanup};
use crate::harness::*;
use std::time::Duration;

const CANARY_TOML: &str = "[services.web.canary]
stages = [50, 100]
observation_window = \"3s\"
error_rate_threshold = 0.05
min_requests = 20
";

fn app_cgi(repo: &AppRepo, status: &str) {
    let p = repo.dir.path().join("www/cgi-bin/app");
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho 'Status: {status}'\necho 'Content-Type: text/plain'\necho\necho app-{status}\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_regressing_canary_is_rolled_back_and_a_healthy_one_goes_live() {
    let project = unique("e2ey");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("c1");
    std::fs::write(repo.dir.path().join("berth.toml"), CANARY_TOML).unwrap();
    app_cgi(&repo, "200 OK");
    repo.commit_app("c1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);

    // v2 answers 500: the 50% stage sees it and rolls back.
    app_cgi(&repo, "500 Internal Server Error");
    repo.commit_app("c2", DOCKERFILE, "v2 broken");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(60),
    );
    let (ok, d2) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(!ok, "{d2}");
    assert_eq!(d2["status"], "failed");
    assert_eq!(d2["promotionStage"], "canary");
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(msg.contains("canary at 50% regressed: error rate"), "{msg}");
    assert!(report.non2xx > 0, "the canary really took traffic");
    assert!(report.ok > report.non2xx, "most requests went to v1");
    let after = s.get_host(&h, "/cgi-bin/app").unwrap();
    assert_eq!(after.0, 200, "v1 serves again: {after:?}");
    let active: Vec<_> = s
        .deployments(&project)
        .into_iter()
        .filter(|d| d["isActive"] == true)
        .collect();
    assert_eq!(active[0]["id"], d1["id"]);

    // v3 is healthy: it passes the stages and goes live.
    app_cgi(&repo, "200 OK");
    repo.commit_app("c3", DOCKERFILE, "v3");
    let load = Load::start_path(
        s.http_port,
        &h,
        "/cgi-bin/app",
        3,
        20_000,
        Duration::from_secs(60),
    );
    let (ok, d3) = deploy_wait(&s, &project);
    let report = load.finish();
    assert!(ok, "{d3}");
    assert_eq!(d3["canaryWeight"], 100);
    assert_eq!(report.non2xx + report.errors, 0, "{:?}", report.samples);
    let logs = s.ok(&["logs", d3["id"].as_str().unwrap()]);
    assert!(logs.contains("canary: 50% of traffic"), "{logs}");
    assert_eq!(s.get_host(&h, "/").unwrap().1, "c3");
}

/// "No data" is not a pass (issue 16): a canary nobody calls extends its
/// window 3 times and fails with "saw 0 requests", the previous version
/// serving; with `on_low_traffic = "promote"` it completes on health alone
/// and says so. `berth inspect` lists every judged window.
#[test]
fn a_canary_without_traffic_is_not_promoted_silently() {
    let project = unique("e2ez");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("q1");
    let toml = |rule: &str| {
        format!(
            "[services.web.canary]\nstages = [50, 100]\nobservation_window = \"1s\"\non_low_traffic = \"{rule}\"\n"
        )
    };
    std::fs::write(repo.dir.path().join("berth.toml"), toml("extend")).unwrap();
    repo.commit_app("q1", DOCKERFILE, "v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);

    repo.commit_app("q2", DOCKERFILE, "v2 nobody calls");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(!ok, "{d2}");
    let msg = d2["failureMessage"].as_str().unwrap();
    assert!(
        msg.contains("canary at 50% saw 0 requests in 4 windows, fewer than min_requests = 100"),
        "{msg}"
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "q1", "v1 still serves");
    let inspect = s.ok(&["inspect", d2["id"].as_str().unwrap()]);
    assert!(inspect.contains("Canary decisions"), "{inspect}");
    for window in 1..=3 {
        assert!(
            inspect.contains(&format!(
                "50% stage, window {window}: candidate 0 requests, 0 errors, p95 -;"
            )),
            "{inspect}"
        );
    }
    assert!(
        inspect.contains("window 4: candidate 0 requests")
            && inspect.contains("verdict: failed: saw 0 requests"),
        "{inspect}"
    );

    std::fs::write(repo.dir.path().join("berth.toml"), toml("promote")).unwrap();
    repo.commit_app("q3", DOCKERFILE, "v3 promoted on health");
    let (ok, d3) = deploy_wait(&s, &project);
    assert!(ok, "{d3}");
    assert_eq!(d3["canaryWeight"], 100);
    let logs = s.ok(&["logs", d3["id"].as_str().unwrap()]);
    assert!(
        logs.contains("canary: 50% stage promoted on health alone: it saw 0 request(s)"),
        "{logs}"
    );
    assert_eq!(s.get_host(&h, "/").unwrap().1, "q3");
}

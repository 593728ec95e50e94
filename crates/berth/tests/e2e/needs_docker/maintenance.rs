//! `berth maintenance on|off`: the edge answers the service's hostnames
//! with 503, `Retry-After` and berth's maintenance page while the app keeps
//! running (its health checks pass: a deploy made meanwhile succeeds and
//! stays behind the page), across a kill -9 restart, until it is off.

use super::*;

/// GET through the edge: status, `Retry-After`, body.
fn get(s: &Server, host: &str) -> (u16, Option<String>, String) {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/x", s.http_port))
        .header("host", host)
        .send()
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry, r.text().unwrap())
}

fn assert_maintenance(s: &Server, host: &str) {
    let (status, retry, body) = get(s, host);
    assert_eq!(status, 503, "{host}: {body}\n{}", s.log());
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(secs > 0);
    assert!(body.contains("maintenance"), "{body}");
}

#[test]
fn maintenance_answers_503_keeps_the_app_healthy_survives_a_restart_and_ends() {
    let project = unique("e2emt");
    let _c = Cleanup(project.clone());
    let mut s = Server::start();
    let repo = AppRepo::new("maint v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let h = host(&project);
    wait_body(&s, &h, "maint v1");

    let out = s.ok(&["maintenance", "on", "--project", &project]);
    assert!(out.contains("(every service)"), "{out}");
    assert_maintenance(&s, &h);
    let status = s.json(&["maintenance", "status", "--project", &project, "--json"]);
    assert_eq!(status[0]["environmentName"], "production");
    assert!(status[0]["serviceName"].is_null());

    // The app behind the page is healthy and deploys go on: the new
    // deployment passes its health checks and stays behind the page.
    repo.commit_app("maint v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(
        ok,
        "a deploy during maintenance must pass its health checks: {d2}"
    );
    assert_eq!(d2["health"], "healthy");
    assert_maintenance(&s, &h);
    let preview = d2["previewUrl"].as_str().unwrap();
    let preview_host = preview
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_maintenance(&s, &preview_host);

    // A restart keeps it.
    s.kill9();
    s.spawn();
    std::thread::sleep(Duration::from_millis(500));
    assert_maintenance(&s, &h);

    // Off for one service while the whole environment is on: refused,
    // saying why; off for the environment: the app again.
    let o = s.cli(&[
        "maintenance",
        "off",
        "--project",
        &project,
        "--service",
        "web",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("whole of"), "{err}");
    assert_maintenance(&s, &h);
    let out = s.ok(&["maintenance", "off", "--project", &project]);
    assert!(out.contains("nothing of project"), "{out}");
    assert_eq!(s.get_host(&h, "/").unwrap().0, 200);
    wait_body(&s, &h, "maint v2");
    wait_body(&s, &preview_host, "maint v2");

    // One service; a service never deployed is a one-line error.
    s.ok(&[
        "maintenance",
        "on",
        "--project",
        &project,
        "--service",
        "web",
    ]);
    assert_maintenance(&s, &h);
    let o = s.cli(&[
        "maintenance",
        "on",
        "--project",
        &project,
        "--service",
        "nope",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("never deployed"), "{err}");
    let o = s.cli(&["maintenance", "on", "--project", &project, "--env", "nope"]);
    assert!(!o.status.success());
    s.ok(&[
        "maintenance",
        "off",
        "--project",
        &project,
        "--service",
        "web",
    ]);
    wait_body(&s, &h, "maint v2");

    // Every change is in the audit log.
    let audit = s.ok(&["audit", "--project", &project]);
    assert_eq!(audit.matches("maintenance.on").count(), 2, "{audit}");
    assert_eq!(audit.matches("maintenance.off").count(), 2, "{audit}");
}

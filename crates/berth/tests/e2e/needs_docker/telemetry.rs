//! The build SHA reaches the app: the telemetry variables every instance
//! gets, a user's value kept, and the edge's trace context.

use super::*;

/// A CGI script printing the environment busybox httpd runs it with (the
/// container's variables plus the request's headers as `HTTP_*`).
const ENV_CGI: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n";

fn env_of(s: &Server, project: &str, traceparent: Option<&str>) -> String {
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut r = c
        .get(format!("http://127.0.0.1:{}/cgi-bin/env", s.http_port))
        .header("host", host(project));
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let r = r.send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().unwrap()
}

fn var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn instances_get_the_sha_in_telemetry_variables_and_a_traceparent() {
    let project = unique("e2eo");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("o1");
    let cgi = repo.dir.path().join("www/cgi-bin/env");
    std::fs::write(&cgi, ENV_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sha = repo.commit_app("o1", DOCKERFILE, "print the environment");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "SENTRY_RELEASE=mine",
        "OTEL_RESOURCE_ATTRIBUTES=team=shop",
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");
    let id = d["id"].as_str().unwrap();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let env = env_of(
        &s,
        &project,
        Some(&format!("00-{trace}-00f067aa0ba902b7-01")),
    );
    let attrs = var(&env, "OTEL_RESOURCE_ATTRIBUTES").unwrap_or_else(|| panic!("{env}"));
    assert!(
        attrs.starts_with("team=shop,"),
        "the user's keys kept: {attrs}"
    );
    assert!(attrs.contains(&format!("service.version={sha}")), "{attrs}");
    assert!(
        attrs.contains(&format!("berth.deployment.id={id}")),
        "{attrs}"
    );
    assert!(
        attrs.contains("deployment.environment.name=production"),
        "{attrs}"
    );
    assert_eq!(
        var(&env, "SENTRY_RELEASE"),
        Some("mine"),
        "user-set value kept"
    );
    assert_eq!(var(&env, "SENTRY_ENVIRONMENT"), Some("production"));
    assert_eq!(var(&env, "SOURCE_VERSION"), Some(sha.as_str()));
    assert_eq!(var(&env, "BERTH_GIT_SHA"), Some(sha.as_str()));
    assert_eq!(var(&env, "OTEL_SERVICE_NAME"), Some("web"));
    // the same trace, the edge's span as the parent
    let tp = var(&env, "HTTP_TRACEPARENT").unwrap_or_else(|| panic!("{env}"));
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
    assert!(
        !tp.contains("00f067aa0ba902b7") && tp.ends_with("-01"),
        "{tp}"
    );
    // none sent: a fresh valid one
    let env = env_of(&s, &project, None);
    let tp = var(&env, "HTTP_TRACEPARENT").unwrap_or_else(|| panic!("{env}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert!(
        parts.len() == 4 && parts[0] == "00" && parts[1].len() == 32 && parts[2].len() == 16,
        "{tp}"
    );
    assert_ne!(parts[1], trace);
}

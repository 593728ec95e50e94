//! The bake window on a real engine: a version that answers 500 after it
//! passed its readiness check is rolled back by berth itself, onto the
//! previous version's still-running container.

use super::{deploy_wait, host, unique, wait_body, Cleanup};
use crate::harness::*;
use std::time::{Duration, Instant};

/// A CGI answering 500 on every request (the whole status line, as busybox
/// httpd passes a CGI's output starting with "HTTP/" through unchanged).
const BOOM_CGI: &str = "#!/bin/sh
printf 'HTTP/1.0 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nboom\\n'
";

#[test]
fn a_version_answering_500_after_readiness_is_rolled_back_by_itself() {
    let project = unique("e2ebk");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("v2");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}");
    let h = host(&project);
    wait_body(&s, &h, "v2");
    let c2 = d2["runtime"]["instanceId"].as_str().unwrap().to_string();
    let started = |c: &str| docker(&["inspect", "-f", "{{.State.StartedAt}}", c]);
    let c2_started = started(&c2);

    // v3: GET / (its readiness check) is fine; the app answers 500.
    let cgi = repo.dir.path().join("www/cgi-bin/app");
    std::fs::write(&cgi, BOOM_CGI).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    repo.commit_app("v3", DOCKERFILE, "v3 breaks the app");
    let (ok, d3) = deploy_wait(&s, &project);
    assert!(ok, "v3 passed its readiness check: {d3}");
    let id3 = d3["id"].as_str().unwrap().to_string();
    wait_body(&s, &h, "v3");
    let (st, _) = s.get_host(&h, "/cgi-bin/app").unwrap();
    assert_eq!(st, 500, "v3's app is broken");

    // Traffic on the broken app: berth flips back to v2 by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        for _ in 0..20 {
            let _ = s.get_host(&h, "/cgi-bin/app");
        }
        let cur = s.json(&["inspect", &id3, "--json"]);
        if cur["status"] == "failed" {
            break cur;
        }
        assert!(Instant::now() < deadline, "never rolled back: {cur}");
    };
    assert_eq!(failed["promotionStage"], "rolled_back", "{failed}");
    let msg = failed["failureMessage"].as_str().unwrap();
    assert!(
        msg.contains("error rate") && msg.contains("bake window") && msg.contains("requests"),
        "{msg}"
    );
    wait_body(&s, &h, "v2");
    // On v2's own container, not restarted.
    let all = s.deployments(&project);
    let active: Vec<_> = all.iter().filter(|d| d["isActive"] == true).collect();
    assert_eq!(active.len(), 1, "{all:?}");
    assert_eq!(active[0]["trigger"], "rollback");
    assert_eq!(active[0]["runtime"]["instanceId"], c2.as_str());
    assert_eq!(started(&c2), c2_started, "v2's container was not restarted");
    let (st, body) = s.get_host(&h, "/").unwrap();
    assert_eq!((st, body.trim()), (200, "v2"));
}

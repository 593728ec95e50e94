//! Build-time variables (issue 3, item 7): plain ones flagged `--build` are
//! build arguments; secrets reach the build only as BuildKit secrets and
//! never a layer, the image history, a log line or the API.

use super::{deploy_wait, host, unique, wait_body, Cleanup};
use crate::harness::*;
use std::process::Command;

const TOKEN_VALUE: &str = "npm_Bu1ldS3cretThatMustNotLeak";

/// Proves the build saw the secret (by its hash: a RUN line is history)
/// and the flagged plain variable (as a build argument).
fn dockerfile() -> String {
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(TOKEN_VALUE.as_bytes()))
    };
    format!(
        "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
COPY www /www
ARG GREETING
RUN --mount=type=secret,id=NPM_TOKEN,required=true sh -c 'test \"$(sha256sum < /run/secrets/NPM_TOKEN | cut -c1-64)\" = \"{sum}\" && echo \"secret-seen $GREETING\" > /www/proof.txt && echo build-saw-the-secret'
EXPOSE 3000
CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]
"
    )
}

#[test]
fn build_secrets_reach_the_build_only_as_buildkit_secrets() {
    let project = unique("e2ebs");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("unused");
    repo.commit_app("with-secret", &dockerfile(), "needs a build secret");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--build",
        "GREETING=hello",
    ]);

    // A secret not flagged for builds never reaches one: the build fails,
    // saying what to do, and nothing is served.
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        &format!("NPM_TOKEN={TOKEN_VALUE}"),
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(!ok, "{d}");
    let msg = d["failureMessage"].as_str().unwrap();
    assert!(msg.starts_with("build:"), "{msg}");
    assert!(msg.contains("--build"), "{msg}");

    // Flagged: the build sees it.
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        "--build",
        &format!("NPM_TOKEN={TOKEN_VALUE}"),
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");
    wait_body(&s, &host(&project), "with-secret");
    let (status, proof) = s.get_host(&host(&project), "/proof.txt").unwrap();
    assert_eq!(status, 200);
    assert_eq!(proof.trim(), "secret-seen hello");

    // Not in the image's history or layers, the deployment, its logs, the
    // server log or the data dir.
    let image = d["image"]["ref"].as_str().unwrap().to_string();
    let history = Command::new("docker")
        .args(["history", "--no-trunc", &image])
        .output()
        .unwrap();
    assert!(history.status.success());
    assert!(!String::from_utf8_lossy(&history.stdout).contains(TOKEN_VALUE));
    let saved = Command::new("docker")
        .args(["save", &image])
        .output()
        .unwrap();
    assert!(saved.status.success());
    assert!(!saved
        .stdout
        .windows(TOKEN_VALUE.len())
        .any(|w| w == TOKEN_VALUE.as_bytes()));
    assert!(!d.to_string().contains(TOKEN_VALUE));
    let id = d["id"].as_str().unwrap();
    let logs = s.ok(&["logs", id]);
    assert!(logs.contains("build-saw-the-secret"), "{logs}");
    assert!(!logs.contains(TOKEN_VALUE));
    assert!(!s.log().contains(TOKEN_VALUE));
    for f in ["berth.db", "berth.db-wal"] {
        let bytes = std::fs::read(s.data_dir().join(f)).unwrap_or_default();
        assert!(!bytes
            .windows(TOKEN_VALUE.len())
            .any(|w| w == TOKEN_VALUE.as_bytes()));
    }
}

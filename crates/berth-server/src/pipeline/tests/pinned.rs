//! What you asked for is what you get: a deploy records the commit its ref
//! names when it is requested ([`Deployer::pin_ref`]), so a push landing on
//! the branch while the deployment waits for its slot does not change what
//! is deployed. Real git (a repository in the test's temp dir, cloned and
//! resolved by `berth_build`), the fake runtime and a real store.

use super::*;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new commit on the repository's `main`; its SHA.
fn commit(dir: &Path, message: &str) -> String {
    std::fs::write(dir.join("version.txt"), message).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn on_main() -> NewDeployment {
    NewDeployment {
        project: "pinned".into(),
        service: Some("web".into()),
        environment: None,
        reference: Some("main".into()),
        trigger: Trigger::Manual,
        source: None,
        source_repo: None,
    }
}

#[tokio::test]
async fn a_push_before_the_clone_does_not_change_what_is_deployed() {
    let h = harness().await;
    let repo = h.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("berth.toml"), TOML).unwrap();
    let first = commit(&repo, "first");
    h.store
        .create_project(NewProject {
            name: "pinned".into(),
            repo: repo.to_str().unwrap().into(),
            default_branch: "main".into(),
            retain_images: 3,
            webhook_secret: None,
            deploy_key: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    h.builder.real_git.store(true, Ordering::SeqCst);
    // Builds take a while: a deployment holds the slot meanwhile.
    *h.builder.build_time.lock().unwrap() = Duration::from_millis(1500);

    // d1 builds `first` and holds the slot.
    let d1 = h.deployer.create(on_main()).await.expect("create d1");
    assert_eq!(
        d1.commit.as_ref().map(|c| c.sha.as_str()),
        Some(first.as_str())
    );
    // main moves to `asked`; d2 is asked for now and waits for the slot.
    let asked = commit(&repo, "asked");
    let d2 = h.deployer.create(on_main()).await.expect("create d2");
    let pinned = d2
        .commit
        .clone()
        .expect("the commit is recorded with the request");
    assert_eq!(pinned.sha, asked);
    assert_eq!(pinned.branch.as_deref(), Some("main"));
    assert_eq!(
        h.store.get_deployment(&d2.id).await.unwrap().status,
        Status::Queued
    );
    // A push lands on main before d2 clones.
    let later = commit(&repo, "pushed while d2 waited");

    let d1 = h.finished(&d1.id).await;
    assert_eq!(d1.status, Status::Succeeded, "{:?}", d1.failure_message);
    let d2 = h.finished(&d2.id).await;
    assert_eq!(d2.status, Status::Succeeded, "{:?}", d2.failure_message);
    let c = d2.commit.expect("commit");
    assert_eq!(c.sha, asked, "deployed what was asked for, not {later}");
    assert_eq!(c.message, "asked", "the clone filled in the message");
    assert_eq!(c.branch.as_deref(), Some("main"));
    assert!(d2.is_active);

    // A newer request for the slot still replaces a queued older one, and
    // deploys what main names when it is asked.
    let d3 = h.deployer.create(on_main()).await.expect("create d3");
    assert_eq!(d3.commit.as_ref().unwrap().sha, later);
    let d4 = h.deployer.create(on_main()).await.expect("create d4");
    let newest = commit(&repo, "newest");
    let d5 = h.deployer.create(on_main()).await.expect("create d5");
    assert_eq!(d5.commit.as_ref().unwrap().sha, newest);
    let d4 = h.finished(&d4.id).await;
    assert_eq!(d4.status, Status::Cancelled);
    assert!(
        d4.failure_message
            .as_deref()
            .is_some_and(|m| m.contains(&format!("replaced by newer deployment {}", d5.id))),
        "{:?}",
        d4.failure_message
    );
    let d3 = h.finished(&d3.id).await;
    assert_eq!(d3.commit.unwrap().sha, later);
    let d5 = h.finished(&d5.id).await;
    assert_eq!(d5.status, Status::Succeeded, "{:?}", d5.failure_message);
    assert_eq!(d5.commit.unwrap().sha, newest);
    assert!(d5.is_active);
}

#[tokio::test]
async fn a_ref_that_cannot_be_resolved_at_request_time_is_left_to_the_clone() {
    let h = harness().await;
    let repo = h.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("berth.toml"), TOML).unwrap();
    let sha = commit(&repo, "only");
    h.store
        .create_project(NewProject {
            name: "pinned".into(),
            repo: repo.to_str().unwrap().into(),
            default_branch: "main".into(),
            retain_images: 3,
            webhook_secret: None,
            deploy_key: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    h.builder.real_git.store(true, Ordering::SeqCst);
    // An abbreviated SHA: ls-remote cannot tell; the clone resolves it.
    let short = NewDeployment {
        reference: Some(sha[..10].to_string()),
        ..on_main()
    };
    let d = h.deployer.create(short).await.expect("create");
    assert!(d.commit.is_none(), "{:?}", d.commit);
    let d = h.finished(&d.id).await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", d.failure_message);
    assert_eq!(d.commit.unwrap().sha, sha);
    // A branch that does not exist: the clone names it.
    let missing = NewDeployment {
        reference: Some("no-such-branch".into()),
        ..on_main()
    };
    let d = h.deployer.create(missing).await.expect("create");
    assert!(d.commit.is_none());
    let d = h.finished(&d.id).await;
    assert_eq!(d.status, Status::Failed);
    let msg = d.failure_message.unwrap_or_default();
    assert!(
        msg.starts_with("clone:") && msg.contains("no-such-branch"),
        "{msg}"
    );
}

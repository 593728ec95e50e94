//! Clone against local repositories made with real git commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_build::{clone, BuildError, CloneRequest};

use crate::recording_sink;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with two commits on `main` and one on `feature`.
fn make_repo(dir: &Path) -> (String, String, String) {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("a.txt"), "one").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first commit"]);
    let first = git(dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("a.txt"), "two").unwrap();
    git(
        dir,
        &["commit", "-q", "-am", "second commit\n\nwith a body"],
    );
    let second = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(dir.join("b.txt"), "feature").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "feature work"]);
    let feature = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "-q", "main"]);
    (first, second, feature)
}

fn req(repo: &Path, reference: &str, dest: &Path) -> CloneRequest {
    CloneRequest {
        repo: repo.display().to_string(),
        reference: reference.into(),
        dest: dest.to_path_buf(),
        ssh_key: None,
        timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn clone_branch_records_commit() {
    let src = tempfile::tempdir().unwrap();
    let (_, second, _) = make_repo(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("co");
    let (log, lines) = recording_sink();
    let co = clone(&req(src.path(), "main", &dest), log).await.unwrap();
    assert_eq!(co.commit.sha, second);
    assert_eq!(co.commit.branch.as_deref(), Some("main"));
    assert_eq!(co.commit.message, "second commit\n\nwith a body");
    assert_eq!(co.commit.author, "Ada Lovelace <ada@example.com>");
    assert_eq!(co.tree, git(src.path(), &["rev-parse", "main^{tree}"]));
    assert_eq!(std::fs::read_to_string(dest.join("a.txt")).unwrap(), "two");
    assert!(!dest.join("b.txt").exists());
    // A repository on this host lends its objects (git alternates): none
    // is packed or copied.
    let alternates = std::fs::read_to_string(dest.join(".git/objects/info/alternates")).unwrap();
    assert!(alternates.trim().ends_with("/objects"), "{alternates}");
    let packs = std::fs::read_dir(dest.join(".git/objects/pack"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(packs, 0, "objects were copied");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("checked out")));
}

#[tokio::test]
async fn submodules_are_checked_out_recursively_and_leave_no_remote_behind() {
    let root = tempfile::tempdir().unwrap();
    // lib (with a nested submodule "deep"), then app pinning lib by a
    // relative URL, as GitHub projects usually do.
    let deep = root.path().join("deep");
    std::fs::create_dir(&deep).unwrap();
    git(&deep, &["init", "-q", "-b", "main"]);
    std::fs::write(deep.join("deep.txt"), "deep").unwrap();
    git(&deep, &["add", "."]);
    git(&deep, &["commit", "-q", "-m", "deep"]);
    let lib = root.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.txt"), "v1").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-q", "-m", "lib v1"]);
    git(
        &lib,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../deep",
            "deep",
        ],
    );
    git(&lib, &["commit", "-q", "-m", "nest deep"]);
    let pinned = git(&lib, &["rev-parse", "HEAD"]);
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    git(&app, &["init", "-q", "-b", "main"]);
    std::fs::write(app.join("app.txt"), "app").unwrap();
    git(&app, &["add", "."]);
    git(
        &app,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../lib",
            "vendor/lib",
        ],
    );
    git(&app, &["commit", "-q", "-m", "app with lib"]);
    // lib moves on; the app still pins the older commit.
    std::fs::write(lib.join("lib.txt"), "v2").unwrap();
    git(&lib, &["commit", "-q", "-am", "lib v2"]);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("co");
    let (log, lines) = recording_sink();
    clone(&req(&app, "main", &dest), log).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("vendor/lib/lib.txt")).unwrap(),
        "v1"
    );
    assert_eq!(
        git(&dest.join("vendor/lib"), &["rev-parse", "HEAD"]),
        pinned
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("vendor/lib/deep/deep.txt")).unwrap(),
        "deep"
    );
    let config = std::fs::read_to_string(dest.join(".git/config")).unwrap();
    assert!(!config.contains("[remote"), "{config}");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("submodule")));
}

#[tokio::test]
async fn a_missing_submodule_fails_the_clone_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.txt"), "v1").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-q", "-m", "lib"]);
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    git(&app, &["init", "-q", "-b", "main"]);
    git(
        &app,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../lib",
            "lib",
        ],
    );
    git(&app, &["commit", "-q", "-m", "app"]);
    std::fs::remove_dir_all(&lib).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (log, _) = recording_sink();
    let err = clone(&req(&app, "main", &out.path().join("co")), log)
        .await
        .unwrap_err();
    match err {
        BuildError::Git { step, reason } => {
            assert_eq!(step, "submodule");
            assert!(reason.contains("lib"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_directory_inside_another_repository_is_not_that_repository() {
    let src = tempfile::tempdir().unwrap();
    make_repo(src.path());
    let inner = src.path().join("not-a-repo");
    std::fs::create_dir(&inner).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (log, _) = recording_sink();
    let err = clone(&req(&inner, "main", &out.path().join("co")), log)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_bare_repository_on_this_host_is_borrowed_too() {
    let src = tempfile::tempdir().unwrap();
    let (_, second, feature) = make_repo(src.path());
    let bare = tempfile::tempdir().unwrap();
    let bare_path = bare.path().join("b.git");
    git(
        src.path(),
        &["clone", "-q", "--bare", ".", bare_path.to_str().unwrap()],
    );
    for (reference, sha, branch) in [
        ("main", &second, Some("main")),
        ("feature", &feature, Some("feature")),
        (second.as_str(), &second, None),
    ] {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("co");
        let (log, _) = recording_sink();
        let co = clone(&req(&bare_path, reference, &dest), log)
            .await
            .unwrap();
        assert_eq!(&co.commit.sha, sha);
        assert_eq!(co.commit.branch.as_deref(), branch);
        assert!(dest.join(".git/objects/info/alternates").exists());
    }
}

#[tokio::test]
async fn clone_other_branch_and_file_url() {
    let src = tempfile::tempdir().unwrap();
    let (_, _, feature) = make_repo(src.path());
    let out = tempfile::tempdir().unwrap();
    let mut r = req(src.path(), "feature", &out.path().join("co"));
    r.repo = format!("file://{}", src.path().display());
    let co = clone(&r, berth_build::null_sink()).await.unwrap();
    assert_eq!(co.commit.sha, feature);
    assert_eq!(co.commit.branch.as_deref(), Some("feature"));
    assert!(co.dir.join("b.txt").exists());
}

#[tokio::test]
async fn clone_full_and_short_sha() {
    let src = tempfile::tempdir().unwrap();
    let (first, _, _) = make_repo(src.path());
    let out = tempfile::tempdir().unwrap();
    let co = clone(
        &req(src.path(), &first, &out.path().join("full")),
        berth_build::null_sink(),
    )
    .await
    .unwrap();
    assert_eq!(co.commit.sha, first);
    assert_eq!(co.commit.branch, None);
    assert_eq!(co.commit.message, "first commit");
    assert_eq!(
        std::fs::read_to_string(co.dir.join("a.txt")).unwrap(),
        "one"
    );

    let co = clone(
        &req(src.path(), &first[..8], &out.path().join("short")),
        berth_build::null_sink(),
    )
    .await
    .unwrap();
    assert_eq!(co.commit.sha, first);
}

#[tokio::test]
async fn unknown_ref_fails_naming_it() {
    let src = tempfile::tempdir().unwrap();
    make_repo(src.path());
    let out = tempfile::tempdir().unwrap();
    for reference in ["no-such-branch", "deadbeef"] {
        let err = clone(
            &req(src.path(), reference, &out.path().join(reference)),
            berth_build::null_sink(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BuildError::RefNotFound { .. }), "{err}");
        assert!(err.to_string().contains(reference), "{err}");
    }
}

#[tokio::test]
async fn unreachable_repo_masks_credentials() {
    let out = tempfile::tempdir().unwrap();
    let (log, lines) = recording_sink();
    let r = CloneRequest {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        repo: "https://user:s3cr3t-token@127.0.0.1:9/owner/repo.git".into(),
        reference: "main".into(),
        dest: out.path().join("co"),
        ssh_key: None,
        timeout: Duration::from_secs(20),
    };
    let err = clone(&r, log).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("https://***@127.0.0.1:9/owner/repo.git"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t"), "{msg}");
    for line in lines.lock().unwrap().iter() {
        assert!(!line.contains("s3cr3t"), "{line}");
    }
    assert!(
        !out.path().join("co/.git/config").exists()
            || !std::fs::read_to_string(out.path().join("co/.git/config"))
                .unwrap()
                .contains("s3cr3t")
    );
}

#[tokio::test]
async fn non_empty_destination_is_refused() {
    let src = tempfile::tempdir().unwrap();
    make_repo(src.path());
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("x"), "x").unwrap();
    let err = clone(
        &req(src.path(), "main", out.path()),
        berth_build::null_sink(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

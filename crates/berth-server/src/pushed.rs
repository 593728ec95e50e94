//! Repositories pushed with `git push` to berth live in the store: one git
//! bundle of every ref per project (`Store::pushed_repo`), so a push
//! received by any server of a cluster is fetched, cloned and deployed by
//! every other (the leader builds it). Each server keeps a working bare
//! repository in `<data-dir>/git/<project>.git` and brings it up to the
//! stored version before serving a fetch or a push and before a pipeline
//! clones from it ([`sync`]); after a push it saves a new bundle over the
//! version it started from ([`save`], compare-and-set: a push to another
//! server saved in between wins, and this one is refused, see
//! [`PushedError::Raced`]).
//!
//! A deployment asked by a push records `berth-git:<project>` as its
//! `source_repo` ([`source_of`]), never a path of the receiving server.

use berth_store::{Store, StoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The largest bundle kept in the store (a pushed repository, all refs).
pub const MAX_BUNDLE: usize = 100 << 20;

/// The `source_repo` of a deployment asked by a push: `berth-git:<project>`.
const SOURCE_PREFIX: &str = "berth-git:";

/// The stored version the working copy holds, in its git dir.
const STAMP: &str = "berth-stored-version";

#[derive(Debug, thiserror::Error)]
pub enum PushedError {
    #[error("git {0}")]
    Git(String),
    #[error("pushed repository: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the pushed repository is {size} MiB, over berth's limit of {} MiB; push to a git host and deploy from it instead", MAX_BUNDLE >> 20)]
    TooLarge { size: usize },
    #[error("another push to this project reached berth first (through another server); fetch and push again")]
    Raced,
}

/// `source_repo` of a deployment of `project`'s pushed repository.
pub fn source_of(project: &str) -> String {
    format!("{SOURCE_PREFIX}{project}")
}

/// The project whose pushed repository `source_repo` names, if it does.
pub fn project_of_source(source_repo: &str) -> Option<&str> {
    source_repo.strip_prefix(SOURCE_PREFIX)
}

/// The working copy of `project`'s pushed repository on this server.
pub fn dir(data_dir: &Path, project: &str) -> PathBuf {
    data_dir.join("git").join(format!("{project}.git"))
}

/// One lock per working copy: a sync, or a push and its save, at a time.
pub fn lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(dir.to_path_buf())
        .or_default()
        .clone()
}

async fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, PushedError> {
    let out = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        return Err(PushedError::Git(format!(
            "{}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn local_version(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(STAMP))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Brings this server's working copy of `project`'s pushed repository to
/// the stored version (created empty on first use); its path and that
/// version. Call with [`lock`] held.
pub async fn sync_locked(
    store: &dyn Store,
    data_dir: &Path,
    project: &str,
) -> Result<(PathBuf, u64), PushedError> {
    let dir = dir(data_dir, project);
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(&dir)?;
        let out = tokio::process::Command::new("git")
            .args(["init", "--bare", "-q"])
            .arg(&dir)
            .output()
            .await?;
        if !out.status.success() {
            return Err(PushedError::Git(format!(
                "init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let stored = store.pushed_repo_version(project).await?;
    if stored == 0 || stored == local_version(&dir) {
        return Ok((dir, stored));
    }
    let Some((version, bundle)) = store.pushed_repo(project).await? else {
        return Ok((dir, 0));
    };
    if bundle.is_empty() {
        // Every branch was deleted.
        let refs = git(&dir, &["for-each-ref", "--format=delete %(refname)"]).await?;
        update_refs(&dir, &refs).await?;
    } else {
        let file = dir.join(format!("berth-sync-{}.bundle", crate::ids::new_id()));
        std::fs::write(&file, &bundle)?;
        let path = file.display().to_string();
        let res = git(
            &dir,
            &[
                "fetch",
                "-q",
                "--prune",
                "--no-tags",
                &path,
                "+refs/*:refs/*",
            ],
        )
        .await;
        let _ = std::fs::remove_file(&file);
        res?;
    }
    std::fs::write(dir.join(STAMP), version.to_string())?;
    Ok((dir, version))
}

async fn update_refs(dir: &Path, stdin: &[u8]) -> Result<(), PushedError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(stdin).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(PushedError::Git(format!(
            "update-ref: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// [`sync_locked`] under the working copy's lock.
pub async fn sync(
    store: &dyn Store,
    data_dir: &Path,
    project: &str,
) -> Result<(PathBuf, u64), PushedError> {
    let l = lock(&dir(data_dir, project));
    let _held = l.lock().await;
    sync_locked(store, data_dir, project).await
}

/// After a push into the working copy that was at stored version
/// `started_from`: saves its refs as the new bundle; the new version. When
/// another server saved a push in between, nothing is saved
/// ([`PushedError::Raced`]) and the working copy goes back to the stored
/// refs. Call with [`lock`] held.
pub async fn save_locked(
    store: &dyn Store,
    data_dir: &Path,
    project: &str,
    started_from: u64,
) -> Result<u64, PushedError> {
    let dir = dir(data_dir, project);
    let refs = git(&dir, &["for-each-ref", "--format=%(refname)"]).await?;
    let bundle = if refs.iter().all(|b| b.is_ascii_whitespace()) {
        Vec::new()
    } else {
        let file = dir.join(format!("berth-save-{}.bundle", crate::ids::new_id()));
        let path = file.display().to_string();
        let res = git(&dir, &["bundle", "create", "-q", &path, "--all"]).await;
        let bytes = res.and_then(|_| Ok(std::fs::read(&file)?));
        let _ = std::fs::remove_file(&file);
        bytes?
    };
    if bundle.len() > MAX_BUNDLE {
        let _ = std::fs::remove_file(dir.join(STAMP));
        return Err(PushedError::TooLarge {
            size: bundle.len() >> 20,
        });
    }
    match store
        .put_pushed_repo(project, started_from, &bundle)
        .await?
    {
        Some(v) => {
            std::fs::write(dir.join(STAMP), v.to_string())?;
            Ok(v)
        }
        None => {
            // Forget what this push wrote here: the next sync restores the
            // stored refs.
            let _ = std::fs::remove_file(dir.join(STAMP));
            sync_locked(store, data_dir, project).await?;
            Err(PushedError::Raced)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::{Cipher, NewProject, SqliteStore};

    fn sh(dir: &Path, cmd: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {:?}", out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Two servers (two data dirs) on one store: a push into A's working
    /// copy, saved, is what B's copy holds after a sync; a push into B
    /// that started from a version A moved on is refused and B's copy goes
    /// back to the stored refs.
    #[tokio::test]
    async fn a_push_saved_on_one_server_is_what_another_syncs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path(), Cipher::from_key([1; 32])).unwrap();
        store
            .create_project(NewProject {
                name: "shop".into(),
                repo: "https://example.invalid/shop.git".into(),
                default_branch: "main".into(),
                retain_images: 5,
                webhook_secret: None,
                deploy_key: None,
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        sh(
            &work,
            "git init -q -b main . && echo one > f && git add f && git commit -qm one",
        );

        // Push into A's working copy, as receive-pack would.
        let (dir_a, v0) = sync(&store, &a, "shop").await.unwrap();
        assert_eq!(v0, 0);
        sh(&work, &format!("git push -q {} main", dir_a.display()));
        let one = sh(&work, "git rev-parse HEAD");
        let v1 = save_locked(&store, &a, "shop", v0).await.unwrap();
        assert_eq!(v1, 1);

        // B has never seen it: a sync brings it.
        let (dir_b, got) = sync(&store, &b, "shop").await.unwrap();
        assert_eq!(got, 1);
        assert_eq!(sh(&dir_b, "git rev-parse refs/heads/main"), one);

        // A moves on to version 2 ...
        sh(&work, "echo two > f && git commit -qam two");
        let two = sh(&work, "git rev-parse HEAD");
        sh(&work, &format!("git push -q {} main", dir_a.display()));
        assert_eq!(save_locked(&store, &a, "shop", 1).await.unwrap(), 2);
        // ... while B took a push that started from version 1: refused,
        // and B's copy holds the stored refs again.
        sh(
            &work,
            "git checkout -q -b other HEAD~1 && echo three > f && git commit -qam three",
        );
        sh(
            &work,
            &format!("git push -q -f {} other:main", dir_b.display()),
        );
        assert!(matches!(
            save_locked(&store, &b, "shop", 1).await,
            Err(PushedError::Raced)
        ));
        assert_eq!(sh(&dir_b, "git rev-parse refs/heads/main"), two);
        assert_eq!(store.pushed_repo_version("shop").await.unwrap(), 2);

        // Every branch deleted: an empty bundle, and no refs after a sync.
        sh(&dir_a, "git update-ref -d refs/heads/main");
        assert_eq!(save_locked(&store, &a, "shop", 2).await.unwrap(), 3);
        sync(&store, &b, "shop").await.unwrap();
        assert_eq!(sh(&dir_b, "git for-each-ref"), "");
        assert_eq!(source_of("shop"), "berth-git:shop");
        assert_eq!(project_of_source("berth-git:shop"), Some("shop"));
        assert_eq!(project_of_source("/srv/shop.git"), None);
    }
}

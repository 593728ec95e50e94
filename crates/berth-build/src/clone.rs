//! Clone: fetch exactly one commit of a repository with the `git` CLI.
//!
//! `git init` then `git fetch --depth 1 <url> <ref>` (the URL is never stored
//! in `.git/config`); when the remote refuses the ref as it is (an abbreviated
//! SHA, or a server that does not serve unadvertised commits) a full fetch of
//! branches and tags follows and the ref is resolved locally. Git never
//! prompts (`GIT_TERMINAL_PROMPT=0`) and the whole clone is bounded by
//! `CloneRequest::timeout`. Credentials in the URL are replaced by `***` in
//! every log line and error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::error::one_line;
use crate::{BuildError, LogSink};

/// What to clone, where.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    /// A local path, `file://...`, `https://[token@]host/...` or
    /// `git@host:owner/repo` (SSH).
    pub repo: String,
    /// A branch, a tag, or a full or abbreviated commit SHA.
    pub reference: String,
    /// Where the checkout goes; must not exist or be empty.
    pub dest: PathBuf,
    /// Deploy key for SSH repositories.
    pub ssh_key: Option<PathBuf>,
    /// Upper bound for the whole clone.
    pub timeout: Duration,
}

/// The commit a checkout is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full SHA.
    pub sha: String,
    /// The branch, when the reference was one.
    pub branch: Option<String>,
    /// Full commit message, without trailing newlines.
    pub message: String,
    /// `Name <email>`.
    pub author: String,
}

/// A working tree at one commit.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit: CommitInfo,
    /// The git tree hash of the commit: equal trees have equal content.
    pub tree: String,
}

/// Clones `req.repo` at `req.reference` into `req.dest`.
pub async fn clone(req: &CloneRequest, log: LogSink) -> Result<Checkout, BuildError> {
    let masked = mask_url(&req.repo);
    match tokio::time::timeout(req.timeout, clone_inner(req, &log, &masked)).await {
        Ok(r) => r,
        Err(_) => Err(BuildError::CloneTimeout {
            repo: masked,
            secs: req.timeout.as_secs().max(1),
        }),
    }
}

/// Replaces the user-info part of a URL (`https://token@host/...`) by `***`.
/// SSH `git@host:path` addresses carry no secret and are kept.
/// Resolve `reference` to a commit without cloning: a full 40-hex SHA is
/// itself; a branch or tag is looked up with `git ls-remote`. Returns
/// `(sha, branch)`, or `None` when it cannot be resolved this way (a short
/// SHA, an unknown ref, an unreachable remote) — the caller then clones,
/// which reports the error properly.
pub async fn resolve_ref(
    repo: &str,
    reference: &str,
    ssh_key: Option<&Path>,
    timeout: Duration,
) -> Option<(String, Option<String>)> {
    let r = reference.trim();
    if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some((r.to_ascii_lowercase(), None));
    }
    if r.is_empty() || r.starts_with('-') || r.contains("..") {
        return None;
    }
    let tmp = std::env::temp_dir();
    let sink = crate::null_sink();
    let git = Git {
        dir: &tmp,
        ssh_key,
        secret: secret_of(repo),
        masked_repo: "",
        log: &sink,
    };
    let url = fetch_url(repo);
    let out = tokio::time::timeout(timeout, git.run(&["ls-remote", &url, r], false))
        .await
        .ok()?
        .ok()?;
    if !out.ok {
        return None;
    }
    let mut branch_sha = None;
    let mut tag_sha = None;
    let mut peeled = None;
    for line in out.stdout.lines() {
        let mut parts = line.split('\t');
        let (Some(sha), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if name == format!("refs/heads/{r}") {
            branch_sha = Some(sha.to_string());
        } else if name == format!("refs/tags/{r}^{{}}") {
            peeled = Some(sha.to_string());
        } else if name == format!("refs/tags/{r}") {
            tag_sha = Some(sha.to_string());
        }
    }
    if let Some(sha) = branch_sha {
        return Some((sha, Some(r.to_string())));
    }
    peeled.or(tag_sha).map(|sha| (sha, None))
}

/// Credentials in a URL masked: `https://***@host/...` (one rule for all
/// of berth, in berth-core).
pub use berth_core::model::mask_url;

/// The secret part of a URL, to be scrubbed from git's output.
fn secret_of(url: &str) -> Option<String> {
    let scheme_end = url.find("://")?;
    let rest = &url[scheme_end + 3..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    Some(rest[..at].to_string()).filter(|s| !s.is_empty())
}

fn is_sha_like(r: &str) -> bool {
    (4..=40).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The URL handed to git: local paths become absolute `file://` URLs (so a
/// shallow fetch is honoured).
fn fetch_url(repo: &str) -> String {
    let is_scp = !repo.contains("://") && repo.contains(':') && !repo.starts_with('/');
    if repo.contains("://") || is_scp {
        return repo.to_string();
    }
    let p = Path::new(repo);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    format!("file://{}", abs.display())
}

struct Git<'a> {
    dir: &'a Path,
    ssh_key: Option<&'a Path>,
    secret: Option<String>,
    masked_repo: &'a str,
    log: &'a LogSink,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Git<'_> {
    fn scrub(&self, s: &str) -> String {
        match &self.secret {
            Some(secret) => s.replace(secret.as_str(), "***"),
            None => s.to_string(),
        }
    }

    /// Runs git; stderr lines go to the log live, stdout is captured (and
    /// logged too when `log_stdout`).
    async fn run(&self, args: &[&str], log_stdout: bool) -> Result<Output, BuildError> {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(self.dir)
            .args(["-c", "credential.helper=", "-c", "core.askPass="])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut ssh = String::from(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=15",
        );
        if let Some(key) = self.ssh_key {
            let quote = |p: &Path| p.display().to_string().replace('\'', r"'\''");
            ssh.push_str(&format!(" -o IdentitiesOnly=yes -i '{}'", quote(key)));
            // Host keys are trusted on first use and remembered next to the
            // key (berth's own file), never in the user's ~/.ssh.
            if let Some(dir) = key.parent() {
                ssh.push_str(&format!(
                    " -o UserKnownHostsFile='{}'",
                    quote(&dir.join("known_hosts"))
                ));
            }
        }
        cmd.env("GIT_SSH_COMMAND", ssh);
        let mut child = cmd.spawn().map_err(|e| BuildError::Git {
            step: args.first().copied().unwrap_or("").to_string(),
            reason: format!("cannot run git: {e}"),
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_out = async {
            let mut buf = String::new();
            if let Some(out) = stdout {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if log_stdout {
                        (self.log)(&self.scrub(&line));
                    }
                    buf.push_str(&line);
                    buf.push('\n');
                }
            }
            buf
        };
        let read_err = async {
            let mut buf = String::new();
            if let Some(err) = stderr {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = self.scrub(&line);
                    (self.log)(&line);
                    buf.push_str(&line);
                    buf.push('\n');
                }
            }
            buf
        };
        let (stdout, stderr) = tokio::join!(read_out, read_err);
        let status = child.wait().await.map_err(|e| BuildError::Git {
            step: args.first().copied().unwrap_or("").to_string(),
            reason: e.to_string(),
        })?;
        Ok(Output {
            ok: status.success(),
            stdout,
            stderr,
        })
    }

    async fn must(&self, args: &[&str]) -> Result<String, BuildError> {
        let out = self.run(args, false).await?;
        if !out.ok {
            return Err(BuildError::Git {
                step: args.first().copied().unwrap_or("").to_string(),
                reason: last_line(&out.stderr),
            });
        }
        Ok(out.stdout)
    }

    fn unreachable(&self, stderr: &str) -> BuildError {
        BuildError::Unreachable {
            repo: self.masked_repo.to_string(),
            reason: last_line(stderr),
        }
    }
}

fn last_line(s: &str) -> String {
    let line = s
        .lines()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or_else(|| s.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("unknown error");
    one_line(
        line.trim_start_matches("fatal: ")
            .trim_start_matches("error: "),
    )
}

fn ref_missing(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("couldn't find remote ref")
        || s.contains("not our ref")
        || s.contains("no such remote ref")
        || s.contains("unadvertised object")
        || s.contains("invalid refspec")
}

async fn clone_inner(
    req: &CloneRequest,
    log: &LogSink,
    masked: &str,
) -> Result<Checkout, BuildError> {
    let reference = req.reference.trim();
    if reference.is_empty() || reference.starts_with('-') || reference.contains("..") {
        return Err(BuildError::RefNotFound {
            reference: req.reference.clone(),
            repo: masked.to_string(),
        });
    }
    if req.dest.exists() {
        let non_empty = std::fs::read_dir(&req.dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if non_empty {
            return Err(BuildError::Io(format!(
                "clone destination {} is not empty",
                req.dest.display()
            )));
        }
    }
    std::fs::create_dir_all(&req.dest)
        .map_err(|e| BuildError::Io(format!("cannot create {}: {e}", req.dest.display())))?;
    let git = Git {
        dir: &req.dest,
        ssh_key: req.ssh_key.as_deref(),
        secret: secret_of(&req.repo),
        masked_repo: masked,
        log,
    };
    let url = fetch_url(&req.repo);
    log(&format!("cloning {masked} at {reference}"));
    git.must(&["init", "-q"]).await?;

    let local = match local_git_dir(&git, &url).await {
        Some(objects) => Some(borrow_local(&git, &objects, reference, &req.dest, masked).await?),
        None => None,
    };
    let (sha, branch) = if let Some(found) = local {
        found
    } else {
        fetch(&git, &url, reference, masked, &req.dest).await?
    };
    checkout_commit(&git, req, &url, &sha, branch).await
}

/// The git directory of a repository on this host (`file://` URL), when
/// it is one: such a checkout borrows its objects (git alternates) instead
/// of packing and copying them, which is most of a local clone's time.
async fn local_git_dir(git: &Git<'_>, url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("file://")?;
    let out = git
        .run(
            &[
                "-C",
                path,
                "rev-parse",
                "--path-format=absolute",
                "--git-common-dir",
            ],
            false,
        )
        .await
        .ok()?;
    let dir = std::path::PathBuf::from(out.stdout.trim());
    // The repository must be the path itself (bare) or its `.git`, not one
    // that merely encloses it: a fetch would refuse such a path too.
    let path = std::fs::canonicalize(path).ok()?;
    let own = dir == path || dir == path.join(".git");
    (out.ok && own && dir.join("objects").is_dir()).then_some(dir)
}

/// Resolves `reference` in the local repository at `git_dir` and points
/// the new repository's object store at it. Nothing of the borrowed
/// repository ends up in the build context (`.git` never does).
async fn borrow_local(
    git: &Git<'_>,
    git_dir: &Path,
    reference: &str,
    dest: &Path,
    masked: &str,
) -> Result<(String, Option<String>), BuildError> {
    let gd = format!("--git-dir={}", git_dir.display());
    let spec = format!("{reference}^{{commit}}");
    let out = git
        .run(&[&gd, "rev-parse", "--verify", "--quiet", &spec], false)
        .await?;
    if !out.ok || out.stdout.trim().is_empty() {
        return Err(BuildError::RefNotFound {
            reference: reference.to_string(),
            repo: masked.to_string(),
        });
    }
    let sha = out.stdout.trim().to_string();
    let full = git
        .run(
            &[&gd, "rev-parse", "--symbolic-full-name", reference],
            false,
        )
        .await?;
    let branch = full
        .stdout
        .trim()
        .strip_prefix("refs/heads/")
        .map(String::from);
    let alternates = dest.join(".git/objects/info/alternates");
    std::fs::write(
        &alternates,
        format!("{}\n", git_dir.join("objects").display()),
    )
    .map_err(|e| BuildError::Io(format!("cannot write {}: {e}", alternates.display())))?;
    Ok((sha, branch))
}

/// A shallow fetch of exactly `reference` (a commit the remote will not
/// give shallowly is fetched with all branches and tags).
async fn fetch(
    git: &Git<'_>,
    url: &str,
    reference: &str,
    masked: &str,
    dest: &Path,
) -> Result<(String, Option<String>), BuildError> {
    let log = git.log;
    let shallow = git
        .run(
            &["fetch", "--depth", "1", "--no-tags", url, reference],
            false,
        )
        .await?;
    let (sha, branch) = if shallow.ok {
        let sha = git
            .must(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"])
            .await?
            .trim()
            .to_string();
        let branch = fetched_branch(dest);
        (sha, branch)
    } else if ref_missing(&shallow.stderr) && is_sha_like(reference) {
        log("the remote refused the commit for a shallow fetch; fetching all branches and tags");
        let full = git
            .run(
                &[
                    "fetch",
                    "--no-tags",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                false,
            )
            .await?;
        if !full.ok {
            return Err(git.unreachable(&full.stderr));
        }
        let spec = format!("{reference}^{{commit}}");
        let out = git
            .run(&["rev-parse", "--verify", "--quiet", &spec], false)
            .await?;
        if !out.ok {
            return Err(BuildError::RefNotFound {
                reference: reference.to_string(),
                repo: masked.to_string(),
            });
        }
        (out.stdout.trim().to_string(), None)
    } else if ref_missing(&shallow.stderr) {
        return Err(BuildError::RefNotFound {
            reference: reference.to_string(),
            repo: masked.to_string(),
        });
    } else {
        return Err(git.unreachable(&shallow.stderr));
    };
    // FETCH_HEAD names the URL it came from; do not leave it behind.
    let _ = std::fs::remove_file(dest.join(".git").join("FETCH_HEAD"));
    Ok((sha, branch))
}

/// Checks `sha` out (with its submodules) and reads its commit.
async fn checkout_commit(
    git: &Git<'_>,
    req: &CloneRequest,
    url: &str,
    sha: &str,
    branch: Option<String>,
) -> Result<Checkout, BuildError> {
    let log = git.log;
    git.must(&[
        "-c",
        "advice.detachedHead=false",
        "checkout",
        "-q",
        "--detach",
        sha,
    ])
    .await?;
    if req.dest.join(".gitmodules").is_file() {
        submodules(git, url).await?;
    }
    let info = git
        .must(&["log", "-1", "--format=%H%x00%T%x00%an <%ae>%x00%B", sha])
        .await?;
    let mut parts = info.splitn(4, '\0');
    let (Some(full), Some(tree), Some(author), Some(message)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BuildError::Git {
            step: "log".into(),
            reason: "unexpected output".into(),
        });
    };
    let commit = CommitInfo {
        sha: full.trim().to_string(),
        branch,
        message: message.trim_end().to_string(),
        author: author.to_string(),
    };
    log(&format!(
        "checked out {} ({})",
        &commit.sha[..12.min(commit.sha.len())],
        commit.message.lines().next().unwrap_or("")
    ));
    Ok(Checkout {
        dir: req.dest.clone(),
        commit,
        tree: tree.trim().to_string(),
    })
}

/// Checks out the submodules the commit pins, recursively. Relative
/// submodule URLs resolve against the repository's; the repository's
/// credentials go to submodules on the same host (GitHub's usual layout);
/// local (file) submodules are allowed only when the repository itself is
/// local, so a hostile `.gitmodules` cannot read other repositories on the
/// server. Nothing of this stays in `.git/config` (the build context).
async fn submodules(git: &Git<'_>, url: &str) -> Result<(), BuildError> {
    git.log.as_ref()("checking out submodules");
    git.must(&["config", "remote.origin.url", url]).await?;
    let mut config: Vec<String> = Vec::new();
    if url.starts_with("file://") {
        config.push("protocol.file.allow=always".into());
    }
    if let Some((with, without)) = credentialed_base(url) {
        config.push(format!("url.{with}.insteadOf={without}"));
    }
    let mut base: Vec<&str> = Vec::new();
    for c in &config {
        base.extend(["-c", c.as_str()]);
    }
    let update = [
        "submodule",
        "update",
        "--init",
        "--recursive",
        "--jobs",
        "4",
    ];
    let mut shallow = base.clone();
    shallow.extend(update);
    shallow.extend(["--depth", "1"]);
    let mut out = git.run(&shallow, true).await?;
    if !out.ok {
        // Not every server gives a pinned commit to a shallow fetch.
        git.log.as_ref()("a shallow submodule fetch was refused; fetching full history");
        let mut full = base.clone();
        full.extend(update);
        out = git.run(&full, true).await?;
    }
    let _ = git
        .run(&["config", "--unset", "remote.origin.url"], false)
        .await;
    if !out.ok {
        return Err(BuildError::Git {
            step: "submodule".into(),
            reason: git.scrub(&last_line(&out.stderr)),
        });
    }
    Ok(())
}

/// `https://user:token@host/` and `https://host/` for a URL with
/// credentials, so that same-host submodule URLs get them too.
fn credentialed_base(url: &str) -> Option<(String, String)> {
    let scheme_end = url.find("://")?;
    let rest = &url[scheme_end + 3..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    let scheme = &url[..scheme_end];
    let host = &rest[at + 1..host_end];
    Some((
        format!("{scheme}://{}/", &rest[..host_end]),
        format!("{scheme}://{host}/"),
    ))
}

/// The branch name git recorded in FETCH_HEAD (`<sha>\t\tbranch 'main' of <url>`).
fn fetched_branch(dest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dest.join(".git").join("FETCH_HEAD")).ok()?;
    let line = text.lines().next()?;
    let rest = line.split_once("branch '")?.1;
    let name = rest.split_once("' of ")?.0;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_submodules_get_the_repository_credentials() {
        assert_eq!(
            credentialed_base("https://x:tok@github.com/o/app.git"),
            Some((
                "https://x:tok@github.com/".to_string(),
                "https://github.com/".to_string()
            ))
        );
        assert_eq!(credentialed_base("https://github.com/o/app.git"), None);
        assert_eq!(credentialed_base("file:///srv/app"), None);
    }

    #[test]
    fn masks_credentials() {
        assert_eq!(
            mask_url("https://x-access-token:ghp_abc@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(mask_url("https://tok@host/o/r"), "https://***@host/o/r");
        assert_eq!(mask_url("https://host/o/r"), "https://host/o/r");
        assert_eq!(mask_url("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(mask_url("/srv/repo"), "/srv/repo");
        assert_eq!(
            secret_of("https://u:p@host/x").as_deref(),
            Some("u:p"),
            "secret"
        );
        assert_eq!(secret_of("https://host/x@y"), None);
    }

    #[test]
    fn urls_for_git() {
        assert_eq!(fetch_url("/srv/repo"), "file:///srv/repo");
        assert_eq!(fetch_url("file:///srv/repo"), "file:///srv/repo");
        assert_eq!(fetch_url("git@host:o/r.git"), "git@host:o/r.git");
        assert_eq!(fetch_url("https://host/o/r"), "https://host/o/r");
    }

    #[test]
    fn sha_like() {
        assert!(is_sha_like("abc1234"));
        assert!(is_sha_like(&"a".repeat(40)));
        assert!(!is_sha_like("main"));
        assert!(!is_sha_like(&"a".repeat(41)));
    }
}

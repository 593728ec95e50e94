//! Cloning over SSH with a project's deploy key, against a real sshd on
//! 127.0.0.1 (Debian's openssh-server; `.ci/run` installs it).

use super::{host, unique, wait_body, Cleanup};
use crate::harness::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An sshd on a free loopback port that accepts one public key.
struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-e2e", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(ok.success());
}

impl Sshd {
    fn start(authorized: &Path) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "openssh-server is installed (.ci/run)");
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hostkey = dir.path().join("hostkey");
        keygen(&hostkey);
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {}\n",
                hostkey.display(),
                authorized.display(),
                dir.path().join("sshd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.path().join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            child,
            port,
            _dir: dir,
        }
    }
}

#[test]
fn a_deploy_key_clones_over_ssh_and_is_never_stored_or_shown_in_clear() {
    let project = unique("e2essh");
    let _c = Cleanup(project.clone());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("deploy");
    keygen(&key);
    let authorized = keys.path().join("authorized_keys");
    std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
    let sshd = Sshd::start(&authorized);
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let repo = AppRepo::new("over-ssh");
    let url = format!("ssh://{user}@127.0.0.1:{}{}", sshd.port, repo.path());

    let s = Server::start();
    // A public key is not a deploy key: refused, nothing created.
    let bad = s.cli(&[
        "projects",
        "create",
        &project,
        "--repo",
        &url,
        "--deploy-key-file",
        key.with_extension("pub").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a private key"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Without a key the clone fails, naming the masked URL.
    s.ok(&["projects", "create", &project, "--repo", &url]);
    let out = s.cli(&["deploy", "--project", &project, "--wait", "--json"]);
    assert!(!out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["failureMessage"].as_str().unwrap().starts_with("clone:"),
        "{d}"
    );

    let p = s.json(&[
        "projects",
        "set",
        &project,
        "--deploy-key-file",
        key.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(p["hasDeployKey"], true);
    let d = s.json(&["deploy", "--project", &project, "--wait", "--json"]);
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["commit"]["sha"], repo.head());
    wait_body(&s, &host(&project), "over-ssh");

    // The key material is nowhere in clear: not in the data dir (the
    // temporary key file is gone after the clone), the API or the log.
    let secret = std::fs::read_to_string(&key).unwrap();
    let material = secret
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .unwrap()
        .to_string();
    let mut stack = vec![s.data_dir()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes
                        .windows(material.len())
                        .any(|w| w == material.as_bytes()),
                    "{} holds the deploy key in clear",
                    path.display()
                );
            }
        }
    }
    assert!(!s.log().contains(&material));
    let shown = s.ok(&["projects", "show", &project]);
    assert!(shown.contains("deploy key"), "{shown}");
    assert!(!shown.contains(&material));
    // Host keys are remembered in berth's own file, not in ~/.ssh.
    assert!(s.data_dir().join("keys/known_hosts").exists());
}

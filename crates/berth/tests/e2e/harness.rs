//! A real `berth server` process on 127.0.0.1 ports, its CLI, git repos of
//! test apps, and a bounded keep-alive load generator.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";
pub const BASE: &str = "berth.test";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub http_port: u16,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Environment of the server process (e.g. `DOCKER_HOST`).
    pub env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// A server on two free ports. A port found free can be taken by
    /// another test (or a container's published port) before the server
    /// binds it: then the server exits saying so, and it starts again on
    /// other ports.
    pub fn start_with(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            dir: tempfile::tempdir().unwrap(),
            api_port: free_port(),
            http_port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for _ in 0..5 {
            if s.try_spawn() {
                return s;
            }
            s.api_port = free_port();
            s.http_port = free_port();
        }
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn spawn(&mut self) {
        assert!(self.try_spawn(), "server did not start:\n{}", self.log());
    }

    /// Starts a second server with `--takeover` on the same data dir and
    /// flags; it becomes this server's process. Returns the old one.
    pub fn takeover(&mut self) -> Child {
        let old = self.child.take().expect("a running server");
        self.child = Some(self.command().arg("--takeover").spawn().unwrap());
        old
    }

    /// The new process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// `berth server` with this server's flags, logging to server.log.
    fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args([
            "server",
            "--data-dir",
            self.data_dir().to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{}", self.api_port),
            "--http-listen",
            &format!("127.0.0.1:{}", self.http_port),
            "--base-domain",
            BASE,
            "--token",
            TOKEN,
            "--drain-timeout",
            "10s",
        ])
        .args(&self.extra)
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        cmd
    }

    /// Starts the server; `false` when it exited because a port was taken.
    fn try_spawn(&mut self) -> bool {
        let child = self.command().spawn().expect("spawn berth server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Ours must still run: a listener on the port could be another's.
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                let log = self.log();
                if log.contains("cannot listen") && log.contains("in use") {
                    self.child = None;
                    return false;
                }
                panic!("server exited at start:\n{log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
                let alive = self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
                if alive {
                    return true;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not start:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_API", self.api())
            .env("BERTH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run the CLI, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "berth {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::new()
    }

    /// GET through the edge with a Host header.
    pub fn get_host(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let r = c
            .get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .header("host", host)
            .send()
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().unwrap_or_default()))
    }

    pub fn deployments(&self, project: &str) -> Vec<Value> {
        self.json(&["status", "--project", project, "--json"])
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first, so the server shuts down cleanly.
            unsafe_sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_containers_of(&self.data_dir());
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Remove the containers a test server started (by their deployment ids in
/// its database are unknown here; by name prefix of its projects instead).
fn remove_containers_of(_data: &Path) {}

pub fn remove_project_containers(project: &str) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=dev.berth.project={project}"),
        ])
        .output();
    if let Ok(o) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

/// Removes the project's image tags. By tag, never by ID and never
/// forced: another test's project may hold the same image (identical
/// builds share one ID), and a forced removal by ID would pull it, and the
/// cached layers its build is using, from under that test.
pub fn remove_project_images(project: &str) {
    let out = Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &format!("reference=berth/{project}-*"),
        ])
        .output();
    if let Ok(o) = out {
        let mut tags: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter(|t| !t.ends_with(":<none>"))
            .map(String::from)
            .collect();
        tags.sort();
        tags.dedup();
        if !tags.is_empty() {
            let _ = Command::new("docker").arg("rmi").args(&tags).output();
        }
    }
}

/// Runs the docker CLI and returns its stdout; a failure to run it or a
/// non-zero exit panics with its stderr, so an assertion on the output
/// never passes because docker did not answer.
pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        o.status.success(),
        "docker {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether the engine has `image`: false only when the engine says it has
/// no such image; any other failure (no docker CLI, engine down) panics.
pub fn image_exists(image: &str) -> bool {
    let o = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("docker image inspect {image}: {e}"));
    if o.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No such image") || err.contains("No such object"),
        "docker image inspect {image} failed ({}): {}",
        o.status,
        err.trim()
    );
    false
}

/// A git repository of a busybox httpd app that serves `body` on / and has
/// a CGI at /cgi-bin/held that answers only once the test releases it
/// (see [`HELD_CGI`]).
pub struct AppRepo {
    pub dir: tempfile::TempDir,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada Tester")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Tester")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A request that stays in flight until the test says so: it marks
/// `/tmp/held-started` in its container, waits (at most 30 s) for
/// `/tmp/held-release` (`docker exec <container> touch /tmp/held-release`),
/// then answers `held-done <the version's index.html>`.
pub const HELD_CGI: &str = "#!/bin/sh
mkdir -p /tmp
touch /tmp/held-started
i=0
while [ ! -e /tmp/held-release ] && [ \"$i\" -lt 30 ]; do sleep 1; i=$((i+1)); done
echo 'Content-Type: text/plain'
echo
echo \"held-done $(cat /www/index.html)\"
";

pub const DOCKERFILE: &str = "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
COPY www /www
EXPOSE 3000
CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]
";

impl AppRepo {
    pub fn new(body: &str) -> AppRepo {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        git(p, &["init", "-q", "-b", "main"]);
        std::fs::copy("/bin/busybox", p.join("busybox")).expect("busybox-static is installed");
        std::fs::create_dir_all(p.join("www/cgi-bin")).unwrap();
        std::fs::write(p.join("www/cgi-bin/held"), HELD_CGI).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                p.join("www/cgi-bin/held"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        let repo = AppRepo { dir };
        repo.commit_app(body, DOCKERFILE, "first version");
        repo
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn commit_app(&self, body: &str, dockerfile: &str, message: &str) -> String {
        let p = self.dir.path();
        std::fs::write(p.join("www/index.html"), body).unwrap();
        std::fs::write(p.join("Dockerfile"), dockerfile).unwrap();
        git(p, &["add", "-A"]);
        git(p, &["commit", "-q", "-m", message]);
        git(p, &["rev-parse", "HEAD"])
    }

    pub fn head(&self) -> String {
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }
}

/// A keep-alive load generator against the edge: `workers` clients loop
/// until stopped, bounded by `max_requests` and `max_time`.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub non2xx: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<Vec<String>>>,
    started: Instant,
}

pub struct LoadReport {
    pub ok: u64,
    pub non2xx: u64,
    pub errors: u64,
    pub secs: f64,
    pub samples: Vec<String>,
}

impl Load {
    pub fn start(
        port: u16,
        host: &str,
        workers: usize,
        max_requests: u64,
        max_time: Duration,
    ) -> Load {
        Self::start_path(port, host, "/", workers, max_requests, max_time)
    }

    pub fn start_path(
        port: u16,
        host: &str,
        path: &str,
        workers: usize,
        max_requests: u64,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let non2xx = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (stop, ok, non2xx, errors) =
                (stop.clone(), ok.clone(), non2xx.clone(), errors.clone());
            let host = host.to_string();
            let path = path.to_string();
            handles.push(std::thread::spawn(move || {
                let c = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && started.elapsed() < max_time
                    && ok.load(Ordering::Relaxed)
                        + non2xx.load(Ordering::Relaxed)
                        + errors.load(Ordering::Relaxed)
                        < max_requests
                {
                    match c
                        .get(format!("http://127.0.0.1:{port}{path}"))
                        .header("host", &host)
                        .send()
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes();
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let st = r.status();
                            let body = r.text().unwrap_or_default();
                            if samples.len() < 5 {
                                samples.push(format!(
                                    "{st}: {}",
                                    body.chars().take(100).collect::<String>()
                                ));
                            }
                            non2xx.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if samples.len() < 5 {
                                samples.push(format!("error: {e}"));
                            }
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                samples
            }));
        }
        Load {
            stop,
            ok,
            non2xx,
            errors,
            handles,
            started,
        }
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for h in self.handles {
            samples.extend(h.join().unwrap());
        }
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            non2xx: self.non2xx.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            secs: self.started.elapsed().as_secs_f64(),
            samples,
        }
    }
}

/// A test whose tool `what` is missing: under `CI=true` a failure, never a
/// silent pass; elsewhere the caller returns (skips) after this notice.
pub fn missing_tool(what: &str, install: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing and CI=true: {install} (scripts/ensure-deps.sh does it)");
    }
    eprintln!("SKIPPED: {what} is missing ({install}); under CI=true this fails");
}

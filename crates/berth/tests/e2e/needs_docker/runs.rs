//! `berth run`: a command in a new instance of the active deployment's
//! image, with the environment's variables, stdin forwarded, output apart
//! and live, the exit code returned, the run recorded with secrets
//! redacted; `--detach` and `berth logs <run-id>`.

use super::*;
use std::io::Write;
use std::process::{Command, Stdio};

const SECRET: &str = "s3cret-run-value-9f2";

/// A deployed busybox app with `GREETING` (plain) and `API_KEY` (secret),
/// whose web service may use at most 16 MiB.
fn deployed(s: &Server, project: &str) -> AppRepo {
    let repo = AppRepo::new("runs v1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nport = 3000\n[services.web.resources]\nmemory = \"16m\"\n",
    )
    .unwrap();
    repo.commit_app("runs v1", DOCKERFILE, "with limits");
    s.ok(&["projects", "create", project, "--repo", repo.path()]);
    // No active deployment yet: a one-line error, nothing runs.
    let o = s.cli(&["run", "--project", project, "--", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no active deployment"), "{err}");
    s.ok(&["env", "set", "--project", project, "GREETING=bonjour"]);
    s.ok(&[
        "env",
        "set",
        "--project",
        project,
        "--secret",
        &format!("API_KEY={SECRET}"),
    ]);
    let (ok, d) = deploy_wait(s, project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    repo
}

fn runs(s: &Server, project: &str) -> Vec<Value> {
    let r = s
        .client()
        .get(format!("{}/api/v1/projects/{project}/runs", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Vec<Value>>().unwrap()
}

fn run_record(s: &Server, id: &str) -> Value {
    let r = s
        .client()
        .get(format!("{}/api/v1/runs/{id}", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().unwrap()
}

#[test]
fn run_streams_apart_returns_the_exit_code_forwards_stdin_and_is_recorded_redacted() {
    let project = unique("e2er");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let _repo = deployed(&s, &project);

    // The acceptance example, plus a secret and stderr.
    let o = s.cli(&[
        "run",
        "--project",
        &project,
        "--",
        "sh",
        "-c",
        "echo $GREETING; echo \"key=$API_KEY\"; echo oops >&2; exit 3",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}\n{}", s.log());
    assert!(out.starts_with("bonjour\n"), "{out}");
    assert!(out.contains("key=") && !out.contains("key=\n"), "{out}");
    assert!(!out.contains(SECRET), "a secret was printed: {out}");
    assert_eq!(err.trim(), "oops", "stderr apart: {err}");

    // Recorded: who, what, when, the exit code, the output redacted.
    let all = runs(&s, &project);
    assert_eq!(all.len(), 1, "{all:?}");
    let r = run_record(&s, all[0]["id"].as_str().unwrap());
    assert_eq!(r["exitCode"], 3);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["requestedBy"], "admin");
    assert_eq!(r["serviceName"], "web");
    assert_eq!(r["environmentName"], "production");
    assert_eq!(r["command"][0], "sh");
    assert!(r["startedAt"].is_string() && r["completedAt"].is_string());
    let lines: Vec<(String, String)> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_string(),
                l["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("stdout".into(), "bonjour".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "oops".into())),
        "{lines:?}"
    );
    assert!(!r.to_string().contains(SECRET), "secret kept: {r}");
    // berth logs <run-id> prints it again.
    let logs = s.ok(&["logs", all[0]["id"].as_str().unwrap()]);
    assert!(logs.contains("bonjour"), "{logs}");

    // stdin is forwarded from a pipe; the instance is gone afterwards.
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "run",
            "--project",
            &project,
            "--",
            "sh",
            "-c",
            "read a; read b; echo \"got:$a:$b\"; cat | wc -l",
        ])
        .env("BERTH_API", s.api())
        .env("BERTH_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"first\nsecond\nx\ny\nz\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.trim().replace(' ', ""), "got:first:second\n3", "{out}");
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.berth.project={project}"),
        "--filter",
        "label=dev.berth.role=run",
    ]);
    assert!(left.trim().is_empty(), "run instances left: {left}");

    // Over the service's 16 MiB: its exit code and "out of memory".
    let o = s.cli(&[
        "run",
        "--project",
        &project,
        "--",
        "sh",
        "-c",
        "a=$(head -c 64000000 /dev/zero | tr '\\0' x); echo survived",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("out of memory"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("survived"));

    // --detach returns the id at once; logs --follow prints the output
    // until the run ends.
    let o = s.ok(&[
        "run",
        "--project",
        &project,
        "--detach",
        "--",
        "sh",
        "-c",
        "sleep 1; echo detached-$GREETING",
    ]);
    let id = o
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {o}"))
        .to_string();
    let logs = s.ok(&["logs", &id, "--follow"]);
    assert!(logs.contains("detached-bonjour"), "{logs}");
    assert_eq!(run_record(&s, &id)["status"], "succeeded");
}

/// A pseudo-terminal: the test holds the master side, `berth run` gets the
/// slave side as its stdin, stdout and stderr.
struct Pty {
    master: std::fs::File,
    slave: std::os::fd::OwnedFd,
}

impl Pty {
    fn open(cols: u16, rows: u16) -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .expect("open the pty's slave")
            .into();
        let pty = Pty {
            master: master.into(),
            slave,
        };
        pty.resize(cols, rows);
        pty
    }

    fn resize(&self, cols: u16, rows: u16) {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size).unwrap();
    }

    /// Whether the terminal is in its usual (cooked, echoing) mode.
    fn cooked(&self) -> bool {
        use rustix::termios::LocalModes;
        let t = rustix::termios::tcgetattr(&self.slave).unwrap();
        t.local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }
}

/// What the master side read so far, filled by a thread.
struct Screen(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Screen {
    fn follow(master: &std::fs::File) -> Screen {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut m = master.try_clone().unwrap();
        let b = buf.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = m.read(&mut chunk) {
                if n == 0 {
                    return;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Screen(buf)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `want` `times` times.
    fn wait_for(&self, want: &str, times: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.text().matches(want).count() < times {
            assert!(
                Instant::now() < deadline,
                "{what}: {want:?} never showed; screen: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn run_from_a_terminal_gets_a_tty_follows_the_window_and_restores_the_terminal() {
    let project = unique("e2et");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let _repo = deployed(&s, &project);

    let pty = Pty::open(100, 40);
    let mut master = pty.master.try_clone().unwrap();
    let screen = Screen::follow(&pty.master);
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--project", &project, "--", "sh"])
        .env("BERTH_API", s.api())
        .env("BERTH_TOKEN", TOKEN)
        .stdin(pty.stdio())
        .stdout(pty.stdio())
        .stderr(pty.stdio())
        .spawn()
        .unwrap();
    let mut typed = |text: &str| {
        master.write_all(text.as_bytes()).unwrap();
        master.flush().unwrap();
    };

    // An interactive shell: its prompt shows, with no newline after it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !screen.text().contains("# ") && !screen.text().contains("$ ") {
        assert!(
            Instant::now() < deadline,
            "no prompt: {:?}\n{}",
            screen.text(),
            s.log()
        );
        assert!(child.try_wait().unwrap().is_none(), "{:?}", screen.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The local terminal is raw while the session lasts.
    assert!(!pty.cooked(), "the terminal was not put in raw mode");

    // The instance's terminal has the window's size; then follows it.
    typed("stty size\r");
    screen.wait_for("40 100", 1, "the size at start");
    pty.resize(132, 50);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::WINCH,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    typed("stty size\r");
    screen.wait_for("50 132", 1, "the size after SIGWINCH");

    // The acceptance example, typed; and a secret, redacted on the way.
    typed("echo key=$API_KEY; echo $GREETING-shown; exit 4\r");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit: {:?}", screen.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    let shown = screen.text();
    assert_eq!(status.code(), Some(4), "{shown:?}\n{}", s.log());
    assert!(shown.contains("bonjour-shown"), "{shown:?}");
    assert!(shown.contains("key=***"), "{shown:?}");
    assert!(!shown.contains(SECRET), "a secret was shown: {shown:?}");
    // The terminal is as it was before.
    assert!(pty.cooked(), "the terminal was left raw");

    // Recorded, its lines kept (as stdout) and redacted.
    let all = runs(&s, &project);
    let r = run_record(&s, all[0]["id"].as_str().unwrap());
    assert_eq!(r["exitCode"], 4, "{r}");
    assert_eq!(r["requestedBy"], "admin");
    let text = r["output"].to_string();
    assert!(text.contains("bonjour-shown"), "{r}");
    assert!(!r.to_string().contains(SECRET), "secret kept: {r}");

    // -T: no terminal even from one (stdout and stderr stay apart, so
    // `tty` says so); Ctrl-C style signals to berth restore the terminal.
    let o = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "run",
            "-T",
            "--project",
            &project,
            "--",
            "sh",
            "-c",
            "tty; exit 0",
        ])
        .env("BERTH_API", s.api())
        .env("BERTH_TOKEN", TOKEN)
        .stdin(pty.stdio())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not a tty"), "{out}");

    // SIGTERM to berth mid-session: the terminal is restored.
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--project", &project, "--", "sh"])
        .env("BERTH_API", s.api())
        .env("BERTH_TOKEN", TOKEN)
        .stdin(pty.stdio())
        .stdout(pty.stdio())
        .stderr(pty.stdio())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pty.cooked() {
        assert!(Instant::now() < deadline, "never went raw");
        std::thread::sleep(Duration::from_millis(50));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert!(pty.cooked(), "SIGTERM left the terminal raw");
}

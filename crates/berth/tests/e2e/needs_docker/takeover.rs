//! `berth server --takeover`: a second server process takes the sockets and
//! the control plane over under load; nothing is refused or restarted.

use super::*;

fn started_at(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.StartedAt}}", container])
        .trim()
        .to_string()
}

#[test]
fn takeover_under_load_drops_no_request_and_keeps_the_containers() {
    let project = unique("e2et");
    let _c = Cleanup(project.clone());
    // with HTTPS too: its worker sockets are handed over with the others
    let https_port = free_port();
    let mut s = Server::start_with(&["--https-listen", &format!("127.0.0.1:{https_port}")]);
    let repo = AppRepo::new("v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "{d1}");
    let id1 = d1["id"].as_str().unwrap().to_string();
    let c1 = s.json(&["inspect", &id1, "--json"])["runtime"]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let started = started_at(&c1);
    let h = host(&project);
    let load = Load::start(s.http_port, &h, 4, 200_000, Duration::from_secs(120));

    // A request held in the app across the takeover: the old process must
    // finish it before it exits.
    let held = super::hold_request(s.http_port, &h, &c1);
    let in_c1 = |cmd: &str| docker(&["exec", &c1, "/bin/sh", "-c", cmd]);
    std::thread::sleep(Duration::from_millis(300));

    let mut old = s.takeover();
    let old_pid = old.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.log().contains("took the listening sockets over") {
        assert!(
            s.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the new server exited:\n{}",
            s.log()
        );
        assert!(Instant::now() < deadline, "no takeover:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old process waits for the held request; it exits once released.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old server exited with a request in flight:\n{}",
        s.log()
    );
    in_c1("touch /tmp/held-release");
    let (status, body) = held.join().unwrap().expect("the held request completed");
    assert_eq!((status, body.trim()), (200, "held-done v1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the old server (pid {old_pid}) did not exit:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "old server: {exit}\n{}", s.log());

    // The load keeps going on the new process alone for a moment.
    let ok_before = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.finish();
    eprintln!(
        "takeover under load: {} ok, {} failed, {} non-2xx in {:.1} s ({} of them before the old process exited)",
        report.ok, report.errors, report.non2xx, report.secs, ok_before
    );
    assert_eq!(
        (report.errors, report.non2xx),
        (0, 0),
        "failed requests across the takeover: {:?}\n{}",
        report.samples,
        s.log()
    );
    assert!(
        report.ok > ok_before + 10,
        "the new server did not serve the load: {} then {}",
        ok_before,
        report.ok
    );

    // The containers were adopted, not restarted; nothing is left running.
    let all = s.deployments(&project);
    assert!(
        all.iter()
            .all(|d| d["status"] != "running" && d["status"] != "queued"),
        "{all:?}"
    );
    let after = s.json(&["inspect", &id1, "--json"]);
    assert_eq!(after["isActive"], true, "{after}");
    assert_eq!(after["runtime"]["instanceId"], c1.as_str());
    assert_eq!(started_at(&c1), started, "the container was restarted");

    // The control plane is the new process's: a deploy goes through it.
    repo.commit_app("v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}\n{}", s.log());
    wait_body(&s, &h, "v2");
    let https = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true) // the fallback certificate
        .resolve(&h, ([127, 0, 0, 1], https_port).into())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..4 {
        let resp = https
            .get(format!("https://{h}:{https_port}/"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().unwrap().contains("v2"));
    }
    assert!(s.log().contains("takeover: handing"), "{}", s.log());
    assert!(s.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_ne!(s.pid(), old_pid);
}

#[test]
fn a_takeover_with_other_addresses_is_refused_and_the_server_carries_on() {
    let s = Server::start();
    s.ok(&["projects", "list"]); // serving (the hand-over socket is open)
    let other = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--takeover",
            "--data-dir",
            s.data_dir().to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{}", s.api_port),
            "--http-listen",
            &format!("127.0.0.1:{other}"),
            "--token",
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--http-listen 127.0.0.1:{other} differs")),
        "{err}"
    );
    // the running server still answers
    s.ok(&["projects", "list"]);

    // and without a running server, --takeover says so
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["server", "--takeover", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running berth server answers on"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

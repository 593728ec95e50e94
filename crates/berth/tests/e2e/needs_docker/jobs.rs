//! Scheduled jobs on the real engine: `berth jobs list|run|logs`, a job's
//! timeout, and one real firing of an every-minute job that a kill -9 and
//! restart of berth inside the same minute does not run again.
//!
//! This test waits for a real minute boundary: at most 70 s after the
//! deploy (the in-process tests in berth-server drive the scheduler with a
//! clock of their own for everything else).

use super::*;

const SECRET: &str = "s3cret-job-value-4c1";

const BERTH_TOML: &str = "[services.web]\nport = 3000\n\n\
[jobs.tick]\nschedule = \"* * * * *\"\ncommand = \"echo tick $GREETING key=$API_KEY\"\n\n\
[jobs.slow]\nschedule = \"0 0 1 1 *\"\ncommand = \"sleep 30\"\ntimeout = \"2s\"\n";

fn job_runs(s: &Server, project: &str, job: &str) -> Vec<Value> {
    let v = s.json(&["jobs", "logs", "--project", project, job, "--json"]);
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn jobs_list_run_logs_timeout_and_a_real_firing_once_across_a_kill_9() {
    let project = unique("e2ej");
    let _c = Cleanup(project.clone());
    let mut s = Server::start();
    let repo = AppRepo::new("jobs v1");
    std::fs::write(repo.dir.path().join("berth.toml"), BERTH_TOML).unwrap();
    repo.commit_app("jobs v1", DOCKERFILE, "with jobs");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&["env", "set", "--project", &project, "GREETING=bonjour"]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        &format!("API_KEY={SECRET}"),
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    let deployed = Instant::now();

    // list: both jobs, from the active deployment.
    let jobs = s.json(&["jobs", "list", "--project", &project, "--json"]);
    let names: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["slow", "tick"], "{jobs}");
    let tick = &jobs[1];
    assert_eq!(tick["schedule"], "* * * * *");
    assert_eq!(tick["serviceName"], "web");
    assert_eq!(tick["deploymentId"], d["id"]);
    assert!(tick["nextRunAt"].is_string(), "{tick}");
    let human = s.ok(&["jobs", "list", "--project", &project]);
    assert!(
        human.contains("tick") && human.contains("* * * * *"),
        "{human}"
    );

    // run now: the variables (the secret redacted), exit code 0.
    let o = s.cli(&["jobs", "run", "--project", &project, "tick"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tick bonjour key="), "{out}");
    assert!(!out.contains(SECRET), "a secret was printed: {out}");

    // The timeout kills the run; it is recorded failed with the reason.
    let o = s.cli(&["jobs", "run", "--project", &project, "slow"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("timed out"), "{err}");
    let slow = job_runs(&s, &project, "slow");
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_eq!(slow[0]["status"], "failed");

    // An unknown job: a one-line error.
    let o = s.cli(&["jobs", "run", "--project", &project, "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("no job \"nope\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A real firing, at the next minute boundary (at most 70 s). A firing
    // that came while the manual run above was still going is skipped (the
    // rule for overlapping runs): then the one after it must run (135 s).
    let fired = loop {
        let runs = job_runs(&s, &project, "tick");
        let scheduled: Vec<&Value> = runs
            .iter()
            .filter(|r| r["scheduledFor"].is_string())
            .collect();
        if let Some(r) = scheduled.iter().find(|r| r["status"] != "skipped") {
            break (*r).clone();
        }
        for r in &scheduled {
            assert!(
                r["error"].as_str().unwrap_or("").contains("still going"),
                "a firing was skipped for another reason: {r}"
            );
        }
        let limit = if scheduled.is_empty() { 70 } else { 135 };
        assert!(
            deployed.elapsed() < Duration::from_secs(limit),
            "no scheduled run of tick within {limit} s: {runs:?}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let firing = fired["scheduledFor"].as_str().unwrap().to_string();
    assert!(firing.ends_with(":00Z"), "{firing}");
    assert_eq!(fired["requestedBy"], "scheduler");
    for key in [
        "id",
        "job",
        "status",
        "exitCode",
        "startedAt",
        "completedAt",
    ] {
        assert!(fired.get(key).is_some(), "{key} missing: {fired}");
    }

    // kill -9 and restart: the firing is recorded, it does not run again.
    s.kill9();
    s.spawn();
    std::thread::sleep(Duration::from_secs(3));
    let runs = job_runs(&s, &project, "tick");
    let mut firings: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["scheduledFor"].as_str())
        .collect();
    let n = firings.len();
    firings.sort_unstable();
    firings.dedup();
    assert_eq!(firings.len(), n, "a firing ran twice: {runs:?}");
    assert!(firings.contains(&firing.as_str()));
    let done = runs.iter().find(|r| r["id"] == fired["id"]).unwrap();
    assert!(
        done["status"] == "succeeded" || done["status"] == "failed",
        "{done}"
    );
    let text = serde_json::to_string(&runs).unwrap();
    assert!(!text.contains(SECRET), "secret kept: {text}");
    let human = s.ok(&["jobs", "logs", "--project", &project, "tick"]);
    assert!(human.contains(&format!("firing {firing}")), "{human}");
    assert!(human.contains("tick bonjour key="), "{human}");
}

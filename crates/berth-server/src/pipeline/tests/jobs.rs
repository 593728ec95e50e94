//! The scheduler of jobs ([`crate::jobs`]) in process: a real store, the
//! fake runtime, and a clock of the test's own ([`Scheduler::tick`] is
//! given the time). A restart of berth is a new deployer and scheduler on
//! the same store; two servers are two schedulers on one store.

use super::*;
use crate::jobs::{ActiveJob, Fired, Scheduler};
use berth_core::ops::{Run, RunStatus};
use berth_store::RunQuery;
use chrono::{DateTime, DurationRound, Utc};

const EVERY_MINUTE: &str =
    "[services.web]\nport = 3000\n\n[services.web.readiness]\ndeadline = \"2s\"\n\n\
[jobs.tick]\nschedule = \"* * * * *\"\ncommand = \"echo tick\"\n";

/// A whole minute safely after the deployment (so the job existed).
fn minute_after(t: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::minutes(1)).unwrap() + chrono::Duration::minutes(minutes)
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

async fn job_harness(toml: &str, behaviour: Behaviour) -> (Harness, Deployment) {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = toml.into();
    *h.builder.behaviour.lock().unwrap() = behaviour;
    let d = h.deploy().await;
    assert!(d.is_active, "{:?}", d.failure_message);
    (h, d)
}

async fn jobs_of(h: &Harness) -> Vec<ActiveJob> {
    h.deployer.active_jobs(None, None).await.unwrap()
}

/// Every run of job `name`, oldest first.
async fn runs_of(h: &Harness, name: &str) -> Vec<Run> {
    let mut runs = h
        .store
        .list_runs(&RunQuery {
            job: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    runs.reverse();
    runs
}

/// Waits (bounded, 10 s) until run `id` is terminal.
async fn finished_run(h: &Harness, id: &str) -> Run {
    for _ in 0..400 {
        let r = h.store.get_run(id).await.unwrap();
        if r.status.is_terminal() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {id} did not finish");
}

fn oneoffs(h: &Harness) -> usize {
    h.rt.calls()
        .iter()
        .filter(|c| matches!(c, berth_runtime::fake::Call::RunOneoff(_)))
        .count()
}

fn started(fired: &[(String, Fired)]) -> String {
    match fired {
        [(_, Fired::Started(id))] => id.clone(),
        other => panic!("expected one started run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_job_runs_once_per_firing_across_rounds_servers_and_a_restart() {
    let (h, d) = job_harness(EVERY_MINUTE, Behaviour::default()).await;
    let jobs = jobs_of(&h).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].config.name, "tick");
    assert_eq!(jobs[0].deployment_id, d.id);
    let f1 = minute_after(d.created_at, 2);

    // Two servers on one store fire the same firing: one run.
    let a = Scheduler::new(h.deployer.clone(), Utc::now());
    let b = Scheduler::new(h.deployer.clone(), Utc::now());
    let (fa, fb) = tokio::join!(a.tick(f1 + secs(1), &jobs), b.tick(f1 + secs(1), &jobs));
    let mut all: Vec<Fired> = fa.into_iter().chain(fb).map(|(_, f)| f).collect();
    all.sort_by_key(|f| matches!(f, Fired::AlreadyRecorded));
    assert!(
        matches!(all.as_slice(), [Fired::Started(_), Fired::AlreadyRecorded]),
        "{all:?}"
    );
    let Fired::Started(first) = &all[0] else {
        unreachable!()
    };
    // Later rounds of the same minute do nothing.
    assert!(a.tick(f1 + secs(30), &jobs).await.is_empty());
    let run = finished_run(&h, first).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.scheduled_for, Some(f1));
    assert_eq!(run.requested_by, "scheduler");
    assert_eq!(run.deployment_id.as_deref(), Some(d.id.as_str()));
    assert_eq!(run.command, ["/bin/sh", "-c", "echo tick"]);

    // A restart within the minute: the new process finds it recorded.
    let h = h.restart().await;
    let c = Scheduler::new(h.deployer.clone(), Utc::now());
    let jobs = jobs_of(&h).await;
    let again = c.tick(f1 + secs(40), &jobs).await;
    assert_eq!(again, vec![("tick".to_string(), Fired::AlreadyRecorded)]);
    // The next minute runs once.
    let second = started(&c.tick(f1 + secs(61), &jobs).await);
    finished_run(&h, &second).await;
    let runs = runs_of(&h, "tick").await;
    let firings: Vec<_> = runs.iter().map(|r| r.scheduled_for).collect();
    assert_eq!(firings, vec![Some(f1), Some(f1 + secs(60))]);
    assert_eq!(oneoffs(&h), 2, "{:?}", h.rt.calls());
}

#[tokio::test]
async fn a_firing_missed_while_down_runs_once_at_start_and_older_ones_never() {
    let hourly = EVERY_MINUTE.replace("* * * * *", "0 * * * *");
    let (h, d) = job_harness(&hourly, Behaviour::default()).await;
    let jobs = jobs_of(&h).await;
    let hour = d
        .created_at
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap();
    // berth was down from before hour+1 until hour+3:20: three firings
    // passed; only hour+3, 20 min late (less than its period), runs.
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    let back = hour + chrono::Duration::minutes(200);
    let id = started(&s.tick(back, &jobs).await);
    let run = finished_run(&h, &id).await;
    assert_eq!(run.scheduled_for, Some(hour + chrono::Duration::hours(3)));
    assert!(s.tick(back + secs(600), &jobs).await.is_empty());
    // A restart later in the same hour does not run it again.
    let h = h.restart().await;
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    assert_eq!(
        s.tick(back + secs(900), &jobs_of(&h).await).await,
        vec![("tick".to_string(), Fired::AlreadyRecorded)]
    );
    assert_eq!(runs_of(&h, "tick").await.len(), 1);
}

#[tokio::test]
async fn a_firing_before_the_job_existed_does_not_run() {
    let (h, d) = job_harness(EVERY_MINUTE, Behaviour::default()).await;
    let mut jobs = jobs_of(&h).await;
    let f = minute_after(d.created_at, 2);
    // Deployed 10 s after the firing, never ran: not run.
    jobs[0].deployed_at = f + secs(10);
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    assert!(s.tick(f + secs(20), &jobs).await.is_empty());
    assert!(runs_of(&h, "tick").await.is_empty());
    // The next firing runs.
    started(&s.tick(f + secs(61), &jobs).await);
}

/// A yearly job's latest firing (last 1 January) is older than its
/// deployment: a `berth jobs run` made since does not make it run (CI saw
/// it fire right after a manual run).
#[tokio::test]
async fn a_manual_run_does_not_make_a_firing_before_the_deployment_run() {
    let yearly = EVERY_MINUTE.replace("* * * * *", "0 0 1 1 *");
    let (h, _d) = job_harness(&yearly, Behaviour::default()).await;
    let (run, _events) = h
        .deployer
        .run_job_now("shop", "production", "tick", "admin")
        .await
        .unwrap();
    assert_eq!(finished_run(&h, &run.id).await.status, RunStatus::Succeeded);
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    assert!(s.tick(Utc::now(), &jobs_of(&h).await).await.is_empty());
    assert_eq!(runs_of(&h, "tick").await.len(), 1);
}

#[tokio::test]
async fn a_firing_while_the_previous_run_goes_is_recorded_skipped() {
    let slow = Behaviour {
        oneoff_time: Duration::from_millis(1500),
        ..Behaviour::default()
    };
    let (h, d) = job_harness(EVERY_MINUTE, slow).await;
    let jobs = jobs_of(&h).await;
    let f1 = minute_after(d.created_at, 2);
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    let first = started(&s.tick(f1, &jobs).await);
    // The next firing comes while the first run goes: skipped, recorded.
    let fired = s.tick(f1 + secs(60), &jobs).await;
    let [(_, Fired::Skipped(skipped))] = fired.as_slice() else {
        panic!("expected a skip, got {fired:?}");
    };
    let rec = h.store.get_run(skipped).await.unwrap();
    assert_eq!(rec.status, RunStatus::Skipped);
    assert_eq!(rec.scheduled_for, Some(f1 + secs(60)));
    assert!(rec.started_at.is_none() && rec.completed_at.is_some());
    assert!(
        rec.error.as_deref().unwrap_or("").contains(&first),
        "{:?}",
        rec.error
    );
    assert_eq!(oneoffs(&h), 1);
    // Once it ended, the next firing runs.
    assert_eq!(finished_run(&h, &first).await.status, RunStatus::Succeeded);
    started(&s.tick(f1 + secs(120), &jobs).await);
    let statuses: Vec<_> = runs_of(&h, "tick").await.iter().map(|r| r.status).collect();
    assert_eq!(statuses[..2], [RunStatus::Succeeded, RunStatus::Skipped]);
}

#[tokio::test]
async fn a_run_left_going_by_a_restart_does_not_block_the_next_firing() {
    let slow = Behaviour {
        oneoff_time: Duration::from_secs(30),
        ..Behaviour::default()
    };
    let (h, d) = job_harness(EVERY_MINUTE, slow).await;
    let f1 = minute_after(d.created_at, 2);
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    let first = started(&s.tick(f1, &jobs_of(&h).await).await);
    // kill -9: a new process on the same store; the run is still recorded
    // going when its first round comes (the reconciler has not run yet).
    let h2 = Harness {
        deployer: deployer(
            h.dir.path(),
            h.store.clone(),
            &h.rt,
            h.builder.clone(),
            h.edge.clone(),
        ),
        ..h
    };
    assert_eq!(
        h2.store.get_run(&first).await.unwrap().status,
        RunStatus::Running
    );
    let s2 = Scheduler::new(h2.deployer.clone(), Utc::now());
    started(&s2.tick(f1 + secs(60), &jobs_of(&h2).await).await);
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_and_recorded_failed() {
    let toml = EVERY_MINUTE.replace("echo tick\"\n", "echo tick\"\ntimeout = \"1s\"\n");
    let slow = Behaviour {
        oneoff_time: Duration::from_secs(30),
        ..Behaviour::default()
    };
    let (h, d) = job_harness(&toml, slow).await;
    let jobs = jobs_of(&h).await;
    assert_eq!(jobs[0].config.timeout, Duration::from_secs(1));
    let s = Scheduler::new(h.deployer.clone(), Utc::now());
    let id = started(&s.tick(minute_after(d.created_at, 2), &jobs).await);
    let run = finished_run(&h, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("timed out"),
        "{:?}",
        run.error
    );
}

#[tokio::test]
async fn a_job_runs_the_image_of_the_active_deployment_and_jobs_run_works_now() {
    let (h, v1) = job_harness(EVERY_MINUTE, Behaviour::default()).await;
    let v2 = h.deploy().await;
    assert!(v2.is_active, "{:?}", v2.failure_message);
    assert_ne!(v1.image, v2.image);
    let (run, _events) = h
        .deployer
        .run_job_now("shop", "production", "tick", "admin")
        .await
        .unwrap();
    assert_eq!(run.job.as_deref(), Some("tick"));
    assert_eq!(run.scheduled_for, None);
    assert_eq!(run.deployment_id.as_deref(), Some(v2.id.as_str()));
    assert_eq!(finished_run(&h, &run.id).await.status, RunStatus::Succeeded);
    let err = h
        .deployer
        .run_job_now("shop", "production", "nope", "admin")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no job \"nope\""), "{err}");
    let listed = h.deployer.list_jobs("shop", None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].deployment_id, v2.id);
    assert_eq!(listed[0].last_runs.len(), 1);
    assert!(listed[0].next_run_at.is_some());
}

#[tokio::test]
async fn a_bad_cron_is_refused_at_analyze_and_the_previous_deployment_keeps_serving() {
    let (h, v1) = job_harness(EVERY_MINUTE, Behaviour::default()).await;
    *h.builder.toml.lock().unwrap() = EVERY_MINUTE.replace("* * * * *", "61 * * * *");
    let bad = h.deploy().await;
    assert_eq!(bad.status, Status::Failed);
    let msg = bad.failure_message.clone().unwrap_or_default();
    assert!(
        msg.contains("berth.toml: jobs.tick.schedule: invalid cron expression"),
        "{msg}"
    );
    let slot = berth_store::Slot::of(&v1);
    let active = h.store.active_deployment(&slot).await.unwrap().unwrap();
    assert_eq!(active.id, v1.id);
    *h.builder.toml.lock().unwrap() =
        EVERY_MINUTE.replace("echo tick\"\n", "echo tick\"\nservice = \"api\"\n");
    let bad = h.deploy().await;
    let msg = bad.failure_message.clone().unwrap_or_default();
    assert!(
        msg.contains("jobs.tick.service: unknown service \"api\""),
        "{msg}"
    );
    h.check_invariants().await;
}

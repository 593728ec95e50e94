//! Logs you can trust (issue 6): tagged streams, redaction, follow with
//! resume.

use super::{deploy_wait, unique, Cleanup};
use crate::harness::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const PRINTING: &str = "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
COPY www /www
CMD [\"/bin/sh\", \"-c\", \"echo starting with key $API_KEY; echo b64 $(echo -n $API_KEY | base64); echo oops >&2; exec httpd -f -p 3000 -h /www\"]
";

fn container_of(s: &Server, id: &str) -> String {
    s.json(&["inspect", id, "--json"])["runtime"]["instanceId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn app_print(container: &str, line: &str) {
    let st = std::process::Command::new("docker")
        .args([
            "exec",
            container,
            "sh",
            "-c",
            &format!("echo {line} > /proc/1/fd/1"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

fn api_logs(s: &Server, id: &str, query: &str) -> Vec<Value> {
    s.client()
        .get(format!("{}/api/v1/deployments/{id}/logs?{query}", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_for_line(s: &Server, id: &str, needle: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines = api_logs(s, id, "");
        if lines
            .iter()
            .any(|l| l["stream"] == "stdout" && l["text"].as_str().unwrap_or("").contains(needle))
        {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never logged: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logs_are_tagged_redacted_and_followed_with_resume() {
    let project = unique("e2el");
    let _c = Cleanup(project.clone());
    let secret = "sk-live-Zq8w3x-SECRET";
    let mut s = Server::start();
    let repo = AppRepo::new("logs");
    repo.commit_app("logs", PRINTING, "printing app");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        &format!("API_KEY={secret}"),
    ]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let lines = wait_for_line(&s, &id, "starting with key");

    // Tagged lines in all streams, in order.
    let text = |l: &Value| l["text"].as_str().unwrap().to_string();
    let started = lines
        .iter()
        .find(|l| l["stream"] == "stdout" && text(l).contains("starting with key"))
        .unwrap();
    assert_eq!(started["stream"], "stdout");
    assert_eq!(started["deploymentId"], id.as_str());
    assert_eq!(started["serviceName"], "web");
    assert_eq!(started["environmentName"], "production");
    assert_eq!(started["sha"].as_str().unwrap(), &repo.head()[..7]);
    assert_eq!(text(started), "starting with key ***");
    assert!(lines
        .iter()
        .any(|l| l["stream"] == "stderr" && text(l) == "oops"));
    assert!(lines
        .iter()
        .any(|l| l["stream"] == "build" && l["step"] == "build"));
    let stages: Vec<String> = lines
        .iter()
        .filter(|l| l["stream"] == "berth" && text(l).starts_with("stage: "))
        .map(text)
        .collect();
    let order = [
        "building",
        "starting_candidate",
        "checking_readiness",
        "switching_route",
        "draining_previous",
        "active",
    ];
    let mut pos = 0;
    for st in &stages {
        if pos < order.len() && st.starts_with(&format!("stage: {}", order[pos])) {
            pos += 1;
        }
    }
    assert_eq!(pos, order.len(), "stage transitions in order: {stages:?}");
    assert!(lines
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    // The base64 form is masked too.
    let b64 = lines
        .iter()
        .find(|l| l["stream"] == "stdout" && text(l).starts_with("b64 "))
        .unwrap();
    assert!(text(b64).contains("***"), "{b64}");

    // The CLI shows the same, never the secret.
    let out = s.ok(&["logs", &id]);
    assert!(out.contains("starting with key ***"), "{out}");
    assert!(!out.contains(secret));
    let all_api = serde_json::to_string(&api_logs(&s, &id, "limit=50000")).unwrap();
    assert!(!all_api.contains(secret));

    // Follow over SSE: a new line arrives; a reconnect with Last-Event-ID
    // loses and repeats nothing.
    let container = container_of(&s, &id);
    let follow = |last: Option<i64>| {
        let mut req = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(format!(
                "{}/api/v1/deployments/{id}/logs?follow=true&stream=stdout",
                s.api()
            ))
            .bearer_auth(TOKEN);
        if let Some(l) = last {
            req = req.header("last-event-id", l.to_string());
        }
        BufReader::new(req.send().unwrap())
    };
    let mut reader = follow(None);
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    let read_until = |reader: &mut BufReader<reqwest::blocking::Response>,
                      needle: &str,
                      seqs: &mut Vec<i64>,
                      texts: &mut Vec<String>| {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("stream ended before {needle}");
            }
            if let Some(data) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                seqs.push(v["seq"].as_i64().unwrap());
                texts.push(v["text"].as_str().unwrap().to_string());
                if texts.last().unwrap().contains(needle) {
                    return;
                }
            }
        }
    };
    app_print(&container, "first-followed-line");
    read_until(&mut reader, "first-followed-line", &mut seqs, &mut texts);
    drop(reader);
    let resume_from = *seqs.last().unwrap();
    app_print(&container, "printed-while-away");
    app_print(&container, "second-followed-line");
    let mut reader = follow(Some(resume_from));
    read_until(&mut reader, "second-followed-line", &mut seqs, &mut texts);
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted, seqs, "no repeated line: {seqs:?}");
    let away = texts
        .iter()
        .position(|t| t == "printed-while-away")
        .expect("the line printed while away arrives");
    assert_eq!(texts[away + 1], "second-followed-line");
    drop(reader);
    // The CLI resumes the same way: --after the last seq it printed.
    let out = s.ok(&[
        "logs",
        &id,
        "--stream",
        "stdout",
        "--after",
        &resume_from.to_string(),
        "--json",
    ]);
    let resumed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(resumed
        .iter()
        .all(|v| v["seq"].as_i64().unwrap() > resume_from));
    let texts_cli: Vec<&str> = resumed
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    let i = texts_cli
        .iter()
        .position(|t| *t == "printed-while-away")
        .unwrap();
    assert_eq!(texts_cli[i + 1], "second-followed-line");
    assert!(!texts_cli.contains(&"first-followed-line"));

    // After kill -9 and a restart, the adopted container's output is still
    // captured and still redacted.
    s.kill9();
    s.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        app_print(&container, &format!("after-restart {secret}"));
        let lines = api_logs(&s, &id, "stream=stdout");
        if let Some(l) = lines.iter().find(|l| text(l).starts_with("after-restart")) {
            assert_eq!(text(l), "after-restart ***");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output after restart never captured"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = serde_json::to_string(&api_logs(&s, &id, "limit=50000")).unwrap();
    assert!(!all.contains(secret));
}

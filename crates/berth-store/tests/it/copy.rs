//! `copy_store`: a SQLite berth with secrets, history, logs and a verified
//! domain, moved into PostgreSQL with nothing lost.

use crate::{all_bytes, contains, deployment, new_project};
use berth_core::model::*;
use berth_core::state::{Event, Health, Stage, Status};
use berth_store::copy::copy_store;
use berth_store::*;
use chrono::{Duration, Utc};

const SECRET: &str = "copy-secret-value-never-in-clear";
const TOKEN: &str = "ghp_copyTokenNeverInClear";
const TLS_KEY: &str = "COPY-TLS-KEY-NEVER-IN-CLEAR";
const NOTIFY_SECRET: &str = "bnsec_copyNotifySecretNeverInClear";
const NOTIFY_PATH: &str = "T000/B000/notifyPathNeverInClear";

async fn populate(s: &dyn Store) {
    let mut p = new_project("shop");
    p.repo = format!("https://x:{TOKEN}@git.example.com/shop.git");
    p.deploy_key = Some("-----BEGIN KEY-----\nDEPLOYKEYDATA\n-----END KEY-----\n".into());
    s.create_project(p).await.unwrap();
    s.create_project(new_project("blog")).await.unwrap();
    s.create_environment(Environment {
        project_name: "shop".into(),
        name: "staging".into(),
        branch: Some("develop".into()),
        kind: EnvironmentKind::Branch,
        created_at: Utc::now(),
    })
    .await
    .unwrap();
    let at = Utc::now() - Duration::days(3);
    s.set_variable(
        "shop",
        "production",
        "API_KEY",
        SECRET,
        VarFlags::SECRET,
        at,
    )
    .await
    .unwrap();
    s.set_variable(
        "shop",
        "staging",
        "NPM_TOKEN",
        "npm-build",
        VarFlags {
            secret: false,
            build: true,
        },
        at,
    )
    .await
    .unwrap();
    s.set_maintenance(&berth_core::model::Maintenance {
        project_name: "shop".into(),
        environment_name: "staging".into(),
        service_name: Some("web".into()),
        since: at,
    })
    .await
    .unwrap();
    // History: a superseded and an active deployment, with logs.
    let t0 = Utc::now() - Duration::hours(2);
    for (i, id) in ["d1", "d2"].iter().enumerate() {
        let mut d = deployment(id, "shop", t0 + Duration::minutes(i as i64));
        s.insert_deployment(&d).await.unwrap();
        d.status = Status::Succeeded;
        d.promotion_stage = Stage::Active;
        d.health = Health::Healthy;
        let mut batch: Vec<Deployment> = vec![d];
        if i == 1 {
            let mut prev = s.get_deployment("d1").await.unwrap();
            prev.apply(Event::Supersede).unwrap();
            batch.push(prev);
        }
        let slot = Slot::of(&batch[0]);
        let mut refs: Vec<&mut Deployment> = batch.iter_mut().collect();
        s.save_deployments(
            &mut refs,
            Some(Activate {
                slot,
                deployment_id: Some(id.to_string()),
            }),
        )
        .await
        .unwrap();
    }
    let lines: Vec<NewLogLine> = (0..25)
        .map(|i| NewLogLine {
            deployment_id: if i % 3 == 0 { "d1" } else { "d2" }.into(),
            ts: t0 + Duration::seconds(i),
            stream: LogStream::Stdout,
            step: None,
            text: format!("line {i}"),
        })
        .collect();
    s.append_logs(&lines).await.unwrap();
    let dom = Domain {
        hostname: "shop.example.com".into(),
        project_name: "shop".into(),
        service_name: "web".into(),
        environment_name: "production".into(),
        verified: false,
        verified_at: None,
        verification: DomainVerification {
            record_type: "TXT".into(),
            name: verification_name("shop.example.com"),
            value: "berth-verify=abc".into(),
        },
        target: "shop.berth.test".into(),
        created_at: Utc::now(),
        certificate: CertificateStatus::default(),
    };
    s.add_domain(&dom).await.unwrap();
    s.set_domain_verified("shop.example.com", Utc::now())
        .await
        .unwrap();
    s.put_certificate(&CertRecord {
        hostname: "shop.example.com".into(),
        state: CertState::Issued,
        chain_pem: Some("CHAIN".into()),
        key_pem: Some(TLS_KEY.into()),
        not_after: Some(Utc::now() + Duration::days(80)),
        error: None,
        attempts: 0,
        next_attempt_at: None,
        updated_at: Utc::now(),
    })
    .await
    .unwrap();
    s.put_acme_account("https://acme.test/dir", r#"{"k":"ACMEKEY"}"#)
        .await
        .unwrap();
    s.put_dns_update_key("127.0.0.1:53", "berth:hmac-sha256:VFNJRw==")
        .await
        .unwrap();
    s.put_external_route(&ExternalRoute {
        hostname: "legacy.example.com".into(),
        upstream: "127.0.0.1:9000".into(),
        created_at: Utc::now(),
    })
    .await
    .unwrap();
    s.put_manifest(
        "shop-web:abc",
        &[ManifestEntry {
            path: "/app".into(),
            size: 1,
            sha256: "00".repeat(32),
        }],
        Utc::now(),
    )
    .await
    .unwrap();
    s.record_delivery("shop", "delivery-1", Utc::now())
        .await
        .unwrap();
    s.create_token(&TokenRecord {
        info: berth_core::access::TokenInfo {
            name: "ci".into(),
            role: berth_core::access::Role::Deployer,
            project: Some("shop".into()),
            created_at: Utc::now(),
            expires_at: Some(Utc::now() + Duration::days(30)),
            last_used_at: None,
            revoked_at: None,
        },
        hash: "ab".repeat(32),
    })
    .await
    .unwrap();
    // Runs: a job's firing with its output and a one-off run.
    let mut job = crate::contract::run("r1", Some("nightly"), t0);
    job.status = berth_core::ops::RunStatus::Succeeded;
    job.exit_code = Some(0);
    job.output.push(berth_core::ops::RunLine {
        ts: t0 + Duration::seconds(30),
        stream: LogStream::Stderr,
        line: "job output".into(),
    });
    s.insert_run(&job).await.unwrap();
    s.insert_run(&crate::contract::run("r2", None, t0 + Duration::minutes(5)))
        .await
        .unwrap();
    // Backups: a verified one and a failed one.
    let mut b = crate::contract::backup("b1", "production", "uploads", t0);
    b.status = berth_core::volumes::BackupStatus::Succeeded;
    b.checksum = Some(format!("sha256:{}", "cd".repeat(32)));
    b.location = Some("s3://bucket/shop/production/uploads/b1.tar.gz".into());
    s.insert_backup(&b).await.unwrap();
    let mut b2 = crate::contract::backup("b2", "staging", "uploads", t0 + Duration::minutes(1));
    b2.status = berth_core::volumes::BackupStatus::Failed;
    b2.error = Some("cannot read the volume".into());
    s.insert_backup(&b2).await.unwrap();
    // A notification endpoint (URL and secret sealed) with a delivered and
    // a pending delivery.
    let n = berth_core::notify::Notification {
        id: "n1".into(),
        project_name: "shop".into(),
        url: "https://hooks.example.com/…".into(),
        events: vec![berth_core::notify::NotifyEvent::Failed],
        created_at: t0,
    };
    s.add_notification(
        &n,
        &NotifyTarget {
            url: format!("https://hooks.example.com/{NOTIFY_PATH}"),
            secret: NOTIFY_SECRET.into(),
        },
    )
    .await
    .unwrap();
    let mut sent = crate::contract::delivery(
        "nd1",
        "n1",
        "d1",
        berth_core::notify::NotifyEvent::Failed,
        t0,
    );
    sent.status = berth_core::notify::DeliveryStatus::Delivered;
    sent.next_attempt_at = None;
    sent.attempts.push(berth_core::notify::Attempt {
        at: t0,
        status_code: Some(200),
        error: None,
        duration_ms: 12,
    });
    s.queue_delivery(&sent).await.unwrap();
    s.queue_delivery(&crate::contract::delivery(
        "nd2",
        "n1",
        "d2",
        berth_core::notify::NotifyEvent::Failed,
        t0 + Duration::minutes(1),
    ))
    .await
    .unwrap();
    // A repository pushed with `git push` (its bundle, bytes as they are).
    let bundle: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert_eq!(
        s.put_pushed_repo("shop", 0, &bundle).await.unwrap(),
        Some(1)
    );
    // Console sessions: one still valid, one expired (not copied).
    for (id, expires) in [("live", Duration::hours(8)), ("gone", -Duration::hours(1))] {
        s.put_session(&SessionRecord {
            id_hash: format!("{id}-hash"),
            token: "ci".into(),
            created_at: Utc::now() - Duration::hours(9),
            expires_at: Utc::now() + expires,
        })
        .await
        .unwrap();
    }
    for action in ["deploy", "rollback"] {
        s.append_audit(&berth_core::access::AuditEntry {
            at: Utc::now(),
            token: "ci".into(),
            action: action.into(),
            target: "shop".into(),
            project: Some("shop".into()),
            source_ip: "127.0.0.1".into(),
        })
        .await
        .unwrap();
    }
}

/// Everything a user can see, from one store, for comparison.
async fn view(s: &dyn Store) -> String {
    let mut out = String::new();
    use std::fmt::Write;
    for p in s.list_projects().await.unwrap() {
        writeln!(out, "{p:?}").unwrap();
        let a = s.repo_access(&p.name).await.unwrap();
        writeln!(out, "repo {} key {:?}", a.url, a.deploy_key).unwrap();
        writeln!(out, "hook {:?}", s.webhook_secret(&p.name).await.unwrap()).unwrap();
        for e in s.list_environments(&p.name).await.unwrap() {
            writeln!(out, "{e:?}").unwrap();
            for v in s.resolve_variables(&p.name, &e.name).await.unwrap() {
                writeln!(out, "{}={} {} {}", v.key, v.value, v.secret, v.build).unwrap();
            }
            for v in s.list_variables(&p.name, &e.name).await.unwrap() {
                writeln!(out, "{v:?}").unwrap();
            }
        }
    }
    for d in s.list_deployments(&Default::default()).await.unwrap() {
        let mut d = d;
        d.version = 0;
        writeln!(out, "{}", serde_json::to_string(&d).unwrap()).unwrap();
        let logs = s
            .read_logs(&LogQuery {
                deployment_id: Some(d.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        for l in logs {
            writeln!(out, "{} {} {} {:?}", l.deployment_id, l.ts, l.text, l.sha).unwrap();
        }
    }
    writeln!(out, "{:?}", s.list_domains(None).await.unwrap()).unwrap();
    writeln!(out, "{:?}", s.list_certificates().await.unwrap()).unwrap();
    for c in s.list_certificates().await.unwrap() {
        writeln!(out, "key {:?}", c.key_pem).unwrap();
    }
    for dir in s.list_acme_directories().await.unwrap() {
        writeln!(out, "{dir} {:?}", s.acme_account(&dir).await.unwrap()).unwrap();
    }
    for server in s.list_dns_update_servers().await.unwrap() {
        writeln!(
            out,
            "{server} {:?}",
            s.dns_update_key(&server).await.unwrap()
        )
        .unwrap();
    }
    writeln!(out, "{:?}", s.list_external_routes().await.unwrap()).unwrap();
    for i in s.list_manifest_images().await.unwrap() {
        writeln!(out, "{i} {:?}", s.get_manifest(&i).await.unwrap()).unwrap();
    }
    for (p, id, _) in s.list_deliveries().await.unwrap() {
        writeln!(out, "delivery {p} {id}").unwrap();
    }
    writeln!(out, "{:?}", s.list_maintenance(None).await.unwrap()).unwrap();
    for p in s.list_projects().await.unwrap() {
        for run in s
            .list_runs(&RunQuery {
                project: Some(p.name.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
        {
            writeln!(out, "{}", serde_json::to_string(&run).unwrap()).unwrap();
        }
        for b in s.list_backups(&p.name, None, None).await.unwrap() {
            writeln!(out, "{}", serde_json::to_string(&b).unwrap()).unwrap();
        }
    }
    for n in s.list_notifications(None).await.unwrap() {
        writeln!(out, "{n:?}").unwrap();
        let t = s.notification_target(&n.id).await.unwrap();
        writeln!(out, "target {} {}", t.url, t.secret).unwrap();
        for d in s.notification_deliveries(&n.id, 100).await.unwrap() {
            writeln!(out, "{}", serde_json::to_string(&d).unwrap()).unwrap();
        }
    }
    for id in ["live-hash", "gone-hash"] {
        writeln!(out, "{:?}", s.get_session(id, Utc::now()).await.unwrap()).unwrap();
    }
    writeln!(out, "{:?}", s.token_records().await.unwrap()).unwrap();
    writeln!(
        out,
        "{:?}",
        s.list_audit(&AuditQuery::default()).await.unwrap()
    )
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_loses_nothing_and_refuses_a_non_empty_target() {
    let Some(base) = testpg::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cipher = Cipher::from_key([4; 32]);
    let from = SqliteStore::open(dir.path(), cipher.clone()).unwrap();
    populate(&from).await;
    let url = testpg::fresh_database(&base).await;
    let to = PgStore::connect(&url, cipher.clone()).await.unwrap();

    let report = copy_store(&from, &to, false).await.unwrap();
    assert_eq!(report.projects, 2);
    assert_eq!(report.deployments, 2);
    assert_eq!(report.log_lines, 25);
    assert_eq!((report.runs, report.backups), (2, 2));
    assert_eq!(
        (report.notifications, report.notification_deliveries),
        (1, 2)
    );
    assert_eq!(report.sessions, 1);
    assert_eq!(report.domains, 1);
    assert_eq!(report.certificates, 1);
    assert_eq!(report.acme_accounts, 1);
    assert_eq!(report.dns_update_keys, 1);
    assert_eq!(report.pushed_repos, 1);
    let (_, copied) = to.pushed_repo("shop").await.unwrap().unwrap();
    assert_eq!(
        copied,
        (0..=255u8).cycle().take(70_000).collect::<Vec<u8>>()
    );
    assert_eq!((report.tokens, report.audit_entries), (1, 2));
    let before = view(&from).await;
    assert!(before.contains(SECRET) && before.contains(TLS_KEY));
    assert!(before.contains(NOTIFY_SECRET) && before.contains("job output"));
    assert!(before.contains("live-hash") && !before.contains("gone-hash"));
    assert_eq!(view(&to).await, before);
    let active = to
        .active_deployment(&Slot {
            project: "shop".into(),
            environment: "production".into(),
            service: "web".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.id, "d2");
    // Resume cursors on the target follow the same order.
    let all = to.read_logs(&LogQuery::default()).await.unwrap();
    let texts: Vec<String> = all.iter().map(|l| l.text.clone()).collect();
    assert_eq!(
        texts,
        (0..25).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    // A copied job firing still counts as run: the target refuses it again.
    let again = crate::contract::run("r9", Some("nightly"), job_firing(&from).await);
    assert!(matches!(
        to.insert_run(&again).await,
        Err(StoreError::Conflict { .. })
    ));

    // No secret in clear in the target's dump (nor in the source's files).
    let dump = testpg::dump(&url);
    assert!(contains(&dump, "shop.berth.test"));
    for s in [
        SECRET,
        TOKEN,
        TLS_KEY,
        "DEPLOYKEYDATA",
        "ACMEKEY",
        "whsec-very-secret-1",
        NOTIFY_SECRET,
        NOTIFY_PATH,
    ] {
        assert!(!contains(&dump, s), "{s} in the dump");
        assert!(!contains(&all_bytes(dir.path()), s), "{s} on disk");
    }

    // The target is not empty now: refused, and nothing changes.
    let e = copy_store(&from, &to, false).await.unwrap_err().to_string();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    let forced = copy_store(&from, &to, true).await.unwrap();
    assert_eq!(forced.kept, 2);
    assert_eq!(forced.projects, 0);
    assert_eq!(view(&to).await, before);
}

/// The firing of the copied job run.
async fn job_firing(s: &dyn Store) -> chrono::DateTime<Utc> {
    s.get_run("r1").await.unwrap().scheduled_for.unwrap()
}

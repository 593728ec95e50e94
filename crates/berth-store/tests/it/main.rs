//! Tests of the SQLite store on real files.

use berth_core::model::*;
use berth_core::state::{Health, Stage, Status};
use berth_store::*;
use chrono::{Duration, Utc};
use std::path::Path;

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, Cipher::load(dir, None).unwrap()).unwrap()
}

fn new_project(name: &str) -> NewProject {
    NewProject {
        name: name.into(),
        repo: "/srv/repo".into(),
        default_branch: "main".into(),
        retain_images: 3,
        webhook_secret: Some("whsec-very-secret-1".into()),
        deploy_key: None,
        created_at: Utc::now(),
    }
}

fn deployment(id: &str, project: &str, at: chrono::DateTime<Utc>) -> Deployment {
    Deployment {
        id: id.into(),
        project_name: project.into(),
        service_name: "web".into(),
        environment_name: "production".into(),
        status: Status::Queued,
        promotion_stage: Stage::Pending,
        health: Health::Pending,
        is_active: false,
        route_url: None,
        preview_url: None,
        failure_message: None,
        created_at: at,
        started_at: None,
        completed_at: None,
        reference: "main".into(),
        commit: Some(Commit {
            sha: "0123456789abcdef".into(),
            branch: Some("main".into()),
            message: "m".into(),
            author: "a".into(),
        }),
        trigger: Trigger::Manual,
        source_deployment_id: None,
        image: None,
        build: BuildInfo::default(),
        steps: vec![Step::pending(StepName::Clone)],
        canary_weight: None,
        runtime: None,
        source_repo: None,
    }
}

/// Every byte of every file under `dir`, for "no secret in clear" checks.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn projects_come_with_production_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let p = s.create_project(new_project("shop")).await.unwrap();
        assert!(p.has_webhook_secret);
        assert!(matches!(
            s.create_project(new_project("shop")).await,
            Err(StoreError::Conflict { .. })
        ));
        let envs = s.list_environments("shop").await.unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].name, PRODUCTION);
        assert_eq!(envs[0].branch.as_deref(), Some("main"));
    }
    let s = open(dir.path());
    assert_eq!(s.list_projects().await.unwrap()[0].name, "shop");
    assert_eq!(
        s.webhook_secret("shop").await.unwrap().as_deref(),
        Some("whsec-very-secret-1")
    );
    assert_eq!(s.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn invalid_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut bad = new_project("Bad_Name");
    assert!(matches!(
        s.create_project(bad.clone()).await,
        Err(StoreError::Invalid(_))
    ));
    bad.name = "ok".into();
    bad.repo = " ".into();
    assert!(s.create_project(bad).await.is_err());
    assert!(s.list_projects().await.unwrap().is_empty());
    s.create_project(new_project("shop")).await.unwrap();
    for key in ["", "1X", "A=B", "A-B"] {
        let e = s
            .set_variable("shop", "production", key, "v", VarFlags::PLAIN, Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{key:?}: {e}");
    }
    let big = "x".repeat(64 * 1024 + 1);
    assert!(s
        .set_variable(
            "shop",
            "production",
            "BIG",
            &big,
            VarFlags::PLAIN,
            Utc::now()
        )
        .await
        .is_err());
    assert!(s
        .set_variable(
            "shop",
            "production",
            "NUL",
            "a\0b",
            VarFlags::PLAIN,
            Utc::now()
        )
        .await
        .is_err());
    assert!(matches!(
        s.set_variable("nope", "production", "K", "v", VarFlags::PLAIN, Utc::now())
            .await,
        Err(StoreError::NotFound {
            what: "project",
            ..
        })
    ));
    assert!(matches!(
        s.set_variable("shop", "staging", "K", "v", VarFlags::PLAIN, Utc::now())
            .await,
        Err(StoreError::NotFound {
            what: "environment",
            ..
        })
    ));
    assert!(s
        .list_variables("shop", "production")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn secrets_are_masked_on_read_and_never_in_clear_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-value-that-must-not-leak";
    {
        let s = open(dir.path());
        s.create_project(new_project("shop")).await.unwrap();
        let v = s
            .set_variable(
                "shop",
                "production",
                "API_KEY",
                secret,
                VarFlags::SECRET,
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(v.value, None);
        s.set_variable(
            "shop",
            "production",
            "PLAIN",
            "visible",
            VarFlags::PLAIN,
            Utc::now(),
        )
        .await
        .unwrap();
        let listed = s.list_variables("shop", "production").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].key, "API_KEY");
        assert_eq!(listed[0].value, None);
        assert_eq!(listed[1].value.as_deref(), Some("visible"));
        let resolved = s.resolve_variables("shop", "production").await.unwrap();
        assert_eq!(resolved[0].value, secret);
        assert!(!format!("{resolved:?}").contains(secret));
        // The WAL is still there (not checkpointed) while the store is open.
        let bytes = all_bytes(dir.path());
        assert!(contains(&bytes, "visible"), "the scan must see the data");
        assert!(!contains(&bytes, secret));
        assert!(!contains(&bytes, "whsec-very-secret-1"));
    }
    let bytes = all_bytes(dir.path());
    assert!(!contains(&bytes, secret));
    let s = open(dir.path());
    assert!(s
        .unset_variable("shop", "production", "API_KEY")
        .await
        .unwrap());
    assert!(!s
        .unset_variable("shop", "production", "API_KEY")
        .await
        .unwrap());
}

#[tokio::test]
async fn repository_credentials_and_deploy_keys_are_sealed_and_given_to_fetches_only() {
    let dir = tempfile::tempdir().unwrap();
    let token = "ghp_tokenThatMustNotLeak42";
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nkeyMaterialThatMustNotLeak\n-----END OPENSSH PRIVATE KEY-----\n";
    let s = open(dir.path());
    let mut p = new_project("shop");
    p.repo = format!("https://x-access-token:{token}@git.example.com/a/shop.git");
    p.deploy_key = Some(key.into());
    let shown = s.create_project(p).await.unwrap();
    assert_eq!(shown.repo, "https://git.example.com/a/shop.git");
    assert!(shown.has_repo_credentials && shown.has_deploy_key);
    let access = s.repo_access("shop").await.unwrap();
    assert_eq!(
        access.url,
        format!("https://x-access-token:{token}@git.example.com/a/shop.git")
    );
    assert_eq!(access.deploy_key.as_deref(), Some(key));
    assert!(!format!("{access:?}").contains(token));
    assert!(!format!("{access:?}").contains("keyMaterial"));
    let bytes = all_bytes(dir.path());
    assert!(
        contains(&bytes, "git.example.com"),
        "the scan must see the data"
    );
    assert!(!contains(&bytes, token));
    assert!(!contains(&bytes, "keyMaterialThatMustNotLeak"));

    // A new URL without credentials drops the old ones; "" removes the key.
    let p = s
        .update_project(
            "shop",
            ProjectPatch {
                repo: Some("https://git.example.com/a/other.git".into()),
                deploy_key: Some(String::new()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!p.has_repo_credentials && !p.has_deploy_key);
    let access = s.repo_access("shop").await.unwrap();
    assert_eq!(access.url, "https://git.example.com/a/other.git");
    assert_eq!(access.deploy_key, None);
}

#[tokio::test]
async fn credentials_stored_in_clear_by_an_older_berth_are_sealed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = "ghp_legacyTokenInClear77";
    {
        let s = open(dir.path());
        s.create_project(new_project("shop")).await.unwrap();
    }
    {
        // What versions before migration 5 wrote: the token in the URL.
        let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute(
            "UPDATE projects SET repo = ?1 WHERE name = 'shop'",
            [format!("https://u:{token}@git.example.com/shop.git")],
        )
        .unwrap();
    }
    let s = open(dir.path());
    let p = s.get_project("shop").await.unwrap();
    assert_eq!(p.repo, "https://git.example.com/shop.git");
    assert!(p.has_repo_credentials);
    assert_eq!(
        s.repo_access("shop").await.unwrap().url,
        format!("https://u:{token}@git.example.com/shop.git")
    );
    assert!(!contains(&all_bytes(dir.path()), token));
}

#[tokio::test]
async fn build_flags_of_variables_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_project(new_project("shop")).await.unwrap();
    let both = VarFlags {
        secret: true,
        build: true,
    };
    let v = s
        .set_variable("shop", "production", "NPM_TOKEN", "t0k", both, Utc::now())
        .await
        .unwrap();
    assert!(v.build && v.secret && v.value.is_none());
    s.set_variable(
        "shop",
        "production",
        "PLAIN",
        "p",
        VarFlags::PLAIN,
        Utc::now(),
    )
    .await
    .unwrap();
    let r = s.resolve_variables("shop", "production").await.unwrap();
    assert_eq!(
        r.iter()
            .map(|v| (v.key.as_str(), v.build))
            .collect::<Vec<_>>(),
        [("NPM_TOKEN", true), ("PLAIN", false)]
    );
    // Setting again without the flag clears it.
    s.set_variable(
        "shop",
        "production",
        "NPM_TOKEN",
        "t0k",
        VarFlags::SECRET,
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(!s.list_variables("shop", "production").await.unwrap()[0].build);
}

#[tokio::test]
async fn deployments_list_newest_first_and_one_active_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_project(new_project("shop")).await.unwrap();
    let t0 = Utc::now();
    let mut a = deployment("a", "shop", t0);
    let mut b = deployment("b", "shop", t0 + Duration::seconds(1));
    s.insert_deployment(&a).await.unwrap();
    s.insert_deployment(&b).await.unwrap();
    assert!(matches!(
        s.insert_deployment(&a).await,
        Err(StoreError::Conflict { .. })
    ));
    let ids: Vec<_> = s
        .list_deployments(&DeploymentQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["b", "a"]);

    a.status = Status::Succeeded;
    a.promotion_stage = Stage::Active;
    s.save_deployments(
        &[&a],
        Some(Activate {
            slot: Slot::of(&a),
            deployment_id: Some("a".into()),
        }),
    )
    .await
    .unwrap();
    assert!(s.get_deployment("a").await.unwrap().is_active);
    assert!(!s.get_deployment("b").await.unwrap().is_active);

    a.promotion_stage = Stage::Superseded;
    b.status = Status::Succeeded;
    b.promotion_stage = Stage::Active;
    s.save_deployments(
        &[&a, &b],
        Some(Activate {
            slot: Slot::of(&b),
            deployment_id: Some("b".into()),
        }),
    )
    .await
    .unwrap();
    let all = s
        .list_deployments(&DeploymentQuery::default())
        .await
        .unwrap();
    assert_eq!(all.iter().filter(|d| d.is_active).count(), 1);
    assert_eq!(
        s.active_deployment(&Slot::of(&a))
            .await
            .unwrap()
            .unwrap()
            .id,
        "b"
    );
    assert_eq!(
        s.get_deployment("a").await.unwrap().promotion_stage,
        Stage::Superseded
    );
    let unfinished = s
        .list_deployments(&DeploymentQuery {
            unfinished: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(unfinished.is_empty());
    assert!(matches!(
        s.get_deployment("zzz").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn logs_are_tagged_ordered_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_project(new_project("shop")).await.unwrap();
    s.insert_deployment(&deployment("a", "shop", Utc::now()))
        .await
        .unwrap();
    let lines: Vec<NewLogLine> = (0..10)
        .map(|i| NewLogLine {
            deployment_id: "a".into(),
            ts: Utc::now(),
            stream: if i % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Build
            },
            step: (i % 2 == 1).then_some(StepName::Build),
            text: format!("line {i}"),
        })
        .collect();
    s.append_logs(&lines).await.unwrap();
    let all = s
        .read_logs(&LogQuery {
            deployment_id: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[0].sha.as_deref(), Some("0123456"));
    assert_eq!(all[0].service_name, "web");
    let after = s
        .read_logs(&LogQuery {
            deployment_id: Some("a".into()),
            after_seq: Some(all[4].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after[0].text, "line 5");
    let build = s
        .read_logs(&LogQuery {
            deployment_id: Some("a".into()),
            step: Some(StepName::Build),
            limit: Some(2),
            tail: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let texts: Vec<_> = build.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 7", "line 9"]);
}

#[tokio::test]
async fn environments_and_external_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_project(new_project("shop")).await.unwrap();
    let env = Environment {
        project_name: "shop".into(),
        name: "staging".into(),
        branch: Some("develop".into()),
        kind: EnvironmentKind::Branch,
        created_at: Utc::now(),
    };
    s.create_environment(env.clone()).await.unwrap();
    assert!(matches!(
        s.create_environment(env).await,
        Err(StoreError::Conflict { .. })
    ));
    s.set_variable("shop", "staging", "K", "v", VarFlags::PLAIN, Utc::now())
        .await
        .unwrap();
    assert!(s.delete_environment("shop", "production").await.is_err());
    s.delete_environment("shop", "staging").await.unwrap();
    assert_eq!(s.list_environments("shop").await.unwrap().len(), 1);

    let r = ExternalRoute {
        hostname: "legacy.example.com".into(),
        upstream: "127.0.0.1:9000".into(),
        created_at: Utc::now(),
    };
    s.put_external_route(&r).await.unwrap();
    let listed = s.list_external_routes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].hostname.as_str(), listed[0].upstream.as_str()),
        ("legacy.example.com", "127.0.0.1:9000")
    );
    assert!(s.remove_external_route("legacy.example.com").await.unwrap());
    assert!(!s.remove_external_route("legacy.example.com").await.unwrap());
}

#[tokio::test]
async fn log_retention_drops_old_lines_and_caps_each_project() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_project(new_project("shop")).await.unwrap();
    s.create_project(new_project("blog")).await.unwrap();
    let now = Utc::now();
    s.insert_deployment(&deployment("a", "shop", now))
        .await
        .unwrap();
    s.insert_deployment(&deployment("b", "blog", now))
        .await
        .unwrap();
    let line = |id: &str, age_days: i64, i: usize| NewLogLine {
        deployment_id: id.into(),
        ts: now - Duration::days(age_days),
        stream: LogStream::Stdout,
        step: None,
        text: format!("{id} {i}"),
    };
    let mut lines: Vec<NewLogLine> = (0..3).map(|i| line("a", 40, i)).collect();
    lines.extend((0..10).map(|i| line("a", 0, i)));
    lines.extend((0..4).map(|i| line("b", 0, i)));
    s.append_logs(&lines).await.unwrap();
    let removed = s.prune_logs(now - Duration::days(30), 5).await.unwrap();
    assert_eq!(removed, 3 + 5);
    let q = |id: &str| LogQuery {
        deployment_id: Some(id.into()),
        ..Default::default()
    };
    let a: Vec<String> = s
        .read_logs(&q("a"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(
        a,
        ["a 5", "a 6", "a 7", "a 8", "a 9"],
        "the newest lines stay"
    );
    assert_eq!(
        s.read_logs(&q("b")).await.unwrap().len(),
        4,
        "other projects untouched"
    );
}

#[tokio::test]
async fn certificate_keys_and_acme_accounts_are_sealed_and_domains_show_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.create_project(new_project("shop")).await.unwrap();
    let d = Domain {
        hostname: "shop.example.com".into(),
        project_name: "shop".into(),
        service_name: "web".into(),
        environment_name: "production".into(),
        verified: false,
        verified_at: None,
        verification: DomainVerification {
            record_type: "TXT".into(),
            name: verification_name("shop.example.com"),
            value: "berth-verify=1".into(),
        },
        target: "shop.berth.test".into(),
        created_at: Utc::now(),
        certificate: CertificateStatus::default(),
    };
    s.add_domain(&d).await.unwrap();
    assert_eq!(
        s.list_domains(None).await.unwrap()[0].certificate.state,
        CertState::None
    );

    let key =
        "-----BEGIN PRIVATE KEY-----\nTOP-SECRET-TLS-KEY-MATERIAL\n-----END PRIVATE KEY-----\n";
    let not_after = Utc::now() + Duration::days(90);
    let rec = CertRecord {
        hostname: "shop.example.com".into(),
        state: CertState::Issued,
        chain_pem: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()),
        key_pem: Some(key.into()),
        not_after: Some(not_after),
        error: None,
        attempts: 0,
        next_attempt_at: Some(not_after - Duration::days(30)),
        updated_at: Utc::now(),
    };
    s.put_certificate(&rec).await.unwrap();
    let creds = r#"{"id":"acct","key_pkcs8":"ACME-ACCOUNT-SECRET-KEY"}"#;
    s.put_acme_account("https://acme.test/dir", creds)
        .await
        .unwrap();
    drop(s);

    // Reopened: the key comes back, the domain shows the state.
    let s = open(tmp.path());
    let got = s
        .get_certificate("shop.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key_pem.as_deref(), Some(key));
    assert_eq!(got.state, CertState::Issued);
    assert_eq!(s.list_certificates().await.unwrap().len(), 1);
    let dom = &s.list_domains(Some("shop")).await.unwrap()[0];
    assert_eq!(dom.certificate.state, CertState::Issued);
    assert!(dom.certificate.not_after.is_some());
    assert_eq!(
        s.acme_account("https://acme.test/dir")
            .await
            .unwrap()
            .as_deref(),
        Some(creds)
    );
    assert_eq!(
        s.acme_account("https://other.test/dir").await.unwrap(),
        None
    );
    // Neither secret is on disk in clear (WAL included), nor in Debug.
    let bytes = all_bytes(tmp.path());
    assert!(!contains(&bytes, "TOP-SECRET-TLS-KEY-MATERIAL"));
    assert!(!contains(&bytes, "ACME-ACCOUNT-SECRET-KEY"));
    assert!(!format!("{got:?}").contains("TOP-SECRET"));

    assert!(s.remove_certificate("shop.example.com").await.unwrap());
    assert!(s
        .get_certificate("shop.example.com")
        .await
        .unwrap()
        .is_none());
}

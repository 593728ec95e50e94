//! The store contract: one property per function, over `&dyn Store`.
//! Every backend runs each of them on a fresh, empty store
//! ([`crate::contract_tests`]).

use crate::{contains, deployment, new_project};
use berth_core::model::*;
use berth_core::state::{Event, Health, Stage, Status};
use berth_store::*;
use chrono::{Duration, Utc};
use std::collections::HashSet;
use std::sync::Arc;

/// A fresh store of one backend, and how to read everything it persisted.
pub struct Harness {
    pub store: Arc<dyn Store>,
    /// Every byte the backend holds for this store (files, or a dump), for
    /// "no secret in clear" checks.
    pub dump: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// Keeps the backend's files or database alive.
    pub _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Harness {
    pub fn dump(&self) -> Vec<u8> {
        (self.dump)()
    }
}

pub async fn projects_come_with_production(h: &Harness) {
    let s = &*h.store;
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
    assert_eq!(s.list_projects().await.unwrap()[0].name, "shop");
    assert_eq!(
        s.webhook_secret("shop").await.unwrap().as_deref(),
        Some("whsec-very-secret-1")
    );
    let p = s
        .update_project(
            "shop",
            ProjectPatch {
                retain_images: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(p.retain_images, 7);
    assert!(matches!(
        s.get_project("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn secrets_are_masked_on_read_and_never_in_clear(h: &Harness) {
    let s = &*h.store;
    let secret = "s3cr3t-value-that-must-not-leak";
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
    let bytes = h.dump();
    assert!(contains(&bytes, "visible"), "the dump must see the data");
    assert!(!contains(&bytes, secret));
    assert!(!contains(&bytes, "whsec-very-secret-1"));
    assert!(s
        .unset_variable("shop", "production", "API_KEY")
        .await
        .unwrap());
    assert!(!s
        .unset_variable("shop", "production", "API_KEY")
        .await
        .unwrap());
}

/// Compare-and-set: a copy read before another writer's save cannot be
/// saved, and a refused batch writes nothing (not even its activation).
pub async fn a_stale_save_is_refused_and_writes_nothing(h: &Harness) {
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    let t0 = Utc::now();
    let mut a = deployment("a", "shop", t0);
    let slot = Slot::of(&a);
    s.insert_deployment(&a).await.unwrap();
    let mut b = deployment("b", "shop", t0 + Duration::seconds(1));
    s.insert_deployment(&b).await.unwrap();
    // `a` goes live.
    a.status = Status::Succeeded;
    a.promotion_stage = Stage::Active;
    a.health = Health::Healthy;
    s.save_deployments(
        &mut [&mut a],
        Some(Activate {
            slot: slot.clone(),
            deployment_id: Some("a".into()),
        }),
    )
    .await
    .unwrap();
    assert_eq!(a.version, s.get_deployment("a").await.unwrap().version);

    // A health monitor reads `a`...
    let monitor_copy = s.get_deployment("a").await.unwrap();
    // ...then `b` supersedes it.
    let mut pipeline_copy = s.get_deployment("a").await.unwrap();
    pipeline_copy.apply(Event::Supersede).unwrap();
    b.status = Status::Succeeded;
    b.promotion_stage = Stage::Active;
    s.save_deployments(
        &mut [&mut b, &mut pipeline_copy],
        Some(Activate {
            slot: slot.clone(),
            deployment_id: Some("b".into()),
        }),
    )
    .await
    .unwrap();
    // The monitor's stale save (health unhealthy, stage still active) is
    // refused and the supersede stays.
    let mut stale = monitor_copy.clone();
    stale
        .apply(Event::HealthChanged(Health::Unhealthy))
        .unwrap();
    let before = stale.version;
    let e = s
        .save_deployments(&mut [&mut stale], None)
        .await
        .unwrap_err();
    assert!(e.is_stale(), "{e}");
    assert!(e.to_string().contains("deployment a"), "{e}");
    assert_eq!(stale.version, before, "a refused save bumps nothing");
    let now = s.get_deployment("a").await.unwrap();
    assert_ne!(now.promotion_stage, Stage::Active);
    assert_eq!(now.health, Health::Healthy);

    // A refused batch writes nothing: `b` fresh, `a` stale, flipping back.
    let mut b2 = s.get_deployment("b").await.unwrap();
    b2.failure_message = Some("must not be written".into());
    let mut stale_a = monitor_copy.clone();
    let e = s
        .save_deployments(
            &mut [&mut b2, &mut stale_a],
            Some(Activate {
                slot: slot.clone(),
                deployment_id: Some("a".into()),
            }),
        )
        .await
        .unwrap_err();
    assert!(e.is_stale(), "{e}");
    let b_now = s.get_deployment("b").await.unwrap();
    assert_eq!(b_now.failure_message, None);
    assert!(b_now.is_active);
    assert_eq!(
        s.active_deployment(&Slot::of(&a))
            .await
            .unwrap()
            .unwrap()
            .id,
        "b"
    );
    // A fresh copy saves, twice in a row with the bumped version.
    let mut fresh = s.get_deployment("a").await.unwrap();
    fresh.failure_message = Some("x".into());
    s.save_deployments(&mut [&mut fresh], None).await.unwrap();
    s.save_deployments(&mut [&mut fresh], None).await.unwrap();
    assert_eq!(s.get_deployment("a").await.unwrap().version, fresh.version);
    // An unknown record is not found, not stale.
    let mut ghost = deployment("ghost", "shop", t0);
    assert!(matches!(
        s.save_deployments(&mut [&mut ghost], None).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Concurrent writers append while a follower resumes from its cursor:
/// the follower sees every line exactly once, in the order of the cursor.
pub async fn log_cursor_never_skips_or_repeats_under_concurrent_writers(h: &Harness) {
    let s = h.store.clone();
    s.create_project(new_project("shop")).await.unwrap();
    s.insert_deployment(&deployment("a", "shop", Utc::now()))
        .await
        .unwrap();
    const WRITERS: usize = 6;
    const BATCHES: usize = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let lines: Vec<NewLogLine> = (0..(1 + (w + b) % 4))
                    .map(|i| NewLogLine {
                        deployment_id: "a".into(),
                        ts: Utc::now(),
                        stream: LogStream::Stdout,
                        step: None,
                        text: format!("w{w} b{b} i{i}"),
                    })
                    .collect();
                s.append_logs(&lines).await.unwrap();
            }
        }));
    }
    let total: usize = (0..WRITERS)
        .map(|w| (0..BATCHES).map(|b| 1 + (w + b) % 4).sum::<usize>())
        .sum();
    let follower = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            let mut seen: Vec<(i64, String)> = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while seen.len() < total && std::time::Instant::now() < deadline {
                let got = s
                    .read_logs(&LogQuery {
                        deployment_id: Some("a".into()),
                        after_seq: cursor,
                        limit: Some(7),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                if let Some(last) = got.last() {
                    cursor = Some(last.seq);
                }
                seen.extend(got.into_iter().map(|l| (l.seq, l.text)));
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let seen = follower.await.unwrap();
    assert_eq!(seen.len(), total, "the follower saw every line once");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "cursor order");
    let texts: HashSet<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.len(), total, "no line repeated");
    // Within one batch, lines keep their order.
    for w in 0..WRITERS {
        let mine: Vec<&str> = seen
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| t.starts_with(&format!("w{w} ")))
            .collect();
        let mut sorted = mine.clone();
        sorted.sort_by_key(|t| {
            let p: Vec<usize> = t.split(' ').map(|x| x[1..].parse().unwrap()).collect();
            (p[1], p[2])
        });
        assert_eq!(mine, sorted, "writer {w}'s lines in order");
    }
}

pub async fn deliveries_and_manifests(h: &Harness) {
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    assert!(s.record_delivery("shop", "d-1", Utc::now()).await.unwrap());
    assert!(!s.record_delivery("shop", "d-1", Utc::now()).await.unwrap());
    assert!(s.record_delivery("shop", "d-2", Utc::now()).await.unwrap());
    let entries = vec![ManifestEntry {
        path: "/app/server".into(),
        size: 42,
        sha256: "ab".repeat(32),
    }];
    assert_eq!(s.get_manifest("img:1").await.unwrap(), None);
    s.put_manifest("img:1", &entries, Utc::now()).await.unwrap();
    assert_eq!(s.get_manifest("img:1").await.unwrap(), Some(entries));
    s.put_manifest("img:1", &[], Utc::now()).await.unwrap();
    assert_eq!(s.get_manifest("img:1").await.unwrap(), Some(vec![]));
}

pub async fn certificate_keys_and_acme_accounts_are_sealed_and_domains_show_the_state(h: &Harness) {
    let s = &*h.store;
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
    assert!(matches!(
        s.add_domain(&d).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.list_domains(None).await.unwrap()[0].certificate.state,
        CertState::None
    );
    s.set_domain_verified("shop.example.com", Utc::now())
        .await
        .unwrap();
    assert!(s.list_domains(Some("shop")).await.unwrap()[0].verified);

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
    assert_eq!(dom.certificate.attempts, 0);
    // A failed renewal: its attempt count, reason and retry time are listed.
    let retry_at = Utc::now() + Duration::seconds(90);
    s.put_certificate(&CertRecord {
        state: CertState::Failed,
        error: Some("new order: rate limited".into()),
        attempts: 3,
        next_attempt_at: Some(retry_at),
        ..rec.clone()
    })
    .await
    .unwrap();
    let c = &s.list_domains(Some("shop")).await.unwrap()[0].certificate;
    assert_eq!(
        (c.state, c.attempts, c.error.as_deref()),
        (CertState::Failed, 3, Some("new order: rate limited"))
    );
    assert_eq!(
        c.next_attempt_at.map(|t| t.timestamp()),
        Some(retry_at.timestamp())
    );
    s.put_certificate(&rec).await.unwrap();
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
    let bytes = h.dump();
    assert!(
        contains(&bytes, "shop.berth.test"),
        "the dump must see the data"
    );
    assert!(!contains(&bytes, "TOP-SECRET-TLS-KEY-MATERIAL"));
    assert!(!contains(&bytes, "ACME-ACCOUNT-SECRET-KEY"));
    assert!(!format!("{got:?}").contains("TOP-SECRET"));

    assert!(s.remove_certificate("shop.example.com").await.unwrap());
    assert!(s
        .get_certificate("shop.example.com")
        .await
        .unwrap()
        .is_none());
    assert!(s.remove_domain("shop.example.com").await.unwrap());
    assert!(!s.remove_domain("shop.example.com").await.unwrap());
}

pub async fn invalid_input_writes_nothing(h: &Harness) {
    let s = &*h.store;
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

pub async fn repository_credentials_and_deploy_keys_are_sealed_and_given_to_fetches_only(
    h: &Harness,
) {
    let token = "ghp_tokenThatMustNotLeak42";
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nkeyMaterialThatMustNotLeak\n-----END OPENSSH PRIVATE KEY-----\n";
    let s = &*h.store;
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
    let bytes = h.dump();
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

pub async fn build_flags_of_variables_are_kept(h: &Harness) {
    let s = &*h.store;
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

pub async fn deployments_list_newest_first_and_one_active_per_slot(h: &Harness) {
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    let t0 = Utc::now();
    let mut a = deployment("a", "shop", t0);
    let slot = Slot::of(&a);
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
        &mut [&mut a],
        Some(Activate {
            slot: slot.clone(),
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
        &mut [&mut a, &mut b],
        Some(Activate {
            slot: slot.clone(),
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

pub async fn logs_are_tagged_ordered_and_resumable(h: &Harness) {
    let s = &*h.store;
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

pub async fn environments_and_external_routes(h: &Harness) {
    let s = &*h.store;
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

pub async fn log_retention_drops_old_lines_and_caps_each_project(h: &Harness) {
    let s = &*h.store;
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

pub(crate) fn run(id: &str, job: Option<&str>, at: chrono::DateTime<Utc>) -> berth_core::ops::Run {
    berth_core::ops::Run {
        id: id.into(),
        project_name: "shop".into(),
        environment_name: "production".into(),
        service_name: "web".into(),
        job: job.map(Into::into),
        command: vec!["sh".into(), "-c".into(), "echo hi".into()],
        requested_by: "admin".into(),
        deployment_id: Some("d1".into()),
        server: Some("berth-1".into()),
        scheduled_for: job.map(|_| at),
        status: berth_core::ops::RunStatus::Running,
        exit_code: None,
        oom_killed: false,
        error: None,
        created_at: at,
        started_at: Some(at),
        completed_at: None,
        output: Vec::new(),
        dropped_lines: 0,
    }
}

pub async fn runs_are_kept_newest_first_and_a_firing_runs_once(h: &Harness) {
    use berth_core::ops::{RunLine, RunStatus};
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    // An unknown environment is refused and writes nothing.
    let mut bad = run("r0", None, t0);
    bad.environment_name = "nope".into();
    assert!(matches!(
        s.insert_run(&bad).await,
        Err(StoreError::NotFound { .. })
    ));
    let mut one_off = run("r1", None, t0);
    s.insert_run(&one_off).await.unwrap();
    // One-off runs never collide with each other (no job, no firing).
    s.insert_run(&run("r2", None, t0 + Duration::seconds(1)))
        .await
        .unwrap();
    let firing = t0 + Duration::minutes(1);
    s.insert_run(&run("r3", Some("report"), firing))
        .await
        .unwrap();
    // The same firing again, under another id (another server, a restart):
    // refused.
    match s.insert_run(&run("r4", Some("report"), firing)).await {
        Err(StoreError::Conflict { what, .. }) => assert_eq!(what, "run"),
        other => panic!("a second run of one firing was not refused: {other:?}"),
    }
    // The next firing, and the same firing of another job, are fine.
    s.insert_run(&run("r5", Some("report"), firing + Duration::minutes(1)))
        .await
        .unwrap();
    s.insert_run(&run("r6", Some("cleanup"), firing))
        .await
        .unwrap();

    one_off.status = RunStatus::Failed;
    one_off.exit_code = Some(3);
    one_off.completed_at = Some(t0 + Duration::seconds(2));
    one_off.push_line(RunLine {
        ts: t0,
        stream: LogStream::Stderr,
        line: "boom".into(),
    });
    s.save_run(&one_off).await.unwrap();
    assert_eq!(s.get_run("r1").await.unwrap(), one_off);
    assert!(matches!(
        s.get_run("r4").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.save_run(&run("r9", None, t0)).await,
        Err(StoreError::NotFound { .. })
    ));

    let ids = |rs: Vec<berth_core::ops::Run>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = s
        .list_runs(&RunQuery {
            project: Some("shop".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(all), ["r5", "r6", "r3", "r2", "r1"]);
    let report = s
        .list_runs(&RunQuery {
            project: Some("shop".into()),
            job: Some("report".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(report), ["r5", "r3"]);
    let jobs = s
        .list_runs(&RunQuery {
            jobs_only: true,
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(jobs), ["r5", "r6"]);
    let going = s
        .list_runs(&RunQuery {
            unfinished: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!ids(going).contains(&"r1".to_string()));
    let before = s
        .list_runs(&RunQuery {
            job: Some("report".into()),
            created_before: Some(firing + Duration::minutes(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(before), ["r3"]);
    let none = s
        .list_runs(&RunQuery {
            created_before: Some(t0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}

// --- tokens, audit log, console sessions ---

fn token(name: &str, hash_byte: char, role: berth_core::access::Role) -> TokenRecord {
    TokenRecord {
        info: berth_core::access::TokenInfo {
            name: name.into(),
            role,
            project: Some("shop".into()),
            created_at: Utc::now(),
            expires_at: Some(Utc::now() + Duration::days(30)),
            last_used_at: None,
            revoked_at: None,
        },
        hash: hash_byte.to_string().repeat(64),
    }
}

pub async fn tokens_are_kept_by_hash_and_revoked(h: &Harness) {
    use berth_core::access::Role;
    let s = &*h.store;
    let ci = token("ci", 'a', Role::Deployer);
    s.create_token(&ci).await.unwrap();
    let mut viewer = token("look", 'b', Role::Viewer);
    viewer.info.project = None;
    viewer.info.expires_at = None;
    s.create_token(&viewer).await.unwrap();
    // A name or a hash already taken is refused; bad input writes nothing.
    assert!(matches!(
        s.create_token(&token("ci", 'c', Role::Admin)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.create_token(&token("other", 'a', Role::Admin)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.create_token(&token("admin", 'd', Role::Admin)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut bad_hash = token("x", 'e', Role::Admin);
    bad_hash.hash = "the-token-itself".into();
    assert!(matches!(
        s.create_token(&bad_hash).await,
        Err(StoreError::Invalid(_))
    ));
    let all = s.list_tokens().await.unwrap();
    let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ci", "look"]);
    // Timestamps come back as written (to the microsecond).
    let back = s.get_token("ci").await.unwrap();
    assert_eq!(back.role, Role::Deployer);
    assert_eq!(back.project.as_deref(), Some("shop"));
    assert_eq!(
        back.expires_at.unwrap().timestamp_micros(),
        ci.info.expires_at.unwrap().timestamp_micros()
    );
    assert_eq!(
        s.token_by_hash(&"b".repeat(64))
            .await
            .unwrap()
            .unwrap()
            .name,
        "look"
    );
    assert_eq!(s.token_by_hash(&"f".repeat(64)).await.unwrap(), None);

    let used = Utc::now();
    s.touch_token("ci", used).await.unwrap();
    assert_eq!(
        s.get_token("ci")
            .await
            .unwrap()
            .last_used_at
            .unwrap()
            .timestamp_micros(),
        used.timestamp_micros()
    );

    let t1 = Utc::now();
    let r = s.revoke_token("ci", t1).await.unwrap();
    assert_eq!(
        r.revoked_at.unwrap().timestamp_micros(),
        t1.timestamp_micros()
    );
    // A second revoke keeps the first time; the token is still found by
    // its hash, so a refusal can say it was revoked.
    let r2 = s.revoke_token("ci", t1 + Duration::hours(1)).await.unwrap();
    assert_eq!(r2.revoked_at, r.revoked_at);
    let found = s.token_by_hash(&"a".repeat(64)).await.unwrap().unwrap();
    assert_eq!(
        found.dead_at(Utc::now()),
        Some(berth_core::access::TokenDead::Revoked)
    );
    assert!(matches!(
        s.revoke_token("nope", t1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_token("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn audit_log_lists_newest_first_by_project(h: &Harness) {
    let s = &*h.store;
    let t0 = Utc::now();
    for (i, (project, action)) in [
        (Some("shop"), "deploy"),
        (None, "tokens.create"),
        (Some("blog"), "rollback"),
        (Some("shop"), "variables.set"),
    ]
    .into_iter()
    .enumerate()
    {
        s.append_audit(&berth_core::access::AuditEntry {
            at: t0 + Duration::seconds(i as i64),
            token: "ci".into(),
            action: action.into(),
            target: format!("target-{i}"),
            project: project.map(String::from),
            source_ip: "127.0.0.1".into(),
        })
        .await
        .unwrap();
    }
    let all = s.list_audit(&AuditQuery::default()).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["variables.set", "rollback", "tokens.create", "deploy"]
    );
    assert_eq!(all[0].target, "target-3");
    assert_eq!(all[0].source_ip, "127.0.0.1");
    assert_eq!(
        all[3].at.timestamp_micros(),
        t0.timestamp_micros(),
        "time kept to the microsecond"
    );
    let shop = s
        .list_audit(&AuditQuery {
            project: Some("shop".into()),
            limit: None,
        })
        .await
        .unwrap();
    let actions: Vec<_> = shop.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["variables.set", "deploy"]);
    let one = s
        .list_audit(&AuditQuery {
            project: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].action, "variables.set");
}

pub async fn console_sessions_survive_until_they_expire(h: &Harness) {
    let s = &*h.store;
    let now = Utc::now();
    let live = SessionRecord {
        id_hash: "1".repeat(64),
        token: "admin".into(),
        created_at: now,
        expires_at: now + Duration::hours(12),
    };
    s.put_session(&live).await.unwrap();
    let old = SessionRecord {
        id_hash: "2".repeat(64),
        token: "ci".into(),
        created_at: now - Duration::hours(13),
        expires_at: now - Duration::hours(1),
    };
    s.put_session(&old).await.unwrap();
    let got = s.get_session(&live.id_hash, now).await.unwrap().unwrap();
    assert_eq!(got.token, "admin");
    assert_eq!(
        got.expires_at.timestamp_micros(),
        live.expires_at.timestamp_micros()
    );
    assert_eq!(s.get_session(&old.id_hash, now).await.unwrap(), None);
    assert_eq!(
        s.get_session(&live.id_hash, live.expires_at).await.unwrap(),
        None,
        "expired at its expiry time"
    );
    s.remove_session(&live.id_hash).await.unwrap();
    assert_eq!(s.get_session(&live.id_hash, now).await.unwrap(), None);
    s.remove_session("unknown").await.unwrap();
}

// --- volume backups ---

pub(crate) fn backup(
    id: &str,
    env: &str,
    volume: &str,
    at: chrono::DateTime<Utc>,
) -> berth_core::volumes::Backup {
    berth_core::volumes::Backup {
        id: id.into(),
        project_name: "shop".into(),
        environment_name: env.into(),
        volume: volume.into(),
        status: berth_core::volumes::BackupStatus::Running,
        trigger: berth_core::volumes::BackupTrigger::Manual,
        size_bytes: None,
        checksum: None,
        location: None,
        requested_by: "admin".into(),
        error: None,
        created_at: at,
        completed_at: None,
    }
}

pub async fn backups_are_kept_per_volume_newest_first(h: &Harness) {
    use berth_core::volumes::BackupStatus;
    let s = &*h.store;
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    // An unknown project is refused and writes nothing.
    assert!(matches!(
        s.insert_backup(&backup("b0", "production", "uploads", t0))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    s.create_project(new_project("shop")).await.unwrap();
    let mut first = backup("b1", "production", "uploads", t0);
    s.insert_backup(&first).await.unwrap();
    s.insert_backup(&backup(
        "b2",
        "production",
        "uploads",
        t0 + Duration::seconds(1),
    ))
    .await
    .unwrap();
    s.insert_backup(&backup(
        "b3",
        "production",
        "cache",
        t0 + Duration::seconds(2),
    ))
    .await
    .unwrap();
    s.insert_backup(&backup("b4", "pr-1", "uploads", t0 + Duration::seconds(3)))
        .await
        .unwrap();
    match s
        .insert_backup(&backup("b1", "production", "uploads", t0))
        .await
    {
        Err(StoreError::Conflict { what, .. }) => assert_eq!(what, "backup"),
        other => panic!("a taken id was not refused: {other:?}"),
    }

    first.status = BackupStatus::Succeeded;
    first.size_bytes = Some(1234);
    first.checksum = Some(format!("sha256:{}", "ab".repeat(32)));
    first.location = Some("/data/backups/shop/production/uploads/b1.tar.gz".into());
    first.completed_at = Some(t0 + Duration::seconds(5));
    s.save_backup(&first).await.unwrap();
    assert_eq!(s.get_backup("b1").await.unwrap(), first);
    assert!(matches!(
        s.save_backup(&backup("b9", "production", "uploads", t0))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_backup("b9").await,
        Err(StoreError::NotFound { .. })
    ));

    let ids =
        |bs: Vec<berth_core::volumes::Backup>| bs.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_backups("shop", None, None).await.unwrap()),
        ["b4", "b3", "b2", "b1"]
    );
    assert_eq!(
        ids(s
            .list_backups("shop", Some("production"), Some("uploads"))
            .await
            .unwrap()),
        ["b2", "b1"]
    );
    assert_eq!(
        ids(s
            .list_backups("shop", Some("production"), None)
            .await
            .unwrap()),
        ["b3", "b2", "b1"]
    );
    assert!(s
        .list_backups("other", None, None)
        .await
        .unwrap()
        .is_empty());

    s.delete_backup("b2").await.unwrap();
    s.delete_backup("b2").await.unwrap();
    assert_eq!(
        ids(s
            .list_backups("shop", Some("production"), Some("uploads"))
            .await
            .unwrap()),
        ["b1"]
    );
}

// --- notifications ---
pub(crate) fn delivery(
    id: &str,
    notification: &str,
    deployment: &str,
    event: berth_core::notify::NotifyEvent,
    at: chrono::DateTime<Utc>,
) -> berth_core::notify::Delivery {
    berth_core::notify::Delivery {
        id: id.into(),
        notification_id: notification.into(),
        project_name: "shop".into(),
        deployment_id: deployment.into(),
        event,
        status: berth_core::notify::DeliveryStatus::Pending,
        attempts: Vec::new(),
        next_attempt_at: Some(at),
        created_at: at,
        body: format!("{{\"event\":\"{event}\"}}"),
    }
}

pub async fn notifications_are_sealed_and_each_event_is_queued_once(h: &Harness) {
    use berth_core::notify::{Attempt, DeliveryStatus, Notification, NotifyEvent};
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let url = "https://hooks.example.com/services/T000/B000/path-that-is-a-secret";
    let secret = "notify-signing-secret-that-must-not-leak";
    let n = Notification {
        id: "n1".into(),
        project_name: "shop".into(),
        url: "https://hooks.example.com/…".into(),
        events: vec![NotifyEvent::Failed],
        created_at: t0,
    };
    let target = NotifyTarget {
        url: url.into(),
        secret: secret.into(),
    };
    let mut orphan = n.clone();
    orphan.project_name = "nope".into();
    assert!(matches!(
        s.add_notification(&orphan, &target).await,
        Err(StoreError::NotFound { .. })
    ));
    s.add_notification(&n, &target).await.unwrap();
    assert!(matches!(
        s.add_notification(&n, &target).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut other = n.clone();
    other.id = "n2".into();
    other.created_at = t0 + Duration::seconds(1);
    s.add_notification(&other, &target).await.unwrap();
    assert_eq!(
        s.list_notifications(Some("shop")).await.unwrap(),
        [n.clone(), other]
    );
    assert!(s.list_notifications(Some("nope")).await.unwrap().is_empty());
    assert_eq!(s.list_notifications(None).await.unwrap().len(), 2);
    assert_eq!(s.notification_target("n1").await.unwrap(), target);
    assert!(!format!("{target:?}").contains("path-that-is-a-secret"));
    assert!(matches!(
        s.notification_target("n9").await,
        Err(StoreError::NotFound { .. })
    ));
    let bytes = h.dump();
    assert!(
        contains(&bytes, "hooks.example.com/…"),
        "the dump must see the data"
    );
    assert!(!contains(&bytes, "path-that-is-a-secret"));
    assert!(!contains(&bytes, secret));

    // One delivery per (endpoint, deployment, event), whoever queues it.
    let first = delivery("q1", "n1", "d1", NotifyEvent::Failed, t0);
    assert!(s.queue_delivery(&first).await.unwrap());
    assert!(!s
        .queue_delivery(&delivery("q2", "n1", "d1", NotifyEvent::Failed, t0))
        .await
        .unwrap());
    assert!(s
        .queue_delivery(&delivery(
            "q3",
            "n1",
            "d1",
            NotifyEvent::Regressed,
            t0 + Duration::seconds(5)
        ))
        .await
        .unwrap());
    assert!(s
        .queue_delivery(&delivery(
            "q4",
            "n2",
            "d1",
            NotifyEvent::Failed,
            t0 + Duration::seconds(2)
        ))
        .await
        .unwrap());
    let ids =
        |ds: Vec<berth_core::notify::Delivery>| ds.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .due_deliveries(t0 + Duration::seconds(2), 10)
            .await
            .unwrap()),
        ["q1", "q4"]
    );
    assert_eq!(
        ids(s
            .due_deliveries(t0 + Duration::seconds(9), 1)
            .await
            .unwrap()),
        ["q1"]
    );

    // An attempt that failed is retried later; a delivered one is never due again.
    let mut d = first.clone();
    d.record(Attempt {
        at: t0,
        status_code: None,
        error: Some("connection refused".into()),
        duration_ms: 1,
    });
    s.save_delivery(&d).await.unwrap();
    assert_eq!(
        ids(s
            .due_deliveries(t0 + Duration::seconds(9), 10)
            .await
            .unwrap()),
        ["q4", "q3"]
    );
    assert_eq!(
        ids(s
            .due_deliveries(t0 + Duration::seconds(10), 10)
            .await
            .unwrap()),
        ["q4", "q3", "q1"]
    );
    d.record(Attempt {
        at: t0 + Duration::seconds(10),
        status_code: Some(204),
        error: None,
        duration_ms: 3,
    });
    s.save_delivery(&d).await.unwrap();
    assert_eq!(
        ids(s.due_deliveries(t0 + Duration::hours(2), 10).await.unwrap()),
        ["q4", "q3"]
    );
    let listed = s.notification_deliveries("n1", 10).await.unwrap();
    assert_eq!(ids(listed.clone()), ["q3", "q1"]);
    assert_eq!(listed[1], d);
    assert_eq!(listed[1].status, DeliveryStatus::Delivered);
    assert_eq!(listed[1].attempts.len(), 2);

    // Removing an endpoint takes its deliveries; another project's never.
    assert!(!s.remove_notification("other", "n1").await.unwrap());
    assert!(s.remove_notification("shop", "n1").await.unwrap());
    assert!(!s.remove_notification("shop", "n1").await.unwrap());
    assert!(s
        .notification_deliveries("n1", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s.due_deliveries(t0 + Duration::hours(2), 10).await.unwrap()),
        ["q4"]
    );
    assert!(matches!(
        s.save_delivery(&d).await,
        Err(StoreError::NotFound { .. })
    ));
}

// --- maintenance ---
pub async fn maintenance_is_kept_per_environment_and_service(h: &Harness) {
    use berth_core::model::{in_maintenance, Maintenance};
    let s = &*h.store;
    s.create_project(new_project("shop")).await.unwrap();
    s.create_project(new_project("blog")).await.unwrap();
    s.create_environment(Environment {
        project_name: "shop".into(),
        name: "staging".into(),
        branch: None,
        kind: EnvironmentKind::Branch,
        created_at: Utc::now(),
    })
    .await
    .unwrap();
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let m = |p: &str, e: &str, svc: Option<&str>, at| Maintenance {
        project_name: p.into(),
        environment_name: e.into(),
        service_name: svc.map(Into::into),
        since: at,
    };
    assert!(s.list_maintenance(None).await.unwrap().is_empty());
    assert!(matches!(
        s.set_maintenance(&m("shop", "nope", None, t0)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_maintenance(&m("nope", "production", None, t0)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.clear_maintenance("shop", "nope", None).await,
        Err(StoreError::NotFound { .. })
    ));
    s.set_maintenance(&m("shop", "production", Some("api"), t0))
        .await
        .unwrap();
    s.set_maintenance(&m("shop", "production", None, t0))
        .await
        .unwrap();
    // again: the first time is kept
    s.set_maintenance(&m("shop", "production", None, t0 + Duration::seconds(9)))
        .await
        .unwrap();
    s.set_maintenance(&m("shop", "staging", Some("web"), t0))
        .await
        .unwrap();
    s.set_maintenance(&m("blog", "production", None, t0))
        .await
        .unwrap();
    let shop = s.list_maintenance(Some("shop")).await.unwrap();
    assert_eq!(
        shop,
        [
            m("shop", "production", None, t0),
            m("shop", "production", Some("api"), t0),
            m("shop", "staging", Some("web"), t0),
        ]
    );
    assert_eq!(s.list_maintenance(None).await.unwrap().len(), 4);
    assert!(in_maintenance(&shop, "shop", "production", "web"));
    assert!(!in_maintenance(&shop, "shop", "staging", "api"));

    // Off for one service leaves the rest; off for the environment clears it all.
    assert_eq!(
        s.clear_maintenance("shop", "staging", Some("api"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.clear_maintenance("shop", "production", Some("api"))
            .await
            .unwrap(),
        1
    );
    s.set_maintenance(&m("shop", "production", Some("worker"), t0))
        .await
        .unwrap();
    assert_eq!(
        s.clear_maintenance("shop", "production", None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.list_maintenance(Some("shop")).await.unwrap(),
        [m("shop", "staging", Some("web"), t0)]
    );
    // An environment deleted takes its maintenance with it.
    s.delete_environment("shop", "staging").await.unwrap();
    assert!(s.list_maintenance(Some("shop")).await.unwrap().is_empty());
    assert_eq!(
        s.list_maintenance(None).await.unwrap(),
        [m("blog", "production", None, t0)]
    );
}

// --- copy-store ---
pub async fn session_records_are_the_unexpired_sessions(h: &Harness) {
    let s = &*h.store;
    let now = Utc::now();
    assert!(s.session_records(now).await.unwrap().is_empty());
    let rec = |id: char, created: i64, expires: i64| SessionRecord {
        id_hash: id.to_string().repeat(64),
        token: format!("t{id}"),
        created_at: now + Duration::hours(created),
        expires_at: now + Duration::hours(expires),
    };
    // Created out of order; one expired by `now` (put last: a put forgets
    // the sessions expired by its own creation time, this one is kept).
    let expired = rec('3', -20, -1);
    let newer = rec('1', -1, 11);
    let older = rec('2', -5, 7);
    for r in [&newer, &older, &expired] {
        s.put_session(r).await.unwrap();
    }
    let got = s.session_records(now).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(ids, ["t2", "t1"], "the unexpired ones, oldest first");
    assert_eq!(
        got[0].expires_at.timestamp_micros(),
        older.expires_at.timestamp_micros()
    );
    // At a later time, fewer are live.
    let later = s.session_records(now + Duration::hours(8)).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].token, "t1");
}

pub async fn dns_update_keys_are_sealed_and_the_certificates_stamp_moves_on_every_write(
    h: &Harness,
) {
    let s = &*h.store;
    let empty = s.certificates_stamp().await.unwrap();
    assert_eq!(s.dns_update_key("127.0.0.1:53").await.unwrap(), None);
    let key = "berth-acme:hmac-sha256:VFNJRy1TRUNSRVQtSU4tQ0xFQVI=";
    s.put_dns_update_key("127.0.0.1:53", key).await.unwrap();
    assert_eq!(
        s.dns_update_key("127.0.0.1:53").await.unwrap().as_deref(),
        Some(key)
    );
    assert_eq!(s.dns_update_key("127.0.0.1:54").await.unwrap(), None);
    // Given again (a new secret): replaced.
    let key2 = "berth-acme:hmac-sha512:TkVXLVNFQ1JFVA==";
    s.put_dns_update_key("127.0.0.1:53", key2).await.unwrap();
    assert_eq!(
        s.dns_update_key("127.0.0.1:53").await.unwrap().as_deref(),
        Some(key2)
    );
    assert_eq!(
        s.list_dns_update_servers().await.unwrap(),
        vec!["127.0.0.1:53".to_string()]
    );
    let bytes = h.dump();
    assert!(!contains(&bytes, "VFNJRy1TRUNSRVQtSU4tQ0xFQVI="));
    assert!(!contains(&bytes, "TkVXLVNFQ1JFVA=="));

    // The stamp moves when a record is written, rewritten or removed.
    let rec = CertRecord {
        hostname: "*.berth.test".into(),
        state: CertState::Pending,
        chain_pem: None,
        key_pem: None,
        not_after: None,
        error: None,
        attempts: 0,
        next_attempt_at: None,
        updated_at: Utc::now(),
    };
    s.put_certificate(&rec).await.unwrap();
    let one = s.certificates_stamp().await.unwrap();
    assert_ne!(one, empty);
    assert_eq!(
        s.certificates_stamp().await.unwrap(),
        one,
        "stable when nothing is written"
    );
    s.put_certificate(&CertRecord {
        state: CertState::Failed,
        updated_at: rec.updated_at + Duration::milliseconds(5),
        ..rec.clone()
    })
    .await
    .unwrap();
    let two = s.certificates_stamp().await.unwrap();
    assert_ne!(two, one);
    assert!(s.remove_certificate("*.berth.test").await.unwrap());
    assert_ne!(s.certificates_stamp().await.unwrap(), two);
}

// --- fencing of leader writes ---
/// A deposed leader's write of every kind is refused whole and writes
/// nothing; the leader's own (and an API's unfenced) writes go through. A
/// store without a cluster (SQLite) has no lease: it refuses the heartbeat
/// and fences nothing.
pub async fn a_deposed_leaders_writes_of_every_kind_are_refused(h: &Harness) {
    use berth_core::notify::{Notification, NotifyEvent};
    use berth_store::cluster::{fenced, Fence};
    let s = &*h.store;
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    s.create_project(new_project("shop")).await.unwrap();
    let mut d = deployment("d1", "shop", t0);
    s.insert_deployment(&d).await.unwrap();
    let line = |text: &str| NewLogLine {
        deployment_id: "d1".into(),
        ts: t0,
        stream: LogStream::Berth,
        step: None,
        text: text.into(),
    };
    let cert = |host: &str| CertRecord {
        hostname: host.into(),
        state: CertState::Issued,
        chain_pem: Some("chain".into()),
        key_pem: Some("key".into()),
        not_after: Some(t0),
        error: None,
        attempts: 0,
        next_attempt_at: None,
        updated_at: t0,
    };
    let ttl = std::time::Duration::from_millis(400);
    if !s.clustered() {
        assert!(matches!(
            s.heartbeat("a", "http://a", ttl).await,
            Err(StoreError::Invalid(_))
        ));
        let any = Some(Fence {
            member: "a".into(),
            epoch: 1,
        });
        fenced(any, s.append_logs(&[line("one server")]))
            .await
            .unwrap();
        return;
    }

    // Written before, unfenced (as an API request would).
    s.append_logs(&[line("kept")]).await.unwrap();
    s.put_certificate(&cert("old.example.com")).await.unwrap();
    let mut r = run("r1", Some("report"), t0);
    s.insert_run(&r).await.unwrap();
    let mut b = backup("b1", "production", "uploads", t0);
    s.insert_backup(&b).await.unwrap();
    let n = Notification {
        id: "n1".into(),
        project_name: "shop".into(),
        url: "https://hooks.example.com/…".into(),
        events: vec![NotifyEvent::Failed],
        created_at: t0,
    };
    let target = NotifyTarget {
        url: "https://hooks.example.com/x".into(),
        secret: "whsec".into(),
    };
    s.add_notification(&n, &target).await.unwrap();
    let mut q = delivery("q1", "n1", "d1", NotifyEvent::Failed, t0);
    assert!(s.queue_delivery(&q).await.unwrap());

    // "a" leads, then stops renewing; "b" takes the lease under a new epoch.
    let la = s.heartbeat("a", "http://a", ttl).await.unwrap();
    assert!(la.mine, "{la:?}");
    tokio::time::sleep(ttl + std::time::Duration::from_millis(200)).await;
    let lb = s.heartbeat("b", "http://b", ttl * 20).await.unwrap();
    assert!(lb.mine && lb.epoch == la.epoch + 1, "{lb:?}");
    let old = Some(Fence {
        member: "a".into(),
        epoch: la.epoch,
    });
    let new = Some(Fence {
        member: "b".into(),
        epoch: lb.epoch,
    });
    macro_rules! refused {
        ($what:expr, $write:expr) => {
            match fenced(old.clone(), $write).await {
                Err(StoreError::Fenced { epoch }) => assert_eq!(epoch, la.epoch, "{}", $what),
                other => panic!(
                    "{}: a deposed leader's write was not refused: {other:?}",
                    $what
                ),
            }
        };
    }
    refused!("log lines", s.append_logs(&[line("late"), line("later")]));
    refused!("certificate", s.put_certificate(&cert("new.example.com")));
    refused!(
        "certificate removal",
        s.remove_certificate("old.example.com")
    );
    refused!("acme account", s.put_acme_account("https://acme/dir", "{}"));
    refused!(
        "run insert",
        s.insert_run(&run("r2", Some("report"), t0 + Duration::minutes(1)))
    );
    r.status = berth_core::ops::RunStatus::Failed;
    refused!("run save", s.save_run(&r));
    let mut d2 = deployment("d2", "shop", t0);
    refused!("deployment insert", s.insert_deployment(&d2));
    d.status = Status::Running;
    refused!("deployment save", s.save_deployments(&mut [&mut d], None));
    refused!("manifest", s.put_manifest("img:1", &[], t0));
    refused!("log retention", s.prune_logs(t0 + Duration::days(1), 0));
    refused!(
        "backup insert",
        s.insert_backup(&backup("b2", "production", "uploads", t0))
    );
    b.status = berth_core::volumes::BackupStatus::Failed;
    refused!("backup save", s.save_backup(&b));
    refused!("backup removal", s.delete_backup("b1"));
    refused!(
        "delivery queue",
        s.queue_delivery(&delivery("q2", "n1", "d1", NotifyEvent::Succeeded, t0))
    );
    q.status = berth_core::notify::DeliveryStatus::Failed;
    refused!("delivery save", s.save_delivery(&q));

    // Nothing of it landed.
    let lines = s
        .read_logs(&LogQuery {
            deployment_id: Some("d1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["kept"]
    );
    assert!(s
        .get_certificate("new.example.com")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .get_certificate("old.example.com")
        .await
        .unwrap()
        .is_some());
    assert!(s.acme_account("https://acme/dir").await.unwrap().is_none());
    assert_eq!(
        s.get_run("r1").await.unwrap().status,
        berth_core::ops::RunStatus::Running
    );
    assert!(s.get_run("r2").await.is_err());
    assert!(s.get_deployment("d2").await.is_err());
    let stored = s.get_deployment("d1").await.unwrap();
    assert_eq!((stored.status, stored.version), (Status::Queued, 0));
    assert!(s.get_manifest("img:1").await.unwrap().is_none());
    assert_eq!(
        s.get_backup("b1").await.unwrap().status,
        berth_core::volumes::BackupStatus::Running
    );
    assert!(s.get_backup("b2").await.is_err());
    let qs = s.notification_deliveries("n1", 10).await.unwrap();
    assert_eq!(qs.len(), 1);
    assert_eq!(qs[0].status, berth_core::notify::DeliveryStatus::Pending);

    // The leader's writes under its fence go through.
    fenced(new.clone(), s.append_logs(&[line("leader")]))
        .await
        .unwrap();
    fenced(new.clone(), s.put_certificate(&cert("new.example.com")))
        .await
        .unwrap();
    fenced(
        new.clone(),
        s.insert_run(&run("r2", Some("report"), t0 + Duration::minutes(1))),
    )
    .await
    .unwrap();
    fenced(new.clone(), s.insert_deployment(&d2)).await.unwrap();
    d2.status = Status::Running;
    fenced(new, s.save_deployments(&mut [&mut d2], None))
        .await
        .unwrap();
    assert!(s
        .get_certificate("new.example.com")
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.get_deployment("d2").await.unwrap().status,
        Status::Running
    );
    s.release_lease("b").await.unwrap();
}

// --- charts: per-minute traffic rollup ---
/// Minutes come back per service, oldest first, from `since` on; writing a
/// (deployment, minute) again replaces it; pruning removes only older
/// minutes.
pub async fn metric_minutes_are_kept_per_service_replaced_and_pruned(h: &Harness) {
    let s = &*h.store;
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let m = |dep: &str, svc: &str, min: i64, requests: u64, errors: u64, p95: Option<f64>| {
        MetricMinute {
            deployment_id: dep.into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: svc.into(),
            minute: t0 + Duration::minutes(min),
            requests,
            errors,
            p95_ms: p95,
            ..Default::default()
        }
    };
    assert!(s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap()
        .is_empty());
    s.put_metric_minutes(&[
        m("d2", "web", 1, 50, 0, Some(12.5)),
        m("d1", "web", 0, 100, 3, Some(40.25)),
        m("d1", "web", 1, 20, 1, Some(41.0)),
        m("a1", "api", 1, 7, 0, Some(3.0)),
        m("d1", "web", 2, 0, 0, None),
    ])
    .await
    .unwrap();
    let web = s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap();
    assert_eq!(
        web,
        [
            m("d1", "web", 0, 100, 3, Some(40.25)),
            m("d1", "web", 1, 20, 1, Some(41.0)),
            m("d2", "web", 1, 50, 0, Some(12.5)),
            m("d1", "web", 2, 0, 0, None),
        ]
    );
    // Another environment, another service: not in this list.
    assert!(s
        .list_metric_minutes("shop", "staging", "web", t0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.list_metric_minutes("shop", "production", "api", t0)
            .await
            .unwrap(),
        [m("a1", "api", 1, 7, 0, Some(3.0))]
    );
    // The current minute is rewritten as it fills.
    s.put_metric_minutes(&[m("d1", "web", 1, 35, 2, Some(45.5))])
        .await
        .unwrap();
    let since_1 = s
        .list_metric_minutes("shop", "production", "web", t0 + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        since_1,
        [
            m("d1", "web", 1, 35, 2, Some(45.5)),
            m("d2", "web", 1, 50, 0, Some(12.5)),
            m("d1", "web", 2, 0, 0, None),
        ]
    );
    // Pruning: only minutes strictly before the cut go.
    assert_eq!(
        s.prune_metric_minutes(t0 + Duration::minutes(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.list_metric_minutes("shop", "production", "web", t0)
            .await
            .unwrap(),
        since_1
    );
    assert_eq!(
        s.prune_metric_minutes(t0 + Duration::minutes(10))
            .await
            .unwrap(),
        4
    );
    assert!(s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap()
        .is_empty());
}

/// Every server writes its own rows (member id): a reader gets one row per
/// deployment and minute, requests and errors summed and p95 taken from
/// the summed histograms (not from either member's p95); a member
/// rewriting its minute replaces only its own row; pruning removes every
/// member's old rows.
pub async fn metric_minutes_of_several_members_are_summed_with_p95_of_the_merged_histogram(
    h: &Harness,
) {
    use berth_store::rollup;
    let s = &*h.store;
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    // Buckets 1 ms wide up to 400 ms; `(ms, n)` puts n requests in the
    // bucket ending at ms.
    let hist = |parts: &[(usize, u64)]| {
        let mut counts = vec![0u64; 400];
        for (ms, n) in parts {
            counts[ms - 1] += n;
        }
        let mut acc = 0;
        let dense: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                acc += c;
                ((i + 1) as f64 / 1000.0, acc)
            })
            .collect();
        rollup::sparse(&dense)
    };
    let m = |member: &str, min: i64, requests: u64, errors: u64, latency: Vec<(f64, u64)>| {
        MetricMinute {
            deployment_id: "d1".into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
            member: member.into(),
            minute: t0 + Duration::minutes(min),
            requests,
            errors,
            p95_ms: rollup::p95_ms(&latency),
            latency,
        }
    };
    // Member a served 90 fast requests (2 ms), b 10 slow ones (300 ms).
    let a0 = m("a", 0, 90, 1, hist(&[(2, 90)]));
    let b0 = m("b", 0, 10, 4, hist(&[(300, 10)]));
    assert!(a0.p95_ms.unwrap() <= 2.0 && b0.p95_ms.unwrap() > 299.0);
    s.put_metric_minutes(&[a0.clone(), b0.clone(), m("a", 1, 5, 0, hist(&[(7, 5)]))])
        .await
        .unwrap();
    let rows = s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let first = &rows[0];
    assert_eq!(
        (
            first.minute,
            first.requests,
            first.errors,
            first.member.as_str()
        ),
        (t0, 100, 5, "")
    );
    // 95 of 100 requests: the rank lies among b's slow ones.
    let p95 = first.p95_ms.unwrap();
    assert!(p95 > 299.0 && p95 <= 300.0, "{p95}");
    assert_eq!(first.latency.last().unwrap().1, 100);
    // A minute only one member saw is that member's.
    assert_eq!((rows[1].requests, rows[1].member.as_str()), (5, ""));
    assert!(rows[1].p95_ms.unwrap() > 6.0 && rows[1].p95_ms.unwrap() <= 7.0);

    // b rewrites its minute as it fills: a's part stays.
    s.put_metric_minutes(&[m("b", 0, 30, 4, hist(&[(300, 30)]))])
        .await
        .unwrap();
    let rows = s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap();
    assert_eq!((rows[0].requests, rows[0].errors), (120, 5));
    // 114 of 120 requests: 90 fast, so the rank is well inside the slow ones.
    assert!(rows[0].p95_ms.unwrap() > 299.0);

    // A row written before members were kept (no member, no histogram)
    // still counts.
    s.put_metric_minutes(&[MetricMinute {
        latency: Vec::new(),
        p95_ms: Some(50.0),
        ..m("", 2, 8, 0, Vec::new())
    }])
    .await
    .unwrap();
    let rows = s
        .list_metric_minutes("shop", "production", "web", t0 + Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].p95_ms), (8, Some(50.0)));

    // Pruning takes every member's old minutes.
    assert_eq!(
        s.prune_metric_minutes(t0 + Duration::minutes(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.list_metric_minutes("shop", "production", "web", t0)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// After the upgrade that keys `metric_minutes` by member: a row written
/// before it (for deployment d1 of shop/production/web at `t0`: 40
/// requests, 2 errors, p95 12.5 ms) is listed, and a member's row of the
/// same minute adds to it. The upgrade test of each backend writes the row.
pub async fn a_minute_from_before_members_counts(s: &dyn Store, t0: chrono::DateTime<Utc>) {
    let rows = s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].requests, rows[0].errors, rows[0].p95_ms),
        (40, 2, Some(12.5))
    );
    s.put_metric_minutes(&[MetricMinute {
        member: "m1".into(),
        requests: 10,
        ..rows[0].clone()
    }])
    .await
    .unwrap();
    let rows = s
        .list_metric_minutes("shop", "production", "web", t0)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].requests, 50);
}

// --- pushed repositories, cancel requests (cluster) ---
/// A pushed repository's bundle is saved only over the version the pusher
/// started from (a second server's push in between is refused, nothing
/// written), and a cancel request is kept once
/// until the leader clears it.
pub async fn pushed_repos_are_compare_and_set_and_cancel_requests_kept_once(h: &Harness) {
    let s = &*h.store;
    assert!(matches!(
        s.put_pushed_repo("shop", 0, b"x").await,
        Err(StoreError::NotFound { .. })
    ));
    s.create_project(new_project("shop")).await.unwrap();
    assert_eq!(s.pushed_repo_version("shop").await.unwrap(), 0);
    assert_eq!(s.pushed_repo("shop").await.unwrap(), None);
    let one: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    assert_eq!(s.put_pushed_repo("shop", 0, &one).await.unwrap(), Some(1));
    assert_eq!(s.pushed_repo_version("shop").await.unwrap(), 1);
    assert_eq!(s.pushed_repo("shop").await.unwrap(), Some((1, one.clone())));
    // Two servers both started from version 1: the first save wins, the
    // second is refused and writes nothing.
    assert_eq!(s.put_pushed_repo("shop", 1, b"two").await.unwrap(), Some(2));
    assert_eq!(s.put_pushed_repo("shop", 1, b"late").await.unwrap(), None);
    assert_eq!(s.put_pushed_repo("shop", 0, b"late").await.unwrap(), None);
    assert_eq!(
        s.pushed_repo("shop").await.unwrap(),
        Some((2, b"two".to_vec()))
    );
    assert_eq!(s.pushed_repo_projects().await.unwrap(), vec!["shop"]);
    // Saves racing from one version: exactly one lands.
    let racers = (0..4).map(|i| {
        let st = h.store.clone();
        tokio::spawn(async move { st.put_pushed_repo("shop", 2, &[i]).await.unwrap() })
    });
    let mut landed = 0;
    for r in racers {
        if r.await.unwrap().is_some() {
            landed += 1;
        }
    }
    assert_eq!(landed, 1);
    assert_eq!(s.pushed_repo_version("shop").await.unwrap(), 3);

    // Cancel requests.
    assert!(matches!(
        s.request_cancel("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let a = deployment("a", "shop", Utc::now());
    let mut b = deployment("b", "shop", Utc::now());
    b.service_name = "worker".into();
    s.insert_deployment(&a).await.unwrap();
    s.insert_deployment(&b).await.unwrap();
    assert!(s.cancel_requests().await.unwrap().is_empty());
    s.request_cancel("a").await.unwrap();
    s.request_cancel("b").await.unwrap();
    s.request_cancel("a").await.unwrap();
    assert_eq!(s.cancel_requests().await.unwrap(), vec!["a", "b"]);
    s.clear_cancel_request("a").await.unwrap();
    s.clear_cancel_request("a").await.unwrap();
    assert_eq!(s.cancel_requests().await.unwrap(), vec!["b"]);
}

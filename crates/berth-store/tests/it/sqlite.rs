//! The SQLite backend: the contract on real files, and what is particular
//! to one file (reopening, the WAL, older files).

use crate::contract::Harness;
use crate::{all_bytes, contains, deployment, new_project};
use berth_core::model::*;
use berth_store::*;
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, Cipher::load(dir, None).unwrap()).unwrap()
}

async fn harness() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    Some(Harness {
        store: Arc::new(open(dir.path())),
        dump: Box::new(move || all_bytes(&path)),
        _guard: Box::new(dir),
    })
}

mod contract {
    crate::contract_tests!(super::harness);
}

#[tokio::test]
async fn versions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.create_project(new_project("shop")).await.unwrap();
        let mut d = deployment("a", "shop", Utc::now());
        s.insert_deployment(&d).await.unwrap();
        d.failure_message = Some("x".into());
        s.save_deployments(&mut [&mut d], None).await.unwrap();
        assert_eq!(d.version, 1);
    }
    let s = open(dir.path());
    let mut d = s.get_deployment("a").await.unwrap();
    assert_eq!(d.version, 1);
    let mut stale = d.clone();
    s.save_deployments(&mut [&mut d], None).await.unwrap();
    assert!(s
        .save_deployments(&mut [&mut stale], None)
        .await
        .unwrap_err()
        .is_stale());
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
async fn secrets_never_reach_the_disk_in_clear_wal_included() {
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

/// The charts' rows written before members were kept (one per deployment
/// and minute, no member, no histogram) are still listed after the
/// upgrade, and a member's row then adds to them.
#[tokio::test]
async fn metric_minutes_written_before_members_were_kept_survive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    {
        // The table as it was before members were kept, with a row; then
        // the migration that keeps members.
        let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch(&format!(
            "DROP TABLE metric_minutes; {}",
            include_str!("../../migrations/0014_metric_minutes.sql")
        ))
        .unwrap();
        c.execute(
            "INSERT INTO metric_minutes (deployment_id, project, environment, service, minute, \
             requests, errors, p95_ms) VALUES ('d1', 'shop', 'production', 'web', ?1, 40, 2, 12.5)",
            [t0.timestamp()],
        )
        .unwrap();
        c.execute_batch(include_str!("../../migrations/0016_metric_members.sql"))
            .unwrap();
    }
    let s = open(dir.path());
    crate::contract::a_minute_from_before_members_counts(&s, t0).await;
}

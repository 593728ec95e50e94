//! The PostgreSQL backend: the contract against a real server
//! (`berth_store::testpg`: `BERTH_TEST_POSTGRES_URL`, or a private cluster
//! started with initdb), and what is particular to a shared database.

use crate::contains;
use crate::contract::Harness;
use crate::new_project;
use berth_store::*;
use std::sync::Arc;

async fn harness() -> Option<Harness> {
    let base = testpg::require()?;
    let url = testpg::fresh_database(&base).await;
    let store = PgStore::connect(&url, Cipher::from_key([9; 32]))
        .await
        .unwrap();
    Some(Harness {
        store: Arc::new(store),
        dump: Box::new(move || testpg::dump(&url)),
        _guard: Box::new(()),
    })
}

mod contract {
    crate::contract_tests!(super::harness);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_at_once_migrate_once_and_share_the_data() {
    let Some(base) = testpg::require() else {
        return;
    };
    let url = testpg::fresh_database(&base).await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            PgStore::connect(&url, Cipher::from_key([5; 32])).await
        }));
    }
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every server starts"));
    }
    stores[0].create_project(new_project("shop")).await.unwrap();
    assert_eq!(stores[3].list_projects().await.unwrap()[0].name, "shop");
    assert_eq!(
        stores[2].webhook_secret("shop").await.unwrap().as_deref(),
        Some("whsec-very-secret-1")
    );
    let dump = testpg::dump(&url);
    assert!(contains(&dump, "shop"));
    assert!(!contains(&dump, "whsec-very-secret-1"));
}

#[tokio::test]
async fn a_different_master_key_is_refused_at_start() {
    let Some(base) = testpg::require() else {
        return;
    };
    let url = testpg::fresh_database(&base).await;
    PgStore::connect(&url, Cipher::from_key([1; 32]))
        .await
        .unwrap();
    let e = PgStore::connect(&url, Cipher::from_key([2; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("master key does not open"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    PgStore::connect(&url, Cipher::from_key([1; 32]))
        .await
        .expect("the same key opens it again");
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_naming_the_host() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://berth:pw-never-shown@127.0.0.1:{port}/berth");
    let e = PgStore::connect(&url, Cipher::from_key([1; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.contains("cannot connect to PostgreSQL"), "{e}");
    assert!(!e.contains("pw-never-shown"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = PgStore::connect(
        "postgres://db.example:notaport/x",
        Cipher::from_key([1; 32]),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("invalid PostgreSQL URL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_a_lease_that_moves_when_it_expires_and_fenced_writes() {
    use berth_store::cluster::{fenced, Fence};
    use std::time::Duration;
    let Some(base) = testpg::require() else {
        return;
    };
    let url = testpg::fresh_database(&base).await;
    let a = PgStore::connect(&url, Cipher::from_key([3; 32]))
        .await
        .unwrap();
    let b = PgStore::connect(&url, Cipher::from_key([3; 32]))
        .await
        .unwrap();
    let ttl = Duration::from_millis(1500);
    let la = a.heartbeat("a", "http://a", ttl).await.unwrap();
    assert!(la.mine, "{la:?}");
    assert_eq!(la.epoch, 1);
    let lb = b.heartbeat("b", "http://b", ttl).await.unwrap();
    assert!(!lb.mine, "{lb:?}");
    assert_eq!(lb.holder.as_deref(), Some("a"));
    // Renewing keeps the epoch.
    assert_eq!(a.heartbeat("a", "http://a", ttl).await.unwrap().epoch, 1);
    let members = b.cluster_members().await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members[0].is_leader && members[0].id == "a", "{members:?}");
    assert!(!members[1].is_leader, "{members:?}");
    assert_eq!(members[1].api_url, "http://b");

    // The leader writes under its fence.
    a.create_project(new_project("shop")).await.unwrap();
    let mut d = crate::deployment("d1", "shop", chrono::Utc::now());
    a.insert_deployment(&d).await.unwrap();
    let fence_a = Some(Fence {
        member: "a".into(),
        epoch: 1,
    });
    d.status = berth_core::state::Status::Running;
    fenced(fence_a.clone(), a.save_deployments(&mut [&mut d], None))
        .await
        .expect("the leader's write");

    // a stops renewing; b takes the lease with a new epoch.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let lb = b.heartbeat("b", "http://b", ttl).await.unwrap();
    assert!(lb.mine, "{lb:?}");
    assert_eq!(lb.epoch, 2);
    let la = a.heartbeat("a", "http://a", ttl).await.unwrap();
    assert!(!la.mine && la.holder.as_deref() == Some("b"), "{la:?}");

    // The old leader wakes up: its write under epoch 1 is refused, nothing written.
    let before = b.get_deployment("d1").await.unwrap();
    d.status = berth_core::state::Status::Failed;
    let e = fenced(fence_a, a.save_deployments(&mut [&mut d], None))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { epoch: 1 }), "{e}");
    assert!(e.to_string().contains("no longer the leader"), "{e}");
    let after = b.get_deployment("d1").await.unwrap();
    assert_eq!(after.status, berth_core::state::Status::Running);
    assert_eq!(after.version, before.version);
    // The new leader's write goes through; an unfenced (API) write too.
    let mut fresh = after.clone();
    fresh.status = berth_core::state::Status::Failed;
    fenced(
        Some(Fence {
            member: "b".into(),
            epoch: 2,
        }),
        b.save_deployments(&mut [&mut fresh], None),
    )
    .await
    .unwrap();
    let mut again = b.get_deployment("d1").await.unwrap();
    a.save_deployments(&mut [&mut again], None).await.unwrap();

    // A clean stop hands the lease over at once.
    b.release_lease("b").await.unwrap();
    let la = a.heartbeat("a", "http://a", ttl).await.unwrap();
    assert!(la.mine && la.epoch == 3, "{la:?}");

    // One engine identity for every server: the first claimant's.
    assert_eq!(
        a.engine_identity("first").await.unwrap().as_deref(),
        Some("first")
    );
    assert_eq!(
        b.engine_identity("second").await.unwrap().as_deref(),
        Some("first")
    );
}

/// The charts' rows written before members were kept (one per deployment
/// and minute, no member, no histogram) are still listed after the
/// upgrade, and a member's row then adds to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_minutes_written_before_members_were_kept_survive_the_upgrade() {
    let Some(base) = testpg::require() else {
        return;
    };
    let url = testpg::fresh_database(&base).await;
    drop(
        PgStore::connect(&url, Cipher::from_key([4; 32]))
            .await
            .unwrap(),
    );
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    {
        // The table as it was before members were kept, with a row; then
        // the migration that keeps members.
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        c.batch_execute(&format!(
            "DROP TABLE metric_minutes; {}",
            include_str!("../../migrations/postgres/0009_metric_minutes.sql")
        ))
        .await
        .unwrap();
        c.execute(
            "INSERT INTO metric_minutes (deployment_id, project, environment, service, minute, \
             requests, errors, p95_ms) VALUES ('d1', 'shop', 'production', 'web', $1, 40, 2, 12.5)",
            &[&t0],
        )
        .await
        .unwrap();
        c.batch_execute(include_str!(
            "../../migrations/postgres/0011_metric_members.sql"
        ))
        .await
        .unwrap();
        drop(c);
        let _ = task.await;
    }
    let s = PgStore::connect(&url, Cipher::from_key([4; 32]))
        .await
        .unwrap();
    crate::contract::a_minute_from_before_members_counts(&s, t0).await;
}

/// A deployment record long enough for TOAST (its steps' log tails) is
/// stored lz4-compressed, and the newest-first list of a long history
/// reads it through the `deployments_recent` index, not a scan and sort of
/// every row.
#[tokio::test]
async fn deployment_records_are_lz4_and_the_recent_list_uses_its_index() {
    let Some(base) = testpg::require() else {
        return;
    };
    let url = testpg::fresh_database(&base).await;
    let store = PgStore::connect(&url, Cipher::from_key([6; 32]))
        .await
        .unwrap();
    store.create_project(new_project("shop")).await.unwrap();
    let t0 = chrono::Utc::now();
    for i in 0..300 {
        let mut d = crate::deployment(
            &format!("d{i:04}"),
            "shop",
            t0 + chrono::Duration::seconds(i),
        );
        d.steps[0].log = (0..60)
            .map(|n| format!("step {i} line {n}: fetched object {n:08x}\n"))
            .collect();
        store.insert_deployment(&d).await.unwrap();
    }
    let listed = store
        .list_deployments(&DeploymentQuery {
            limit: Some(20),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 20);
    assert_eq!(listed[0].id, "d0299");
    assert!(listed[0].steps[0].log.contains("step 299 line 59"));

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute("ANALYZE deployments").await.unwrap();
    let methods: Vec<Option<String>> = client
        .query(
            "SELECT DISTINCT pg_column_compression(data) FROM deployments",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(methods, [Some("lz4".to_string())]);
    let plan: String = client
        .query(
            "EXPLAIN SELECT d.data, s.active, d.version FROM deployments d \
             LEFT JOIN slots s ON s.project = d.project AND s.environment = d.environment AND s.service = d.service \
             ORDER BY d.created_at DESC, d.id DESC LIMIT 20",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect();
    assert!(plan.contains("deployments_recent"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

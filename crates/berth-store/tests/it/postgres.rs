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

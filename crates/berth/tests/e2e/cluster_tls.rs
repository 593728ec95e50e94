//! Certificates in a cluster: two `berth server` processes with
//! `--https-listen` on one real PostgreSQL. A certificate the leader stores
//! (issued or renewed) is served by the follower's edge within a second:
//! each server re-reads the certificates within 300 ms of a change
//! (`Store::certificates_stamp`). The certificate is written straight into
//! the shared store, as the leader's ACME client does (ACME itself is
//! tested against pebble in `needs_docker/tls.rs`).

use crate::cluster::{database, instance_id, leader, KEY};
use crate::harness::*;
use berth_core::model::CertState;
use berth_store::{CertRecord, Cipher, PgStore, Store};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A leaf for `host` from a throwaway CA: (chain PEM, key PEM, leaf DER).
fn leaf(host: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The leaf a server's HTTPS listener presents for `host`.
fn served_leaf(https: SocketAddr, host: &str) -> Option<Vec<u8>> {
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .resolve(host, https)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://{host}:{}/", https.port()))
        .send()
        .ok()?;
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(|d| d.to_vec())
}

#[test]
fn a_certificate_stored_by_the_leader_is_served_by_the_follower_within_a_second() {
    let Some(url) = database() else {
        return;
    };
    let (ha, hb) = (free_port(), free_port());
    let a = Server::start_with(&[
        "--database-url",
        &url,
        "--master-key",
        KEY,
        "--https-listen",
        &format!("127.0.0.1:{ha}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while leader(&a).is_none() {
        assert!(Instant::now() < deadline, "no leader:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = Server::start_with(&[
        "--database-url",
        &url,
        "--master-key",
        KEY,
        "--https-listen",
        &format!("127.0.0.1:{hb}"),
    ]);
    let b_id = instance_id(&b);
    assert_ne!(leader(&b).map(|l| l.0), Some(b_id), "b is the follower");

    // A verified custom domain (its DNS check is tested elsewhere).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(PgStore::connect(
            &url,
            Cipher::load(std::path::Path::new("/nonexistent"), Some(KEY)).unwrap(),
        ))
        .unwrap();
    let host = "shop.example.com";
    a.ok(&["projects", "create", "shop", "--repo", "/srv/git/shop.git"]);
    a.ok(&["domains", "add", "--project", "shop", host]);
    rt.block_on(store.set_domain_verified(host, chrono::Utc::now()))
        .unwrap();
    let https_b: SocketAddr = format!("127.0.0.1:{hb}").parse().unwrap();
    let https_a: SocketAddr = format!("127.0.0.1:{ha}").parse().unwrap();

    // Issued, then renewed: each time the follower serves the new leaf
    // within a second of the write.
    for round in ["issued", "renewed"] {
        let (chain, key, der) = leaf(host);
        let now = chrono::Utc::now();
        let written = Instant::now();
        rt.block_on(store.put_certificate(&CertRecord {
            hostname: host.into(),
            state: CertState::Issued,
            chain_pem: Some(chain),
            key_pem: Some(key),
            not_after: Some(now + chrono::Duration::days(90)),
            error: None,
            attempts: 0,
            next_attempt_at: Some(now + chrono::Duration::days(60)),
            updated_at: now,
        }))
        .unwrap();
        loop {
            if served_leaf(https_b, host).as_deref() == Some(der.as_slice()) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "the follower never served the {round} certificate:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = written.elapsed();
        eprintln!("{round} certificate served by the follower {took:?} after the write");
        assert!(
            took < Duration::from_secs(1),
            "the follower served the {round} certificate after {took:?}"
        );
        // the leader learns of the write through the same poll as the
        // follower, so it may come a poll later: same bound
        loop {
            if served_leaf(https_a, host).as_deref() == Some(der.as_slice()) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "the leader never served the {round} certificate"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = written.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the leader served the {round} certificate after {took:?}"
        );
    }
}

//! With DNS-01 configured, `berth domains list` shows the server's wildcard
//! `*.<base-domain>` as a row of every project's list, with its
//! certificate's state like a custom domain's. Here the CA and the DNS
//! server are ports where nothing listens: the row goes from pending to
//! failed with the reason, the attempt count and the next attempt time
//! (issued is seen in `needs_docker/tls_dns01.rs` against pebble and BIND).

use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn the_wildcard_certificate_has_a_row_in_the_domain_list_with_its_state() {
    let https = free_port();
    let (ca, dns) = (free_port(), free_port());
    let s = Server::start_with(&[
        "--https-listen",
        &format!("127.0.0.1:{https}"),
        "--acme-directory",
        &format!("https://127.0.0.1:{ca}/dir"),
        "--acme-dns-server",
        &format!("127.0.0.1:{dns}"),
        "--acme-dns-tsig",
        "berth-acme:hmac-sha256:c2VjcmV0LWZvci10aGUtd2lsZGNhcmQtcm93",
    ]);
    let repo = AppRepo::new("wildcard row");
    for p in ["wcone", "wctwo"] {
        s.ok(&["projects", "create", p, "--repo", repo.path()]);
    }
    let wildcard = format!("*.{BASE}");
    let row = |project: &str| -> Value {
        let list = s.json(&["domains", "list", "--project", project, "--json"]);
        let rows = list.as_array().unwrap();
        assert_eq!(rows.len(), 1, "{list}");
        rows[0].clone()
    };
    let first = row("wcone");
    assert_eq!(first["hostname"], wildcard.as_str(), "{first}");
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(
        first["verification"]["name"],
        format!("_acme-challenge.{BASE}")
    );
    assert!(
        ["pending", "failed"].contains(&first["certificate"]["state"].as_str().unwrap()),
        "{first}"
    );

    // The CA cannot be reached: failed, with why, how many attempts and when
    // the next one is; every project's list shows the same row.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let r = row("wcone");
        if r["certificate"]["state"] == "failed" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the wildcard never failed: {r}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let cert = &failed["certificate"];
    assert!(
        !cert["error"].as_str().unwrap_or_default().is_empty(),
        "{cert}"
    );
    assert!(cert["attempts"].as_u64().unwrap() >= 1, "{cert}");
    assert!(cert["nextAttemptAt"].is_string(), "{cert}");
    assert!(cert["notAfter"].is_null(), "{cert}");
    let other = row("wctwo");
    assert_eq!(other["hostname"], wildcard.as_str());
    assert_eq!(other["projectName"], "wctwo");
    assert!(
        ["pending", "failed"].contains(&other["certificate"]["state"].as_str().unwrap()),
        "{other}"
    );
    let human = s.ok(&["domains", "list", "--project", "wcone"]);
    let line = human
        .lines()
        .find(|l| l.starts_with(&wildcard))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(
        line.contains("failed: ") || line.contains("pending (attempt "),
        "{human}"
    );
    // It is the server's, not a domain of the project: not removable there.
    let r = s
        .client()
        .delete(format!(
            "{}/api/v1/projects/wcone/domains/*.{BASE}",
            s.api()
        ))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(row("wcone")["hostname"], wildcard.as_str());
}

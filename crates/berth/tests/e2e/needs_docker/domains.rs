//! Custom domains: TXT verification against a real UDP DNS server on
//! 127.0.0.1, then routing that follows the active deployment.

use super::{deploy_wait, unique, wait_body, Cleanup};
use crate::harness::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};

/// A tiny authoritative DNS server: answers every TXT question with the
/// current value (or no answer while it is `None`).
fn dns_server(value: Arc<Mutex<Option<String>>>) -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..200 {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            if n < 12 {
                continue;
            }
            // The question only: the query's EDNS0 record is not echoed.
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + buf[end] as usize;
            }
            if end + 5 > n {
                continue;
            }
            let mut resp = buf[..end + 5].to_vec();
            resp[2] = 0x84; // response, authoritative, RD
            resp[3] = 0x00;
            let v = value.lock().unwrap().clone();
            resp[6] = 0;
            resp[7] = u8::from(v.is_some());
            resp[8..12].fill(0);
            if let Some(v) = v {
                resp.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
                resp.extend_from_slice(&((v.len() + 1) as u16).to_be_bytes());
                resp.push(v.len() as u8);
                resp.extend_from_slice(v.as_bytes());
            }
            let _ = sock.send_to(&resp, peer);
        }
    });
    port
}

#[test]
fn a_custom_domain_is_verified_by_txt_and_follows_the_active_deployment() {
    let project = unique("e2eo");
    let _c = Cleanup(project.clone());
    let txt = Arc::new(Mutex::new(None));
    let dns = dns_server(txt.clone());
    let s = Server::start_with(&["--dns-server", &format!("127.0.0.1:{dns}")]);
    let repo = AppRepo::new("domain v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");

    let dom = s.json(&[
        "domains",
        "add",
        "--project",
        &project,
        "Shop.Example.COM",
        "--json",
    ]);
    assert_eq!(dom["hostname"], "shop.example.com");
    assert_eq!(dom["verified"], false);
    assert_eq!(dom["verification"]["type"], "TXT");
    assert_eq!(
        dom["verification"]["name"],
        "_berth-challenge.shop.example.com"
    );
    assert_eq!(dom["target"], format!("{project}.{BASE}"));
    let token = dom["verification"]["value"].as_str().unwrap().to_string();
    // Not routed before it is verified.
    assert_eq!(s.get_host("shop.example.com", "/").unwrap().0, 404);

    // No record yet, then a wrong one: refused with a clear reason.
    let o = s.cli(&[
        "domains",
        "verify",
        "--project",
        &project,
        "shop.example.com",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("found: none"));
    *txt.lock().unwrap() = Some("something-else".into());
    let o = s.cli(&[
        "domains",
        "verify",
        "--project",
        &project,
        "shop.example.com",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("something-else"));

    *txt.lock().unwrap() = Some(token);
    let v: Value = s.json(&[
        "domains",
        "verify",
        "--project",
        &project,
        "shop.example.com",
        "--json",
    ]);
    assert_eq!(v["verified"], true);
    assert_eq!(s.get_host("shop.example.com", "/").unwrap().1, "domain v1");
    let listed = s.json(&["domains", "list", "--project", &project, "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // The domain follows the next deployment.
    repo.commit_app("domain v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}");
    wait_body(&s, "shop.example.com", "domain v2");

    // A hostname under berth's base domain is refused.
    let o = s.cli(&[
        "domains",
        "add",
        "--project",
        &project,
        &format!("x.{BASE}"),
    ]);
    assert!(!o.status.success());
}

//! HTTPS with certificates from a real ACME CA: Debian's `pebble` and
//! `pebble-challtestsrv` on 127.0.0.1. challtestsrv is the DNS server of
//! both pebble (A records of the test domains → 127.0.0.1) and berth (the
//! TXT record of domain verification); pebble validates HTTP-01 on berth's
//! `--http-listen` port, and the test validates what berth serves on
//! `--https-listen` against pebble's root (management API `/roots/0`).

use super::{deploy_wait, host, unique, Cleanup};
use crate::harness::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process this test started, killed (by its own handle) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not start:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn log_file(dir: &Path, name: &str) -> (std::fs::File, std::fs::File) {
    let f = std::fs::File::create(dir.join(name)).unwrap();
    (f.try_clone().unwrap(), f)
}

/// pebble's own HTTPS certificate (it ships none): a throwaway CA and a
/// leaf for 127.0.0.1; berth trusts the CA through `--acme-ca-file`.
fn pebble_tls(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test listener CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("listener-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn client_trusting(pem: &[u8]) -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap())
        .timeout(Duration::from_secs(20))
}

/// POST to challtestsrv's management API.
fn challtest(mgmt: u16, path: &str, body: Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{mgmt}{path}"))
        .json(&body)
        .send()
        .unwrap();
    assert!(
        r.status().is_success(),
        "challtestsrv {path}: {}",
        r.status()
    );
}

fn cert_state(s: &Server, project: &str, domain: &str) -> Value {
    let listed = s.json(&["domains", "list", "--project", project, "--json"]);
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hostname"] == domain)
        .unwrap()["certificate"]
        .clone()
}

#[test]
fn a_verified_domain_gets_an_acme_certificate_served_over_https_with_h2() {
    for bin in ["pebble", "pebble-challtestsrv"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{bin} is missing: apt-get install -y pebble (it ships both)"
        );
    }
    let project = unique("e2etls");
    let _c = Cleanup(project.clone());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    pebble_tls(dir);

    // challtestsrv: DNS for pebble and berth, only on 127.0.0.1.
    let (dns_port, chall_mgmt) = (free_port(), free_port());
    let (out, err) = log_file(dir, "challtestsrv.log");
    let _chall = Proc(
        Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{chall_mgmt}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    wait_port(
        chall_mgmt,
        "pebble-challtestsrv",
        &dir.join("challtestsrv.log"),
    );

    let (acme_port, pebble_mgmt, https_port) = (free_port(), free_port(), free_port());
    let mut s = Server::start_with(&[
        "--dns-server",
        &format!("127.0.0.1:{dns_port}"),
        "--https-listen",
        &format!("127.0.0.1:{https_port}"),
        "--acme-directory",
        &format!("https://127.0.0.1:{acme_port}/dir"),
        "--acme-email",
        "ops@example.com",
        "--acme-ca-file",
        dir.join("listener-ca.pem").to_str().unwrap(),
    ]);

    // pebble validates HTTP-01 on berth's --http-listen port.
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{pebble_mgmt}"),
        "certificate": dir.join("cert.pem"),
        "privateKey": dir.join("key.pem"),
        "httpPort": s.http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let (out, err) = log_file(dir, "pebble.log");
    let _pebble = Proc(
        Command::new("pebble")
            .args(["-config", dir.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Half of the nonces rejected, as Let's Encrypt does now and
            // then: berth sends those requests again, the order goes on.
            .env("PEBBLE_WFE_NONCEREJECT", "50")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pebble"),
    );
    wait_port(acme_port, "pebble", &dir.join("pebble.log"));
    wait_port(pebble_mgmt, "pebble management", &dir.join("pebble.log"));

    let repo = AppRepo::new("tls v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");

    let domain = format!("{project}.example.com");
    challtest(
        chall_mgmt,
        "/add-a",
        serde_json::json!({ "host": format!("{domain}."), "addresses": ["127.0.0.1"] }),
    );
    let dom = s.json(&["domains", "add", "--project", &project, &domain, "--json"]);
    assert_eq!(dom["certificate"]["state"], "none");
    challtest(
        chall_mgmt,
        "/set-txt",
        serde_json::json!({
            "host": format!("{}.", dom["verification"]["name"].as_str().unwrap()),
            "value": dom["verification"]["value"],
        }),
    );
    let v = s.json(&[
        "domains",
        "verify",
        "--project",
        &project,
        &domain,
        "--json",
    ]);
    assert_eq!(v["verified"], true);

    // The manager obtains it in the background: pending, then issued,
    // within 60 s although the CA rejects half of its nonces.
    let verified_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let cert = loop {
        let c = cert_state(&s, &project, &domain);
        if c["state"] == "issued" {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {domain}: {c}\n--- berth\n{}\n--- pebble\n{}",
            s.log(),
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "certificate for {domain} issued {:?} after verification",
        verified_at.elapsed()
    );
    assert!(cert["notAfter"].is_string(), "{cert}");
    assert!(cert["error"].is_null(), "{cert}");
    let human = s.ok(&["domains", "list", "--project", &project]);
    assert!(human.contains("issued, valid until"), "{human}");

    // pebble's root, from its management API (over the listener CA).
    let root = client_trusting(&std::fs::read(dir.join("listener-ca.pem")).unwrap())
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{pebble_mgmt}/roots/0"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();

    // HTTPS with SNI, validated against pebble's root: the app's body, over
    // HTTP/2 (ALPN) and over HTTP/1.1.
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let url = format!("https://{domain}:{https_port}/");
    let h2 = client_trusting(&root)
        .resolve(&domain, https)
        .build()
        .unwrap();
    let r = h2
        .get(&url)
        .send()
        .unwrap_or_else(|e| panic!("{e:?}\n{}", s.log()));
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.text().unwrap().contains("tls v1"));
    let h1 = client_trusting(&root)
        .resolve(&domain, https)
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(r.text().unwrap().contains("tls v1"));

    // After a kill -9 and restart, the stored certificate (key sealed in
    // the store) is served again without a new order.
    s.kill9();
    s.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match h2.get(&url).send() {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "not served after restart: {other:?}\n{}",
                s.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        cert_state(&s, &project, &domain)["notAfter"],
        cert["notAfter"]
    );

    // The route hostname under --base-domain gets one too (ACME is on).
    let route = host(&project);
    let route_url = format!("https://{route}:{https_port}/");
    let client = client_trusting(&root)
        .resolve(&route, https)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match client.get(&route_url).send() {
            Ok(r) if r.status() == 200 => {
                assert!(r.text().unwrap().contains("tls v1"));
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "{route} never served over validated HTTPS: {other:?}\n{}",
                s.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // A domain the CA cannot reach (its A record points where nothing
    // listens): failed, with the CA's reason and a retry time; the others
    // keep being served.
    let bad = format!("bad-{project}.example.com");
    challtest(
        chall_mgmt,
        "/add-a",
        serde_json::json!({ "host": format!("{bad}."), "addresses": ["127.0.0.2"] }),
    );
    let dom = s.json(&["domains", "add", "--project", &project, &bad, "--json"]);
    challtest(
        chall_mgmt,
        "/set-txt",
        serde_json::json!({
            "host": format!("{}.", dom["verification"]["name"].as_str().unwrap()),
            "value": dom["verification"]["value"],
        }),
    );
    s.ok(&["domains", "verify", "--project", &project, &bad]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let failed = loop {
        let c = cert_state(&s, &project, &bad);
        if c["state"] == "failed" {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "{bad} never failed: {c}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed["nextAttemptAt"].is_string(), "{failed}");
    let human = s.ok(&["domains", "list", "--project", &project]);
    assert!(human.contains("failed: "), "{human}");
    let r = h2.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);

    // An unknown name gets the fallback certificate, which pebble's root
    // does not validate; the edge then answers 404 (seen without checks).
    let other = format!("other-{project}.example.com");
    let strict = client_trusting(&root)
        .resolve(&other, https)
        .build()
        .unwrap();
    assert!(strict
        .get(format!("https://{other}:{https_port}/"))
        .send()
        .is_err());
    let lax = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(&other, https)
        .build()
        .unwrap();
    let r = lax
        .get(format!("https://{other}:{https_port}/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

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
pub(super) struct Proc(pub(super) Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn wait_port(port: u16, what: &str, log: &Path) {
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

pub(super) fn log_file(dir: &Path, name: &str) -> (std::fs::File, std::fs::File) {
    let f = std::fs::File::create(dir.join(name)).unwrap();
    (f.try_clone().unwrap(), f)
}

/// pebble's own HTTPS certificate (it ships none): a throwaway CA and a
/// leaf for 127.0.0.1; berth trusts the CA through `--acme-ca-file`.
pub(super) fn pebble_tls(dir: &Path) {
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

pub(super) fn client_trusting(pem: &[u8]) -> reqwest::blocking::ClientBuilder {
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

pub(super) fn require_pebble() {
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
}

/// challtestsrv: DNS for pebble and berth, only on 127.0.0.1. Returns it
/// with its DNS and management ports.
fn start_challtestsrv(dir: &Path) -> (Proc, u16, u16) {
    let (dns_port, chall_mgmt) = (free_port(), free_port());
    let (out, err) = log_file(dir, "challtestsrv.log");
    let chall = Proc(
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
    (chall, dns_port, chall_mgmt)
}

/// The ports of a pebble chosen before berth starts (berth is told the
/// directory, pebble berth's HTTP port).
pub(super) struct PebblePorts {
    pub(super) acme: u16,
    pub(super) mgmt: u16,
}

impl PebblePorts {
    pub(super) fn new() -> PebblePorts {
        PebblePorts {
            acme: free_port(),
            mgmt: free_port(),
        }
    }

    /// berth's flags for this CA (and `dns_port` as its DNS server).
    pub(super) fn server_args(&self, dir: &Path, dns_port: u16, https_port: u16) -> Vec<String> {
        [
            "--dns-server",
            &format!("127.0.0.1:{dns_port}"),
            "--https-listen",
            &format!("127.0.0.1:{https_port}"),
            "--acme-directory",
            &format!("https://127.0.0.1:{}/dir", self.acme),
            "--acme-email",
            "ops@example.com",
            "--acme-ca-file",
            dir.join("listener-ca.pem").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts pebble, validating HTTP-01 on berth's `http_port`;
    /// `validity_secs` sets the lifetime of what it issues (default 5
    /// years), `nonce_reject` the share of nonces it rejects (percent).
    fn start(
        &self,
        dir: &Path,
        http_port: u16,
        dns_port: u16,
        validity_secs: Option<u64>,
        nonce_reject: u8,
    ) -> Proc {
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.acme),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        if let Some(v) = validity_secs {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let (out, err) = log_file(dir, "pebble.log");
        let p = Proc(
            Command::new("pebble")
                .args(["-config", dir.join("pebble.json").to_str().unwrap()])
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", nonce_reject.to_string())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start pebble"),
        );
        wait_port(self.acme, "pebble", &dir.join("pebble.log"));
        wait_port(self.mgmt, "pebble management", &dir.join("pebble.log"));
        p
    }

    /// pebble's root, from its management API (over the listener CA).
    pub(super) fn root(&self, dir: &Path) -> Vec<u8> {
        client_trusting(&std::fs::read(dir.join("listener-ca.pem")).unwrap())
            .build()
            .unwrap()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .unwrap()
            .bytes()
            .unwrap()
            .to_vec()
    }
}

/// Adds `domain` to `project` with its A and TXT records in challtestsrv,
/// and verifies it.
fn add_verified_domain(s: &Server, chall_mgmt: u16, project: &str, domain: &str) {
    challtest(
        chall_mgmt,
        "/add-a",
        serde_json::json!({ "host": format!("{domain}."), "addresses": ["127.0.0.1"] }),
    );
    let dom = s.json(&["domains", "add", "--project", project, domain, "--json"]);
    assert_eq!(dom["certificate"]["state"], "none");
    challtest(
        chall_mgmt,
        "/set-txt",
        serde_json::json!({
            "host": format!("{}.", dom["verification"]["name"].as_str().unwrap()),
            "value": dom["verification"]["value"],
        }),
    );
    let v = s.json(&["domains", "verify", "--project", project, domain, "--json"]);
    assert_eq!(v["verified"], true);
}

/// Waits up to `limit` for the domain's certificate to be issued.
fn wait_issued(s: &Server, dir: &Path, project: &str, domain: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let c = cert_state(s, project, domain);
        if c["state"] == "issued" {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {domain} within {limit:?}: {c}\n--- berth\n{}\n--- pebble\n{}",
            s.log(),
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_verified_domain_gets_an_acme_certificate_served_over_https_with_h2() {
    require_pebble();
    let project = unique("e2etls");
    let _c = Cleanup(project.clone());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    pebble_tls(dir);
    let (_chall, dns_port, chall_mgmt) = start_challtestsrv(dir);
    let pebble = PebblePorts::new();
    let https_port = free_port();
    let args = pebble.server_args(dir, dns_port, https_port);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut s = Server::start_with(&args);
    // Half of the nonces rejected, as Let's Encrypt does now and then:
    // berth sends those requests again, the order goes on.
    let _pebble = pebble.start(dir, s.http_port, dns_port, None, 50);

    let repo = AppRepo::new("tls v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");

    let domain = format!("{project}.example.com");
    add_verified_domain(&s, chall_mgmt, &project, &domain);

    // The manager obtains it in the background: pending, then issued,
    // within 60 s although the CA rejects half of its nonces.
    let verified_at = Instant::now();
    let cert = wait_issued(&s, dir, &project, &domain, Duration::from_secs(60));
    eprintln!(
        "certificate for {domain} issued {:?} after verification",
        verified_at.elapsed()
    );
    assert!(cert["notAfter"].is_string(), "{cert}");
    assert!(cert["error"].is_null(), "{cert}");
    assert_eq!(cert["attempts"], 0, "{cert}");
    let human = s.ok(&["domains", "list", "--project", &project]);
    assert!(human.contains("issued, valid until"), "{human}");

    let root = pebble.root(dir);

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

/// A short-lived certificate (pebble issues it for 45 s) is renewed while a
/// client opens new TLS connections in a loop, each validated against
/// pebble's root: not one handshake fails, and the new certificate is
/// served within a second of the API showing it.
#[test]
fn a_short_lived_certificate_is_renewed_without_a_failed_handshake() {
    require_pebble();
    let project = unique("e2erenew");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    pebble_tls(dir);
    let (_chall, dns_port, chall_mgmt) = start_challtestsrv(dir);
    let pebble = PebblePorts::new();
    let https_port = free_port();
    let args = pebble.server_args(dir, dns_port, https_port);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Server::start_with(&args);
    let _pebble = pebble.start(dir, s.http_port, dns_port, Some(45), 0);

    // No deployment: the domain's hostname is served (the 404 page) over
    // TLS with its own certificate all the same.
    let repo = AppRepo::new("renew v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let domain = format!("{project}.example.com");
    add_verified_domain(&s, chall_mgmt, &project, &domain);
    let first = wait_issued(&s, dir, &project, &domain, Duration::from_secs(60));
    let root = pebble.root(dir);

    // New connections in a loop, each a full handshake (a new client: no
    // session to resume), recording the leaf served and when it changed.
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let url = format!("https://{domain}:{https_port}/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (stop, root, domain) = (stop.clone(), root.clone(), domain.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut leaves: Vec<(Vec<u8>, Instant)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let client = client_trusting(&root)
                    .resolve(&domain, https)
                    .tls_info(true)
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                match client.get(&url).send() {
                    Ok(r) => {
                        ok += 1;
                        let leaf = r
                            .extensions()
                            .get::<reqwest::tls::TlsInfo>()
                            .and_then(|t| t.peer_certificate())
                            .map(|d| d.to_vec())
                            .unwrap_or_default();
                        if leaves.last().map(|(l, _)| l) != Some(&leaf) {
                            leaves.push((leaf, Instant::now()));
                        }
                    }
                    Err(e) => failed.push(format!("{e:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed, leaves)
        })
    };

    // The renewal comes with a third of the 45 s left; wait for the API to
    // show the new notAfter.
    let deadline = Instant::now() + Duration::from_secs(90);
    let renewed_at = loop {
        let c = cert_state(&s, &project, &domain);
        if c["state"] == "issued" && c["notAfter"] != first["notAfter"] {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not renewed: {c}\n--- berth\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, leaves) = looper.join().unwrap();
    eprintln!(
        "{ok} handshakes, {} failed, leaves served: {}",
        failed.len(),
        leaves.len()
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");
    assert!(ok >= 20, "too few handshakes to tell: {ok}");
    assert_eq!(leaves.len(), 2, "the old leaf, then the new one");
    let served_new = leaves[1].1;
    eprintln!(
        "new certificate served {:?} after the API showed it (0: already before)",
        served_new.saturating_duration_since(renewed_at)
    );
    assert!(
        served_new <= renewed_at + Duration::from_secs(1),
        "the new certificate was served {:?} after the API showed it",
        served_new - renewed_at
    );
}

/// `--console-host`: the console's hostname gets its certificate from the
/// CA by HTTP-01 like a custom domain (no domain added anywhere), the
/// sign-in page is served over HTTPS validated against pebble's root, and
/// plain HTTP on it gets 308 to HTTPS.
#[test]
fn the_console_host_gets_an_acme_certificate_like_a_domain() {
    require_pebble();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    pebble_tls(dir);
    // challtestsrv answers 127.0.0.1 for every name (-defaultIPv4).
    let (_chall, dns_port, _chall_mgmt) = start_challtestsrv(dir);
    let pebble = PebblePorts::new();
    let https_port = free_port();
    let console = format!("{}.example.com", unique("console"));
    let mut args = pebble.server_args(dir, dns_port, https_port);
    args.extend(["--console-host".to_string(), console.clone()]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Server::start_with(&args);
    let _pebble = pebble.start(dir, s.http_port, dns_port, None, 0);
    let root = pebble.root(dir);

    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let client = client_trusting(&root)
        .resolve(&console, https)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("https://{console}:{https_port}/login");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.get(&url).send() {
            Ok(r) if r.status() == 200 => {
                assert!(r.text().unwrap().contains("name=\"token\""));
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "{console} never served over validated HTTPS: {other:?}\n--- berth\n{}\n--- pebble\n{}",
                s.log(),
                std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/console", s.http_port))
        .header("host", &console)
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://{console}:{https_port}/console").as_str()
    );
}

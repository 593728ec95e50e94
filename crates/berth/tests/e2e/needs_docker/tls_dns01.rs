//! A wildcard certificate by ACME DNS-01: Debian's `bind9` (`named`, run
//! on 127.0.0.1 with a temporary zone `berth.test` and a TSIG key) takes
//! berth's RFC 2136 updates, and Debian's `pebble` validates DNS-01 against
//! it. The route and preview hostnames of the base domain are then served
//! over HTTPS (validated against pebble's root) by one `*.berth.test`
//! certificate: a new preview needs no order. A TSIG secret BIND refuses
//! fails the renewal with "DNS update refused: NOTAUTH", and the existing
//! certificate keeps being served.

use super::tls::{
    client_trusting, log_file, pebble_tls, require_pebble, wait_port, PebblePorts, Proc,
};
use super::{deploy_wait, host, unique, Cleanup};
use crate::harness::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The test's TSIG key (`tsig-keygen` prints secrets like this one).
const KEY_NAME: &str = "berth-acme";
const SECRET: &str = "c2VjcmV0LWtleS1vZi10aGUtZG5zMDEtZTJlLXRlc3Q=";
const WRONG: &str = "d3Jvbmctc2VjcmV0LWZvci10aGUtZTJlLXRlc3Q=";

/// named on 127.0.0.1:`port`, primary for `zone`, taking TXT updates signed
/// with the test key. Returns `None` (after a notice) when named is
/// missing outside CI.
fn start_bind(dir: &Path, zone: &str) -> Option<(Proc, u16)> {
    let Some(named) = ["/usr/sbin/named", "/usr/bin/named"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        missing_tool("named (BIND)", "apt-get install -y bind9");
        return None;
    };
    let zdir = dir.join("bind");
    std::fs::create_dir_all(&zdir).unwrap();
    let d = zdir.display();
    let port = free_port();
    let conf = format!(
        r#"options {{
    directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{d}";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {KEY_NAME} zonesub TXT; }};
}};
"#
    );
    std::fs::write(zdir.join("named.conf"), conf).unwrap();
    std::fs::write(
        zdir.join("zone.db"),
        format!("$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"),
    )
    .unwrap();
    let mut cmd = Command::new(named);
    cmd.args(["-g", "-c"]).arg(zdir.join("named.conf"));
    // As root, named drops to the `bind` user, which must write its
    // journal next to the zone.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        for p in [dir.to_path_buf(), zdir.clone(), zdir.join("zone.db")] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        cmd.args(["-u", "bind"]);
    }
    let (_, err) = log_file(dir, "named.log");
    let mut child = Proc(
        cmd.stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start named"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join("named.log")).unwrap_or_default();
        // "running" alone once every zone is loaded.
        if log.lines().any(|l| l.trim_end().ends_with(" running")) {
            return Some((child, port));
        }
        let exited = child.0.try_wait().ok().flatten().is_some();
        assert!(
            !exited && Instant::now() < deadline,
            "named did not start:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pebble validating DNS-01 against `dns_port`, issuing certificates for
/// `validity_secs`, never reusing an authorization (so a renewal needs
/// fresh DNS records).
fn start_pebble(p: &PebblePorts, dir: &Path, dns_port: u16, validity_secs: u64) -> Proc {
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{}", p.acme),
        "managementListenAddress": format!("127.0.0.1:{}", p.mgmt),
        "certificate": dir.join("cert.pem"),
        "privateKey": dir.join("key.pem"),
        "httpPort": free_port(),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity_secs,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let (out, err) = log_file(dir, "pebble.log");
    let proc = Proc(
        Command::new("pebble")
            .args(["-config", dir.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pebble"),
    );
    wait_port(p.acme, "pebble", &dir.join("pebble.log"));
    wait_port(p.mgmt, "pebble management", &dir.join("pebble.log"));
    proc
}

/// The leaf certificate served for `name` over HTTPS validated against
/// `root`, with the body; `Err` while it is not (yet) served so.
fn fetch(root: &[u8], https: SocketAddr, name: &str) -> Result<(Vec<u8>, String), String> {
    let client = client_trusting(root)
        .resolve(name, https)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://{name}:{}/", https.port()))
        .send()
        .map_err(|e| format!("{e:?}"))?;
    let leaf = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(|d| d.to_vec())
        .unwrap_or_default();
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    Ok((leaf, r.text().unwrap_or_default()))
}

fn wait_served(
    s: &Server,
    dir: &Path,
    root: &[u8],
    https: SocketAddr,
    name: &str,
    limit: Duration,
) -> (Vec<u8>, String) {
    let deadline = Instant::now() + limit;
    loop {
        match fetch(root, https, name) {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{name} not served over validated HTTPS within {limit:?}: {e}\n--- berth\n{}\n--- pebble\n{}\n--- named\n{}",
                s.log(),
                std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("named.log")).unwrap_or_default(),
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The log without its colour escapes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn route_and_preview_hostnames_share_one_wildcard_by_dns01_through_bind() {
    require_pebble();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let Some((_named, dns_port)) = start_bind(dir, BASE) else {
        return;
    };
    let project = unique("e2edns");
    let _c = Cleanup(project.clone());
    pebble_tls(dir);
    let pebble = PebblePorts::new();
    let https_port = free_port();
    let mut args = pebble.server_args(dir, dns_port, https_port);
    let dns_server = format!("127.0.0.1:{dns_port}");
    args.extend([
        "--acme-dns-server".to_string(),
        dns_server.clone(),
        "--acme-dns-tsig".to_string(),
        format!("{KEY_NAME}:hmac-sha256:{SECRET}"),
    ]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut s = Server::start_with(&args);
    // 60 s certificates: renewed after 40 s (a third left).
    let _pebble = start_pebble(&pebble, dir, dns_port, 60);
    let root = pebble.root(dir);
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();

    let repo = AppRepo::new("dns01 v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "{d}");
    let route = host(&project);
    let (leaf, body) = wait_served(&s, dir, &root, https, &route, Duration::from_secs(90));
    let issued_at = Instant::now();
    assert!(body.contains("dns01 v1"), "{body}");
    assert!(
        contains(&leaf, &format!("*.{BASE}")),
        "the wildcard is served"
    );

    // The preview hostname: the same certificate at once.
    let preview = reqwest::Url::parse(d["previewUrl"].as_str().unwrap()).unwrap();
    let preview_host = preview.host_str().unwrap().to_string();
    let (leaf2, _) = fetch(&root, https, &preview_host)
        .unwrap_or_else(|e| panic!("{preview_host}: {e}\n{}", s.log()));
    assert_eq!(leaf2, leaf);

    // A new deployment's preview hostname is served at once with it too:
    // no order of its own.
    repo.commit_app("dns01 v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "{d2}");
    let preview2 = reqwest::Url::parse(d2["previewUrl"].as_str().unwrap()).unwrap();
    let preview2 = preview2.host_str().unwrap().to_string();
    assert_ne!(preview2, preview_host);
    let (_, body) =
        fetch(&root, https, &preview2).unwrap_or_else(|e| panic!("{preview2}: {e}\n{}", s.log()));
    assert!(body.contains("dns01 v2"), "{body}");
    let log = plain(&s.log());
    let orders: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("obtaining a certificate"))
        .collect();
    assert!(!orders.is_empty(), "{log}");
    for o in &orders {
        assert!(
            o.contains(&format!("host=*.{BASE}")),
            "an order other than the wildcard: {o}"
        );
    }
    // The TSIG secret is never logged.
    assert!(!log.contains(SECRET), "the TSIG secret is in the log");

    // Restarted with a secret BIND refuses (it replaces the sealed one):
    // the renewal fails with BIND's answer, and the certificate issued
    // before keeps being served meanwhile.
    s.kill9();
    let n = s.extra.len();
    s.extra[n - 1] = format!("{KEY_NAME}:hmac-sha256:{WRONG}");
    s.spawn();
    let deadline = issued_at + Duration::from_secs(58);
    loop {
        let log = s.log();
        if log.contains("DNS update refused: NOTAUTH") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewal did not fail on the wrong key:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (leaf3, _) = fetch(&root, https, &route)
        .unwrap_or_else(|e| panic!("not served after the refused update: {e}\n{}", s.log()));
    assert_eq!(leaf3, leaf, "the existing certificate keeps being served");
    assert!(!s.log().contains(WRONG), "the TSIG secret is in the log");
}

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
    start_named(dir, "bind", "recursion no;", &[(zone, true, "")])
}

/// A named on a free 127.0.0.1 port, its files and log (`<sub>.log`) under
/// `dir/<sub>`, with `options` added to its options and, for each zone
/// `(name, updatable, records)`, a primary zone holding `records` (zone
/// file lines) that takes TXT updates signed with the test key when
/// `updatable`.
fn start_named(
    dir: &Path,
    sub: &str,
    options: &str,
    zones: &[(&str, bool, &str)],
) -> Option<(Proc, u16)> {
    let Some(named) = ["/usr/sbin/named", "/usr/bin/named"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        missing_tool("named (BIND)", "apt-get install -y bind9");
        return None;
    };
    let zdir = dir.join(sub);
    std::fs::create_dir_all(&zdir).unwrap();
    let d = zdir.display();
    let port = free_port();
    let mut conf = format!(
        r#"options {{
    directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{d}";
    dnssec-validation no;
    notify no;
    {options}
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
"#
    );
    let mut files = vec![];
    for (i, (zone, updatable, records)) in zones.iter().enumerate() {
        let policy = if *updatable {
            format!("update-policy {{ grant {KEY_NAME} zonesub TXT; }};")
        } else {
            String::new()
        };
        conf.push_str(&format!(
            "zone \"{zone}\" {{\n    type primary;\n    file \"{d}/zone{i}.db\";\n    {policy}\n}};\n"
        ));
        let file = zdir.join(format!("zone{i}.db"));
        std::fs::write(
            &file,
            format!("$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}\n"),
        )
        .unwrap();
        files.push(file);
    }
    std::fs::write(zdir.join("named.conf"), conf).unwrap();
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
        for p in [dir.to_path_buf(), zdir.clone()].into_iter().chain(files) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        cmd.args(["-u", "bind"]);
    }
    let log_name = format!("{sub}.log");
    let (_, err) = log_file(dir, &log_name);
    let mut child = Proc(
        cmd.stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start named"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join(&log_name)).unwrap_or_default();
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
/// fresh DNS records); HTTP-01 on `http_port` (else on a port where
/// nothing listens: it cannot succeed).
fn start_pebble(
    p: &PebblePorts,
    dir: &Path,
    dns_port: u16,
    validity_secs: u64,
    http_port: Option<u16>,
) -> Proc {
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{}", p.acme),
        "managementListenAddress": format!("127.0.0.1:{}", p.mgmt),
        "certificate": dir.join("cert.pem"),
        "privateKey": dir.join("key.pem"),
        "httpPort": http_port.unwrap_or_else(free_port),
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
                std::fs::read_to_string(dir.join("bind.log")).unwrap_or_default(),
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
    let _pebble = start_pebble(&pebble, dir, dns_port, 60, None);
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

/// The certificate state of `host` in `project`'s domain list.
fn cert_of(s: &Server, project: &str, host: &str) -> serde_json::Value {
    let list = s.json(&["domains", "list", "--project", project, "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["hostname"] == host)
        .unwrap_or_else(|| panic!("{host} not in {list}"))["certificate"]
        .clone()
}

/// The leaf served for `name` over HTTPS, validated against `root`
/// (whatever the status: no app is deployed, the edge answers 404).
fn leaf(root: &[u8], https: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let r = client_trusting(root)
        .resolve(name, https)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(format!("https://{name}:{}/", https.port()))
        .send()
        .map_err(|e| format!("{e:?}"))?;
    Ok(r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(|d| d.to_vec())
        .unwrap_or_default())
}

/// Two named: `ns-acme`, berth's `--acme-dns-server`, primary for the base
/// domain and for `delegated.test` (a custom domain's zone delegated to
/// it); `ns-world`, standing for the rest of the DNS (berth's
/// `--dns-server` and pebble's resolver), primary for `outside.test` and
/// forwarding every other name to `ns-acme` (never beyond 127.0.0.1). The
/// custom domain in `delegated.test` has no A record anywhere, so HTTP-01
/// cannot succeed for it: its certificate can only come by DNS-01. The one
/// in `outside.test` (A 127.0.0.1, berth's HTTP port) goes HTTP-01. The
/// wildcard's row in `domains list` shows it issued.
#[test]
fn a_custom_domain_in_a_zone_the_dns01_server_serves_gets_dns01_and_others_http01() {
    require_pebble();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    pebble_tls(dir);
    let pebble = PebblePorts::new();
    let https_port = free_port();
    // Both nameds' ports are chosen when they start: berth is told them
    // by flags, so it starts after them; the verification values are
    // known only after `domains add`, so they are added by TSIG updates.
    let Some((_acme_ns, acme_port)) = start_named(
        dir,
        "ns-acme",
        "recursion no;",
        &[(BASE, true, ""), ("delegated.test", true, "")],
    ) else {
        return;
    };
    let Some((_world_ns, world_port)) = start_named(
        dir,
        "ns-world",
        &format!(
            "recursion yes; allow-recursion {{ 127.0.0.1; }}; forward only; \
             forwarders {{ 127.0.0.1 port {acme_port}; }}; max-cache-ttl 0; max-ncache-ttl 0;"
        ),
        &[("outside.test", true, "www IN A 127.0.0.1")],
    ) else {
        return;
    };
    let mut args = pebble.server_args(dir, world_port, https_port);
    args.extend([
        "--acme-dns-server".to_string(),
        format!("127.0.0.1:{acme_port}"),
        "--acme-dns-tsig".to_string(),
        format!("{KEY_NAME}:hmac-sha256:{SECRET}"),
    ]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Server::start_with(&args);
    let _pebble = start_pebble(&pebble, dir, world_port, 3600, Some(s.http_port));
    let root = pebble.root(dir);
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();

    let project = unique("e2edeleg");
    let repo = AppRepo::new("delegated");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let delegated = "www.delegated.test";
    let outside = "www.outside.test";
    for (host, ns_port) in [(delegated, acme_port), (outside, world_port)] {
        let d = s.json(&["domains", "add", "--project", &project, host, "--json"]);
        let name = d["verification"]["name"].as_str().unwrap();
        let value = d["verification"]["value"].as_str().unwrap();
        nsupdate_txt(ns_port, name, value);
        let v = s.json(&["domains", "verify", "--project", &project, host, "--json"]);
        assert_eq!(v["verified"], true, "{v}");
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let wildcard = format!("*.{BASE}");
    loop {
        let states: Vec<serde_json::Value> = [delegated, outside, wildcard.as_str()]
            .iter()
            .map(|h| cert_of(&s, &project, h))
            .collect();
        if states.iter().all(|c| c["state"] == "issued") {
            for c in &states {
                assert!(c["notAfter"].is_string(), "{c}");
                assert_eq!(c["attempts"], 0, "{c}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all issued within 120 s: {states:?}\n--- berth\n{}\n--- pebble\n{}",
            s.log(),
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = plain(&s.log());
    let challenge_of = |host: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("obtaining a certificate") && l.contains(&format!("host={host} "))
            })
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("challenge="))
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(challenge_of(delegated), ["dns-01"], "{log}");
    assert_eq!(challenge_of(outside), ["http-01"], "{log}");
    assert_eq!(challenge_of(&wildcard), ["dns-01"], "{log}");
    // Each is served over HTTPS under its own name, validated by pebble's root.
    for host in [delegated, outside] {
        let l = leaf(&root, https, host).unwrap_or_else(|e| panic!("{host}: {e}\n{}", s.log()));
        assert!(contains(&l, host), "{host}'s own certificate");
    }
}

/// Adds the TXT record `name` = `value` on the named at `port` (an RFC 2136
/// update signed with the test key, as `nsupdate` would send).
fn nsupdate_txt(port: u16, name: &str, value: &str) {
    use berth_server::tls::dns01::{DnsUpdater, TsigKey};
    let key = TsigKey::parse(&format!("{KEY_NAME}:hmac-sha256:{SECRET}")).unwrap();
    let up = DnsUpdater::new(&format!("127.0.0.1:{port}"), key).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(up.add_txt(name, value))
        .unwrap_or_else(|e| panic!("adding TXT {name}: {e}"));
}

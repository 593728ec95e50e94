//! `berth server --https-listen ... --console-host console.localhost`: the
//! edge serves the console and the API on that hostname over HTTPS, with a
//! certificate for it (here from the local CA, as any `*.localhost` name),
//! and sends plain HTTP there with 308; a sign-in through it gets a
//! `Secure` cookie (the edge says it was HTTPS, not the client); the audit
//! log keeps the browser's address (the edge's `X-Forwarded-For`) and no
//! client can forge one; the API listener keeps working as before.

use crate::harness::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const HOST: &str = "console.localhost";

/// A client of the console host over HTTPS trusting only the local CA
/// (and checking the certificate names `console.localhost`), connecting
/// from `from`.
fn https_client(s: &Server, https: u16, from: [u8; 4]) -> reqwest::blocking::Client {
    https_builder(s, https, from).build().unwrap()
}

fn https_builder(s: &Server, https: u16, from: [u8; 4]) -> reqwest::blocking::ClientBuilder {
    let ca = std::fs::read(s.data_dir().join("tls/local-ca.pem")).unwrap();
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(HOST, SocketAddr::from(([127, 0, 0, 1], https)))
        .local_address(IpAddr::from(from))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
}

fn plain_client(from: [u8; 4]) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::from(from))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn set_cookie(r: &reqwest::blocking::Response) -> String {
    r.headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_string()
}

/// The audit entry of the variable `key` being set.
fn audited(s: &Server, key: &str) -> Value {
    let audit = s.json(&["audit", "--json"]);
    audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "variables.set" && e["target"].as_str().unwrap().contains(key))
        .unwrap_or_else(|| panic!("no variables.set of {key} in {audit}"))
        .clone()
}

#[test]
fn the_console_on_its_own_hostname_over_https() {
    let https = free_port();
    let s = Server::start_with(&[
        "--https-listen",
        &format!("127.0.0.1:{https}"),
        "--console-host",
        "Console.Localhost.",
    ]);
    s.ok(&["projects", "create", "shop", "--repo", "/srv/git/shop.git"]);
    let base = format!("https://{HOST}:{https}");
    // From 127.0.0.2, so the edge's view of the client differs from the
    // edge's own connection to the API (127.0.0.1).
    let c = https_client(&s, https, [127, 0, 0, 2]);

    // The sign-in page, over HTTPS with a certificate for the name.
    let r = c.get(format!("{base}/login")).send().unwrap();
    assert_eq!(r.status(), 200, "{}", s.log());
    assert!(r.text().unwrap().contains("name=\"token\""));

    // A browser's sign-in form (its Origin is the console host: the edge
    // keeps the Host header, so the same-origin check passes), over HTTP/2
    // and HTTP/1.1.
    let h1 = https_builder(&s, https, [127, 0, 0, 2])
        .http1_only()
        .build()
        .unwrap();
    for (client, version) in [
        (&c, reqwest::Version::HTTP_2),
        (&h1, reqwest::Version::HTTP_11),
    ] {
        let r = client
            .post(format!("{base}/login"))
            .header("origin", &base)
            .form(&[("token", TOKEN), ("next", "/console")])
            .send()
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.version()),
            (303, version),
            "{}",
            s.log()
        );
        assert!(set_cookie(&r).contains("; Secure"));
    }
    let r = c
        .post(format!("{base}/login"))
        .header("origin", "https://evil.example")
        .form(&[("token", TOKEN), ("next", "/console")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "another site's form");

    // The cookie is Secure because the edge says the browser came over
    // HTTPS (no Origin header sent here).
    let r = c
        .post(format!("{base}/login"))
        .form(&[("token", TOKEN), ("next", "/console")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "{}", s.log());
    let cookie = set_cookie(&r);
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let sid = cookie.split(';').next().unwrap().to_string();
    let r = c
        .get(format!("{base}/console"))
        .header("cookie", &sid)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("shop"));
    // The session also reads the API there (the console follows logs so).
    let r = c
        .get(format!("{base}/api/v1/projects"))
        .header("cookie", &sid)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // The API with a token through the console host; a forged
    // X-Forwarded-For is replaced by the edge with the socket's address.
    let r = c
        .get(format!("{base}/api/v1/projects"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()[0]["name"], "shop");
    for (client, key) in [(&c, "VIA_EDGE_H2"), (&h1, "VIA_EDGE_H1")] {
        let r = client
            .put(format!(
                "{base}/api/v1/projects/shop/environments/production/variables/{key}"
            ))
            .bearer_auth(TOKEN)
            .header("x-forwarded-for", "6.6.6.6")
            .json(&serde_json::json!({"value": "1"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
        assert_eq!(audited(&s, key)["sourceIp"], "127.0.0.2", "{key}");
    }
    let r = c.get(format!("{base}/api/v1/projects")).send().unwrap();
    assert_eq!(r.status(), 401, "still guarded through the edge");

    // A log stream (what the console's live logs read) flows through the
    // edge as it is written: a deployment's lines arrive while it stays open.
    let r = c
        .get(format!("{base}/api/v1/logs?project=shop&follow=true"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = r;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut r, &mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.windows(5).any(|w| w == b"data:") {
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                return;
            }
        }
    });
    s.ok(&["deploy", "--project", "shop"]);
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no log line through the edge\n{}", s.log()));
    assert!(first.contains("\"seq\""), "{first}");

    // Plain HTTP on the console host: 308 to HTTPS (ACME paths excepted).
    let plain = plain_client([127, 0, 0, 2]);
    let r = plain
        .get(format!(
            "http://127.0.0.1:{}/login?next=%2Fconsole",
            s.http_port
        ))
        .header("host", format!("{HOST}:{}", s.http_port))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://{HOST}:{https}/login?next=%2Fconsole").as_str()
    );
    let r = plain
        .get(format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/t",
            s.http_port
        ))
        .header("host", HOST)
        .send()
        .unwrap();
    assert_ne!(r.status(), 308, "challenge paths are never redirected");

    // The API listener as before: plain HTTP, no Secure cookie, and the
    // forwarded headers a client sends there are not believed.
    let direct = plain_client([127, 0, 0, 2]);
    let r = direct.get(format!("{}/login", s.api())).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = direct
        .post(format!("{}/login", s.api()))
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN), ("next", "/console")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = set_cookie(&r);
    assert!(!cookie.contains("Secure"), "{cookie}");
    let r = direct
        .put(format!(
            "{}/api/v1/projects/shop/environments/production/variables/DIRECT",
            s.api()
        ))
        .bearer_auth(TOKEN)
        .header("x-forwarded-for", "6.6.6.6")
        .json(&serde_json::json!({"value": "1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(audited(&s, "DIRECT")["sourceIp"], "127.0.0.2");

    // Apps cannot take the console's hostname.
    let o = s.cli(&["routes", "add", HOST, "--upstream", "127.0.0.1:9"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("console") && err.contains(HOST), "{err}");
    let o = s.cli(&["domains", "add", "--project", "shop", HOST]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--console-host"), "{err}");
    // ... and the console is still there.
    let r = c.get(format!("{base}/login")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.log()
            .contains(&format!("console host     https://{HOST}:{https}")),
        "{}",
        s.log()
    );
}

#[test]
fn a_bad_console_host_is_refused_at_start_in_one_line() {
    for (bad, why) in [
        ("bad_host!", "not a valid hostname"),
        ("*.example.com", "wildcard"),
        ("127.0.0.1", "IP address"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--console-host", bad])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("--console-host") && err.contains(why),
            "{bad}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

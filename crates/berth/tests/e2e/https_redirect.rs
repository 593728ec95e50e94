//! `berth server --https-listen ... --hsts`: a plain request for a routed
//! hostname with a certificate (here `shop.localhost`, from the local CA)
//! gets 308 to the same path on the HTTPS port; HTTPS answers carry HSTS;
//! ACME challenge paths and hostnames without a certificate stay on HTTP.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// An upstream answering `app` to every request, on 127.0.0.1.
fn app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\napp",
                );
            });
        }
    });
    port
}

fn plain(s: &Server, host: &str, path: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}{path}", s.http_port))
        .header("host", host)
        .send()
        .unwrap()
}

#[test]
fn https_on_redirects_plain_requests_with_308_and_answers_with_hsts() {
    let https = free_port();
    let s = Server::start_with(&["--https-listen", &format!("127.0.0.1:{https}"), "--hsts"]);
    let up = app();
    for h in ["shop.localhost", "plain.test"] {
        s.ok(&["routes", "add", h, "--upstream", &format!("127.0.0.1:{up}")]);
    }

    let r = plain(&s, &format!("shop.localhost:{}", s.http_port), "/x?y=1");
    assert_eq!(r.status(), 308, "{}", s.log());
    assert_eq!(
        r.headers()["location"],
        format!("https://shop.localhost:{https}/x?y=1").as_str()
    );
    assert!(r.headers().get("strict-transport-security").is_none());
    let r = plain(&s, "shop.localhost", "/.well-known/acme-challenge/t");
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "app".into())
    );
    let r = plain(&s, "plain.test", "/x");
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "app".into())
    );

    // Following the redirect over HTTPS, trusting the local CA.
    let ca = std::fs::read(s.data_dir().join("tls/local-ca.pem")).unwrap();
    let c = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(
            "shop.localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], https)),
        )
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = c
        .get(format!("https://shop.localhost:{https}/x?y=1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.text().unwrap(), "app");

    // --hsts alone is refused.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["server", "--hsts"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--https-listen"));
}

//! HTTPS: TLS termination with SNI certificates in front of the same
//! routing as plain HTTP, ALPN h2/http1.1, the fallback certificate for
//! unknown names, and ACME HTTP-01 answers on the plain listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use berth_edge::{certified_key, Edge, EdgeConfig, TlsCerts};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "edge test CA");
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, name: &str) -> Arc<rustls::sign::CertifiedKey> {
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    certified_key(&cert.pem(), &key.serialize_pem()).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

async fn connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// GET over an established TLS stream, HTTP/2 or HTTP/1.1 as ALPN chose.
async fn get(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> (StatusCode, Version, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = Request::get(format!("https://{host}{path}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        send.send_request(req).await.unwrap()
    };
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// Accepts any certificate and records the leaf it was shown.
#[derive(Debug)]
struct Record(Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn serve_tls(edge: &Edge, certs: TlsCerts) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let e = edge.clone();
    tokio::spawn(async move { e.serve_tls(listener, certs, std::future::pending()).await });
    addr
}

#[tokio::test]
async fn https_is_routed_like_http_with_sni_certificates_and_alpn() {
    let a = upstream("app-a").await;
    let e = edge_with(EdgeConfig::default()).await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let ca = ca();
    let fallback = leaf(&ca, "fallback.invalid");
    let certs = TlsCerts::new(fallback.clone());
    let a_key = leaf(&ca, "a.localhost");
    certs.set("a.localhost", a_key.clone());
    let addr = serve_tls(&e.edge, certs).await;

    // HTTP/2 through ALPN, the chain validated against the CA.
    let tls = connect(
        addr,
        client_config(&ca.pem, &[b"h2", b"http/1.1"], &[&rustls::version::TLS13]),
        "a.localhost",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = get(tls, "a.localhost", "/headers").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    let seen: BTreeMap<String, String> = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "a.localhost");

    // HTTP/1.1 over TLS 1.2.
    let tls = connect(
        addr,
        client_config(&ca.pem, &[b"http/1.1"], &[&rustls::version::TLS12]),
        "a.localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (status, version, body) = get(tls, "a.localhost", "/headers").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    let seen: BTreeMap<String, String> = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");

    // An unknown name: the handshake completes with the fallback (never
    // a.localhost's certificate), and the answer is the 404 page.
    let record = Arc::new(Record(Mutex::new(None)));
    let mut cfg = client_config(&ca.pem, &[b"h2"], &[&rustls::version::TLS13]);
    cfg.dangerous().set_certificate_verifier(record.clone());
    let tls = connect(addr, cfg, "other.localhost").await.unwrap();
    let (status, _, body) = get(tls, "other.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no application is served at this host"));
    let shown = record.0.lock().unwrap().clone().unwrap();
    assert_eq!(shown, fallback.cert[0].to_vec());
    assert_ne!(shown, a_key.cert[0].to_vec());
    // A client validating the name refuses that certificate.
    let refused = connect(
        addr,
        client_config(&ca.pem, &[b"h2"], &[&rustls::version::TLS13]),
        "other.localhost",
    )
    .await;
    assert!(refused.is_err());
}

/// The HTTPS worker threads (`serve_tls_threads`): HTTP/1.1 keep-alive on
/// the hand-written path over TLS (a large response written in several
/// records), a request with a body handed to hyper mid-connection and the
/// connection still served after it, and sessions resumed on whichever
/// worker a new connection reaches (one ticket key for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_worker_threads_keep_alive_hand_over_and_resume_on_any_worker() {
    let a = upstream("app-a").await;
    let edge = Edge::new(EdgeConfig::default()).unwrap();
    edge.apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let ca = ca();
    let certs = TlsCerts::new(leaf(&ca, "fallback.invalid"));
    certs.set("a.localhost", leaf(&ca, "a.localhost"));
    let handle = edge
        .serve_tls_threads(
            "127.0.0.1:0".parse().unwrap(),
            2,
            certs,
            std::future::pending(),
        )
        .unwrap();
    let addr = handle.local_addr();
    let cfg = client_config(&ca.pem, &[b"http/1.1"], &[&rustls::version::TLS13]);

    let tls = connect(addr, cfg.clone(), "a.localhost").await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = |method: &str, path: &str, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "a.localhost")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    };
    for i in 0..3 {
        send.ready().await.unwrap();
        let resp = send
            .send_request(req("GET", &format!("/p/{i}"), vec![]))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("app-a /p/{i}").as_bytes());
    }
    send.ready().await.unwrap();
    let resp = send
        .send_request(req("GET", "/big?kb=1024", vec![]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 1024 * 1024);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == b'0' + (i % 10) as u8));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    send.ready().await.unwrap();
    let resp = send
        .send_request(req("POST", "/collect", payload.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), payload.as_slice());
    // after the hand-over, hyper serves the rest of the connection
    send.ready().await.unwrap();
    let resp = send
        .send_request(req("GET", "/headers", vec![]))
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: BTreeMap<String, String> = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");

    // New connections from the same client (its session store holds the
    // first connection's tickets): every one resumes, whichever of the two
    // workers' sockets the kernel gave it to.
    let cfg = Arc::new(cfg);
    let mut kinds = Vec::new();
    for i in 0..8 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(ServerName::try_from("a.localhost").unwrap(), tcp)
            .await
            .unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.ready().await.unwrap();
        let resp = send
            .send_request(req("GET", &format!("/p/r{i}"), vec![]))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await.unwrap();
    }
    for (i, k) in kinds.iter().enumerate() {
        assert_eq!(
            *k,
            Some(rustls::HandshakeKind::Resumed),
            "connection {i}: {kinds:?}"
        );
    }
    handle.shutdown();
    handle.wait().await;
}

#[tokio::test]
async fn acme_http01_answers_come_before_routing_on_the_plain_listener() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("a.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    e.edge.set_acme_challenge("tok-1", "tok-1.thumbprint");
    let mut c = Conn::open(e.addr).await;
    // For a routed host and for an unknown one alike.
    for host in ["a.localhost", "new.example.com"] {
        let (status, body) = c.get(host, "/.well-known/acme-challenge/tok-1").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "tok-1.thumbprint")
        );
    }
    // Other tokens and paths are routed as usual.
    let (status, body) = c
        .get("a.localhost", "/.well-known/acme-challenge/other")
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-a"));
    let (status, _) = c
        .get("new.example.com", "/.well-known/acme-challenge/x")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Removed: no longer answered.
    e.edge.remove_acme_challenge("tok-1");
    let (status, _) = c
        .get("new.example.com", "/.well-known/acme-challenge/tok-1")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_https_on_plain_requests_for_hosts_with_a_certificate_get_308_and_https_answers_carry_hsts(
) {
    let a = upstream("app-a").await;
    let b = upstream("app-b").await;
    let e = edge().await;
    e.edge
        .apply(vec![
            upsert("shop.localhost", vec![target("a", a.addr, 1)]),
            upsert("plain.test", vec![target("b", b.addr, 1)]),
        ])
        .unwrap();
    let ca = ca();
    let certs = TlsCerts::new(leaf(&ca, "fallback.invalid"));
    certs.set("shop.localhost", leaf(&ca, "shop.localhost"));
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = https.local_addr().unwrap();
    e.edge.set_https(
        https_addr.port(),
        certs.clone(),
        Some(std::time::Duration::from_secs(31_536_000)),
    );
    let edge = e.edge.clone();
    tokio::spawn(async move { edge.serve_tls(https, certs, std::future::pending()).await });
    let want = |path: &str| format!("https://shop.localhost:{}{path}", https_addr.port());

    // A bodiless GET (the hand-written path) and a POST (hyper's): 308 to
    // the same path and query over HTTPS, the port kept right, and the app
    // never sees them.
    let mut c = RawClient::open(e.addr).await;
    let http_port = e.addr.port();
    c.send(format!("GET /x?q=1 HTTP/1.1\r\nhost: Shop.localhost:{http_port}\r\n\r\n").as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 308, "{}", r.head);
    assert_eq!(r.header("location"), Some(want("/x?q=1")));
    assert_eq!(r.header("strict-transport-security"), None);
    c.send(
        format!("POST /form HTTP/1.1\r\nhost: shop.localhost:{http_port}\r\ncontent-length: 2\r\n\r\nhi")
            .as_bytes(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 308, "{}", r.head);
    assert_eq!(r.header("location"), Some(want("/form")));
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // ACME challenge paths stay on plain HTTP; a host without a
    // certificate is served over plain HTTP; an unknown host is 404.
    let mut c = Conn::open(e.addr).await;
    let (status, body) = c
        .get("shop.localhost", "/.well-known/acme-challenge/t")
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-a"));
    let (status, body) = c.get("plain.test", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-b"));
    let (status, _) = c.get("nobody.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Over HTTPS: the app, with HSTS.
    let tls = connect(
        https_addr,
        client_config(&ca.pem, &[b"http/1.1"], &[&rustls::version::TLS13]),
        "shop.localhost",
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("/x")
                .header("host", "shop.localhost")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
}

#[tokio::test]
async fn without_https_nothing_is_redirected() {
    let a = upstream("app-a").await;
    let e = edge().await;
    e.edge
        .apply(vec![upsert("shop.localhost", vec![target("a", a.addr, 1)])])
        .unwrap();
    let mut c = Conn::open(e.addr).await;
    let (status, body) = c.get("shop.localhost", "/x").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app-a"));
}

#[tokio::test]
async fn over_its_rate_limit_an_address_gets_new_tls_connections_closed_before_the_handshake() {
    let a = upstream("app-a").await;
    let e = edge_with(EdgeConfig {
        flagged_conns_per_client: 1,
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![berth_edge::RouteChange::Upsert {
            host: "a.localhost".into(),
            route: berth_edge::RouteSpec {
                targets: vec![target("a", a.addr, 1)],
                policy: berth_edge::Policy {
                    rate_limit: Some(1),
                    ..berth_edge::Policy::default()
                },
            },
        }])
        .unwrap();
    let ca = ca();
    let certs = TlsCerts::new(leaf(&ca, "a.localhost"));
    let addr = serve_tls(&e.edge, certs).await;
    let h1 = || client_config(&ca.pem, &[b"http/1.1"], &[&rustls::version::TLS13]);
    let counter = |name: &str| {
        e.edge
            .metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap()
    };
    let refused = || counter("berth_edge_connections_refused_total");
    let tls = connect(addr, h1(), "a.localhost").await.unwrap();
    assert_eq!(get(tls, "a.localhost", "/").await.0, StatusCode::OK);
    // over the limit: a 429 (held a second), and 127.0.0.1 is flagged
    let tls = connect(addr, h1(), "a.localhost").await.unwrap();
    let held = tokio::spawn(async move { get(tls, "a.localhost", "/").await.0 });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while counter("berth_edge_rate_limited_total") < 1 {
        assert!(std::time::Instant::now() < deadline, "no 429");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // one more connection is allowed, the next is closed before its
    // handshake; another address shakes hands
    let kept = connect(addr, h1(), "a.localhost").await.unwrap();
    assert!(connect(addr, h1(), "a.localhost").await.is_err());
    assert_eq!(refused(), 1);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let other = tokio_rustls::TlsConnector::from(Arc::new(h1()))
        .connect(ServerName::try_from("a.localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(get(other, "a.localhost", "/").await.0, StatusCode::OK);
    assert_eq!(held.await.unwrap(), StatusCode::TOO_MANY_REQUESTS);
    drop(kept);
    assert_eq!(refused(), 1);
}

//! OCSP stapling (RFC 6960): the status of a served certificate is asked
//! of the responder its issuer names (the leaf's Authority Information
//! Access), in the certificate manager's task, never during a handshake;
//! the edge staples the last good answer and it is asked again halfway to
//! its `nextUpdate`.
//!
//! Only the few DER structures needed are read and written here: the
//! request is one SHA-1 `CertID` (what every public responder accepts), and
//! of the answer only the status, the `CertID`'s serial, `certStatus` and
//! the update times are read. The signature is the client's to check.

use chrono::{DateTime, NaiveDateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::time::Duration;

/// How long one responder request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no staple was obtained.
#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    #[error("the certificate names no OCSP responder")]
    NoResponder,
    #[error("the chain has no issuer certificate")]
    NoIssuer,
    #[error("bad certificate: {0}")]
    Certificate(String),
    #[error("OCSP responder {url}: {detail}")]
    Responder { url: String, detail: String },
    #[error("malformed OCSP response: {0}")]
    Malformed(&'static str),
    #[error("OCSP response status {0} (not successful)")]
    Status(u8),
    #[error("the responder says the certificate is {0}")]
    NotGood(&'static str),
}

/// A good status to staple.
#[derive(Debug, Clone)]
pub struct Staple {
    /// The whole DER `OCSPResponse`, as stapled.
    pub der: Vec<u8>,
    pub this_update: DateTime<Utc>,
    pub next_update: Option<DateTime<Utc>>,
}

impl Staple {
    /// When to ask again: halfway to `nextUpdate` (an hour after
    /// `thisUpdate` without one).
    pub fn refresh_at(&self) -> DateTime<Utc> {
        match self.next_update {
            Some(n) => self.this_update + (n - self.this_update) / 2,
            None => self.this_update + chrono::Duration::hours(1),
        }
    }

    /// Whether it can still be stapled at `now`.
    pub fn fresh(&self, now: DateTime<Utc>) -> bool {
        self.next_update.is_none_or(|n| now < n)
    }
}

/// What a request needs from a chain: the responder, and the CertID.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub url: String,
    serial: Vec<u8>,
    issuer_name_hash: Vec<u8>,
    issuer_key_hash: Vec<u8>,
}

/// The responder and CertID of the leaf of a PEM chain (leaf, issuer, ...).
pub fn target(chain_pem: &str) -> Result<Target, OcspError> {
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OcspError::Certificate(e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| OcspError::Certificate("empty chain".into()))?;
    let issuer = certs.get(1).ok_or(OcspError::NoIssuer)?;
    let (leaf, issuer) = (parse_cert(leaf)?, parse_cert(issuer)?);
    let mut url = None;
    for ext in leaf.extensions() {
        if let x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) =
            ext.parsed_extension()
        {
            for d in &aia.accessdescs {
                // id-ad-ocsp
                if d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1" {
                    if let x509_parser::extensions::GeneralName::URI(u) = d.access_location {
                        url = Some(u.to_string());
                    }
                }
            }
        }
    }
    let url = url.ok_or(OcspError::NoResponder)?;
    let sha1 = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
            .as_ref()
            .to_vec()
    };
    Ok(Target {
        url,
        serial: leaf.tbs_certificate.raw_serial().to_vec(),
        issuer_name_hash: sha1(issuer.subject().as_raw()),
        issuer_key_hash: sha1(&issuer.public_key().subject_public_key.data),
    })
}

fn parse_cert(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, OcspError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| OcspError::Certificate(e.to_string()))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The DER CertID of `t`.
fn cert_id(t: &Target) -> Vec<u8> {
    // AlgorithmIdentifier { id-sha1, NULL }
    let alg = der(
        0x30,
        &[
            &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    der(
        0x30,
        &[
            alg,
            der(0x04, &t.issuer_name_hash),
            der(0x04, &t.issuer_key_hash),
            der(0x02, &t.serial),
        ]
        .concat(),
    )
}

/// The DER OCSPRequest for `t` (one request, no extensions).
pub fn request(t: &Target) -> Vec<u8> {
    let one = der(0x30, &cert_id(t));
    let list = der(0x30, &one);
    let tbs = der(0x30, &list);
    der(0x30, &tbs)
}

/// One DER element: (tag, content, rest).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), OcspError> {
    let bad = OcspError::Malformed("truncated element");
    let (&tag, rest) = input.split_first().ok_or(bad)?;
    let (&first, rest) = rest
        .split_first()
        .ok_or(OcspError::Malformed("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let k = (first & 0x7f) as usize;
        if k == 0 || k > 4 || rest.len() < k {
            return Err(OcspError::Malformed("bad length"));
        }
        let len = rest[..k]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[k..])
    };
    if rest.len() < len {
        return Err(OcspError::Malformed("element longer than its container"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), OcspError> {
    let (t, c, rest) = tlv(input)?;
    if t != tag {
        return Err(OcspError::Malformed(what));
    }
    Ok((c, rest))
}

fn generalized_time(content: &[u8]) -> Result<DateTime<Utc>, OcspError> {
    let s = std::str::from_utf8(content).map_err(|_| OcspError::Malformed("time"))?;
    // Fractional seconds are allowed; they are dropped.
    let s = s.trim_end_matches('Z');
    let s = s.split('.').next().unwrap_or(s);
    NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S")
        .map(|t| t.and_utc())
        .map_err(|_| OcspError::Malformed("time"))
}

/// Reads a responder's answer about `t`: a good status, or why not.
pub fn parse(resp: &[u8], t: &Target) -> Result<Staple, OcspError> {
    let (body, _) = expect(resp, 0x30, "OCSPResponse")?;
    let (status, rest) = expect(body, 0x0a, "responseStatus")?;
    let status = status.first().copied().unwrap_or(255);
    if status != 0 {
        return Err(OcspError::Status(status));
    }
    let (bytes, _) = expect(rest, 0xa0, "responseBytes")?;
    let (bytes, _) = expect(bytes, 0x30, "ResponseBytes")?;
    let (_oid, rest) = expect(bytes, 0x06, "responseType")?;
    let (basic, _) = expect(rest, 0x04, "response")?;
    let (basic, _) = expect(basic, 0x30, "BasicOCSPResponse")?;
    let (data, _) = expect(basic, 0x30, "ResponseData")?;
    let (tag, _, mut rest) = tlv(data)?;
    if tag == 0xa0 {
        // version, then the responder ID
        rest = tlv(rest)?.2;
    }
    let (_produced, rest) = expect(rest, 0x18, "producedAt")?;
    let (mut responses, _) = expect(rest, 0x30, "responses")?;
    let want = cert_id(t);
    let (want, _) = expect(&want, 0x30, "CertID")?;
    while !responses.is_empty() {
        let (single, next) = expect(responses, 0x30, "SingleResponse")?;
        responses = next;
        let (_, id, _) = tlv(single)?;
        let (_, _, after_id) = tlv(single)?;
        // Compare serials (the hash algorithm may differ from ours).
        let serial_of = |id: &[u8]| -> Result<Vec<u8>, OcspError> {
            let mut r = id;
            for _ in 0..3 {
                r = tlv(r)?.2;
            }
            Ok(expect(r, 0x02, "serialNumber")?.0.to_vec())
        };
        if serial_of(id)? != serial_of(want)? {
            continue;
        }
        let (status_tag, _, rest) = tlv(after_id)?;
        match status_tag {
            0x80 => {}
            0xa1 => return Err(OcspError::NotGood("revoked")),
            _ => return Err(OcspError::NotGood("unknown")),
        }
        let (this, rest) = expect(rest, 0x18, "thisUpdate")?;
        let this_update = generalized_time(this)?;
        let next_update = match tlv(rest) {
            Ok((0xa0, c, _)) => Some(generalized_time(expect(c, 0x18, "nextUpdate")?.0)?),
            _ => None,
        };
        return Ok(Staple {
            der: resp.to_vec(),
            this_update,
            next_update,
        });
    }
    Err(OcspError::Malformed("no answer about this certificate"))
}

/// Asks the responder of `chain_pem`'s leaf (HTTP POST) for its status.
pub async fn fetch(chain_pem: &str) -> Result<Staple, OcspError> {
    let t = target(chain_pem)?;
    let err = |detail: String| OcspError::Responder {
        url: t.url.clone(),
        detail,
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(&t.url)
        .header("content-type", "application/ocsp-request")
        .body(http_body_util::Full::new(bytes::Bytes::from(request(&t))))
        .map_err(|e| err(e.to_string()))?;
    let body = tokio::time::timeout(FETCH_TIMEOUT, async {
        let rsp = client.request(req).await.map_err(|e| err(e.to_string()))?;
        if !rsp.status().is_success() {
            return Err(err(format!("HTTP {}", rsp.status())));
        }
        use http_body_util::BodyExt;
        rsp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| err(e.to_string()))
    })
    .await
    .map_err(|_| err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())))??;
    parse(&body, &t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};

    /// An `openssl ocsp` responder this test started, killed when dropped.
    struct Responder(Child);
    impl Drop for Responder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A CA, leaves with serials 0x1234 (good) and 0x99 (revoked) naming
    /// the responder on `port`, one (0x77) naming none; the index.
    fn pki(dir: &Path, port: u16) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=test issuing CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        std::fs::write(
            dir.join("aia.ext"),
            format!(
                "subjectAltName=DNS:shop.example.com\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("plain.ext"),
            "subjectAltName=DNS:shop.example.com\n",
        )
        .unwrap();
        for (name, serial, ext) in [
            ("good", "0x1234", "aia.ext"),
            ("revoked", "0x99", "aia.ext"),
            ("plain", "0x77", "plain.ext"),
        ] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=shop.example.com",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "1",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        std::fs::write(
            dir.join("index.txt"),
            "V\t301231235959Z\t\t1234\tunknown\t/CN=shop.example.com\n\
             R\t301231235959Z\t251129000000Z\t99\tunknown\t/CN=shop.example.com\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n").unwrap();
    }

    fn chain(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap()
            + &std::fs::read_to_string(dir.join("ca.pem")).unwrap()
    }

    /// Captures the stapled OCSP response of a handshake, accepting any
    /// certificate (what is checked here is the staple).
    #[derive(Debug)]
    struct Capture(
        Arc<Mutex<Option<Vec<u8>>>>,
        Arc<rustls::crypto::CryptoProvider>,
    );
    impl rustls::client::danger::ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            ocsp: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = Some(ocsp.to_vec());
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    /// The OCSP response stapled in a handshake with `certs` for `name`.
    fn stapled(certs: &berth_edge::TlsCerts, name: &str) -> Option<Vec<u8>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_cfg = certs.server_config();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(server_cfg).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Capture(seen.clone(), provider)))
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        drop(sock);
        server.join().unwrap();
        let got = seen.lock().unwrap().clone();
        got.filter(|o| !o.is_empty())
    }

    #[tokio::test]
    async fn a_good_status_is_fetched_from_the_responder_and_stapled() {
        if Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "openssl is missing: apt-get install -y openssl"
            );
            eprintln!("skipped: openssl is missing (apt-get install -y openssl)");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        let port = free_port();
        pki(dir, port);
        let _responder = Responder(
            Command::new("openssl")
                .args([
                    "ocsp",
                    "-index",
                    "index.txt",
                    "-port",
                    &port.to_string(),
                    "-rsigner",
                    "ca.pem",
                    "-rkey",
                    "ca.key",
                    "-CA",
                    "ca.pem",
                    "-nmin",
                    "10",
                    "-ignore_err",
                ])
                .current_dir(dir)
                .stdout(std::fs::File::create(dir.join("ocsp.log")).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("start openssl ocsp"),
        );
        // Not probed by connecting: the responder serves one connection at
        // a time and would wait on the probe. It says when it listens.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(dir.join("ocsp.log"))
            .unwrap_or_default()
            .contains("ACCEPT")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl ocsp did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        // Good: its update times, refreshed halfway.
        let good = chain(dir, "good");
        let t = target(&good).unwrap();
        assert_eq!(t.url, format!("http://127.0.0.1:{port}"));
        let before = Utc::now() - chrono::Duration::seconds(5);
        let staple = fetch(&good).await.unwrap();
        let next = staple.next_update.expect("nextUpdate (-nmin 10)");
        assert!(staple.this_update >= before, "{staple:?}");
        assert!(
            (next - staple.this_update - chrono::Duration::minutes(10))
                .num_seconds()
                .abs()
                <= 1,
            "{staple:?}"
        );
        assert_eq!(
            staple.refresh_at(),
            staple.this_update + (next - staple.this_update) / 2
        );
        assert!(staple.fresh(Utc::now()));
        assert!(!staple.fresh(next));

        // Revoked, and a certificate naming no responder: nothing stapled.
        assert!(matches!(
            fetch(&chain(dir, "revoked")).await,
            Err(OcspError::NotGood("revoked"))
        ));
        assert!(matches!(
            fetch(&chain(dir, "plain")).await,
            Err(OcspError::NoResponder)
        ));
        // The answer about another certificate is not taken for this one.
        let other = target(&chain(dir, "revoked")).unwrap();
        assert!(parse(&staple.der, &other).is_err());

        // The edge staples it: a handshake carries the response.
        let key = std::fs::read_to_string(dir.join("good.key")).unwrap();
        let ck = berth_edge::certified_key(&good, &key).unwrap();
        let certs = berth_edge::TlsCerts::new(ck.clone());
        certs.set("shop.example.com", ck.clone());
        assert_eq!(stapled(&certs, "shop.example.com"), None);
        certs.set(
            "shop.example.com",
            Arc::new(rustls::sign::CertifiedKey {
                ocsp: Some(staple.der.clone()),
                ..(*ck).clone()
            }),
        );
        assert_eq!(stapled(&certs, "shop.example.com"), Some(staple.der));

        // The certificate manager does it on its own for a stored
        // certificate of a verified domain (a SQLite store, the edge's
        // certificate set), and staples nothing where no responder is named.
        let store: Arc<dyn berth_store::Store> = Arc::new(
            berth_store::SqliteStore::open(dir, berth_store::Cipher::from_key([7; 32])).unwrap(),
        );
        store
            .create_project(berth_store::NewProject {
                name: "shop".into(),
                repo: "/nowhere".into(),
                default_branch: "main".into(),
                retain_images: 3,
                webhook_secret: None,
                deploy_key: None,
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        for (host, name) in [("shop.example.com", "good"), ("plain.example.com", "plain")] {
            store
                .add_domain(&berth_core::model::Domain {
                    hostname: host.into(),
                    project_name: "shop".into(),
                    service_name: "web".into(),
                    environment_name: "production".into(),
                    verified: false,
                    verified_at: None,
                    verification: berth_core::model::DomainVerification {
                        record_type: "TXT".into(),
                        name: String::new(),
                        value: "x".into(),
                    },
                    target: String::new(),
                    created_at: Utc::now(),
                    certificate: Default::default(),
                })
                .await
                .unwrap();
            store.set_domain_verified(host, Utc::now()).await.unwrap();
            let chain = chain(dir, name);
            store
                .put_certificate(&berth_store::CertRecord {
                    hostname: host.into(),
                    state: berth_core::model::CertState::Issued,
                    not_after: Some(crate::tls::acme::not_after(&chain).unwrap()),
                    chain_pem: Some(chain),
                    key_pem: Some(
                        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
                    ),
                    error: None,
                    attempts: 0,
                    next_attempt_at: Some(Utc::now() + chrono::Duration::days(1)),
                    updated_at: Utc::now(),
                })
                .await
                .unwrap();
        }
        let fallback = berth_edge::certified_key(&chain(dir, "plain"), &key).ok();
        let certs = berth_edge::TlsCerts::new(fallback.unwrap_or(ck));
        let m = super::super::CertManager {
            store,
            edge: berth_edge::Edge::new(berth_edge::EdgeConfig::default()).unwrap(),
            certs: certs.clone(),
            acme: None,
            leadership: crate::cluster::Leadership::single("local", ""),
            base_domain: "apps.test".into(),
            console_host: None,
            dns: None,
            account: tokio::sync::Mutex::new(None),
            resume: Mutex::new(Default::default()),
            staples: Mutex::new(Default::default()),
            loaded: Mutex::new(Default::default()),
            unwanted_since: Mutex::new(Default::default()),
            local_renew_at: Mutex::new(Utc::now() + chrono::Duration::days(1)),
        };
        m.pass().await.unwrap();
        let served = stapled(&certs, "shop.example.com").expect("a staple");
        let got = parse(&served, &t).unwrap();
        assert!(got.fresh(Utc::now()));
        assert_eq!(
            m.staples.lock().unwrap()["shop.example.com"].next_try,
            got.refresh_at()
        );
        assert_eq!(stapled(&certs, "plain.example.com"), None);
        // The next pass does not ask again before the refresh time.
        m.pass().await.unwrap();
        assert_eq!(stapled(&certs, "shop.example.com"), Some(served));
    }
}

//! HTTPS towards clients: TLS termination (rustls, `ring` provider) in
//! front of the same request path as plain HTTP, SNI certificate
//! selection, and the ACME HTTP-01 challenge answers of the plain listener.
//!
//! [`Edge::serve_tls`] accepts TCP connections, completes a TLS 1.2/1.3
//! handshake whose certificate [`TlsCerts`] picks by SNI, and serves the
//! connection as the plain listener does: HTTP/1.1 through the hand-written
//! loop of `front.rs` (which hands anything else to hyper), HTTP/2 (ALPN
//! `h2`) with hyper — routing, pages, in-flight accounting and metrics are
//! exactly those of the plain listener; only `X-Forwarded-Proto` says
//! `https`. [`Edge::serve_tls_threads`] / [`Edge::serve_tls_listeners`] run
//! it on one worker thread per socket, like the plain fast path, with one
//! rustls configuration for all (shared session cache and ticket key).
//!
//! Invariants:
//! * **Never another app's certificate.** The resolver answers an exact
//!   hostname, then a wildcard one label up, then the *fallback*
//!   certificate (self-signed, for no real name). A handshake for an unknown
//!   name therefore completes with the fallback and the request gets the
//!   edge's 404 page, as over plain HTTP: a client sees a certificate
//!   warning (the fallback is trusted by nobody) and, if it goes on, the
//!   same "no application is served at this host" answer. Failing the
//!   handshake instead would hide that answer and make clients without SNI
//!   (an IP address typed in) unable to tell what is wrong.
//! * Certificates change by swapping an immutable map (`ArcSwap`): a
//!   handshake sees one whole map.
//! * ACME HTTP-01 answers ([`Edge::set_acme_challenge`]) are served on every
//!   listener, for any host, before routing, and only for tokens set.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::proxy::{self, ConnCtx};
use crate::scan::ScanIo;
use crate::{Edge, Worker};

/// Where ACME HTTP-01 challenges are answered.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
}

/// The certificates the HTTPS listener serves, by hostname; cheap to clone.
#[derive(Clone)]
pub struct TlsCerts {
    inner: Arc<CertsInner>,
}

struct CertsInner {
    by_host: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fallback: Arc<CertifiedKey>,
    writer: Mutex<()>,
    issuer: ArcSwap<Option<Issuer>>,
}

/// Makes a certificate for a name without one, during the handshake (the
/// local CA for routed `*.localhost` names); `None` for names it refuses.
pub type Issuer = Arc<dyn Fn(&str) -> Option<Arc<CertifiedKey>> + Send + Sync>;

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts")
            .field("hosts", &self.inner.by_host.load().len())
            .finish()
    }
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key
/// (PKCS#8, SEC1 or PKCS#1) into a key rustls can serve.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Chain("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl TlsCerts {
    /// An empty set that answers every name with `fallback`.
    pub fn new(fallback: Arc<CertifiedKey>) -> TlsCerts {
        TlsCerts {
            inner: Arc::new(CertsInner {
                by_host: ArcSwap::from_pointee(HashMap::new()),
                fallback,
                writer: Mutex::new(()),
                issuer: ArcSwap::from_pointee(None),
            }),
        }
    }

    /// Serves `key` for `host` (lowercase; `*.example.com` for a wildcard).
    pub fn set(&self, host: &str, key: Arc<CertifiedKey>) {
        self.update(|m| {
            m.insert(host.to_ascii_lowercase(), key);
        });
    }

    /// Asks `issuer` for names without an exact certificate (before the
    /// wildcard and the fallback); what it makes is kept for the name.
    pub fn set_issuer(&self, issuer: Issuer) {
        self.inner.issuer.store(Arc::new(Some(issuer)));
    }

    /// Stops serving a certificate for `host` (it gets the fallback).
    pub fn remove(&self, host: &str) {
        self.update(|m| {
            m.remove(&host.to_ascii_lowercase());
        });
    }

    /// The hostnames with a certificate.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.by_host.load().keys().cloned().collect();
        v.sort();
        v
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<String, Arc<CertifiedKey>>)) {
        let _w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.inner.by_host.load());
        f(&mut next);
        self.inner.by_host.store(Arc::new(next));
    }

    /// The certificate for a server name: exact, then a wildcard one label
    /// up, then the fallback (also without SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        self.lookup(server_name)
            .unwrap_or_else(|| self.inner.fallback.clone())
    }

    /// [`TlsCerts::pick`] without the fallback.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?.trim_end_matches('.').to_ascii_lowercase();
        let map = self.inner.by_host.load();
        if let Some(k) = map.get(&name) {
            return Some(k.clone());
        }
        if let Some(issue) = self.inner.issuer.load().as_ref() {
            if let Some(k) = issue(&name) {
                self.set(&name, k.clone());
                return Some(k);
            }
        }
        let (_, parent) = name.split_once('.')?;
        if parent.is_empty() {
            return None;
        }
        map.get(&format!("*.{parent}")).cloned()
    }

    /// A rustls server configuration over these certificates: TLS 1.2 and
    /// 1.3 only, ALPN `h2` then `http/1.1`, session resumption.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption by ticket (keys rotate every 6 h) besides the session
        // cache, so a returning client skips the full handshake.
        if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
            cfg.ticketer = t;
        }
        Arc::new(cfg)
    }
}

#[derive(Debug)]
struct Resolver(TlsCerts);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.pick(hello.server_name()))
    }
}

/// Pending ACME HTTP-01 answers: token → key authorization.
#[derive(Default)]
pub(crate) struct Challenges {
    tokens: ArcSwap<HashMap<String, String>>,
    writer: Mutex<()>,
}

impl Challenges {
    fn update(&self, f: impl FnOnce(&mut HashMap<String, String>)) {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.tokens.load());
        f(&mut next);
        self.tokens.store(Arc::new(next));
    }

    fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
        let map = self.tokens.load();
        if map.is_empty() {
            return None;
        }
        map.get(token).cloned()
    }
}

/// The answer to an ACME HTTP-01 request, when its token is pending.
pub(crate) fn challenge_response<B>(
    worker: &Worker,
    req: &Request<B>,
) -> Option<Response<crate::ProxyBody>> {
    let body = worker.inner.acme.answer(req.uri().path())?;
    let mut r = Response::new(crate::ProxyBody::full(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    *r.status_mut() = StatusCode::OK;
    Some(r)
}

/// What HTTPS changes on the other listeners (see [`Edge::set_https`]).
pub(crate) struct Upgrade {
    /// The HTTPS listener's port (left out of `Location` when 443).
    port: u16,
    certs: TlsCerts,
    /// The `Strict-Transport-Security` value, with `--hsts`.
    hsts: Option<HeaderValue>,
}

/// The text of the 308 to HTTPS.
const MOVED: &str = "308 permanent redirect: this site is served over https\n";

/// The 308 that sends a plain request for routed `host` (lowercase, no
/// port) to HTTPS, when HTTPS is on and `host` has a certificate; never
/// for ACME HTTP-01 paths (the CA asks over plain HTTP).
pub(crate) fn to_https(inner: &crate::Inner, host: &str, target: &[u8]) -> Option<proxy::Page> {
    let up = inner.https.get()?;
    if target.starts_with(ACME_CHALLENGE_PREFIX.as_bytes()) {
        return None;
    }
    up.certs.lookup(Some(host))?;
    let target = std::str::from_utf8(target).ok()?;
    // an origin-form target; an absolute-form one is sent to its path
    let path = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |p| &rest[p..])
        }
        _ if target.starts_with('/') => target,
        _ => "/",
    };
    let location = match up.port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    HeaderValue::from_str(&location).ok()?;
    Some(proxy::Page {
        location: Some(location),
        ..proxy::Page::moved(MOVED)
    })
}

/// The `Strict-Transport-Security` value of HTTPS answers, with `--hsts`.
pub(crate) fn hsts_value(inner: &crate::Inner) -> Option<&HeaderValue> {
    inner.https.get().and_then(|u| u.hsts.as_ref())
}

/// Adds HSTS to an HTTPS answer (with `--hsts`; an app's own value is kept).
pub(crate) fn add_hsts(inner: &crate::Inner, headers: &mut http::HeaderMap) {
    if let Some(v) = hsts_value(inner) {
        headers
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| v.clone());
    }
}

impl Edge {
    /// HTTPS is served on `port` with `certs` (call before serving, once;
    /// a second call changes nothing): a plain-HTTP request for a routed
    /// hostname that has a certificate gets 308 to the same path over
    /// HTTPS, ACME challenge paths excepted; with `hsts_max_age`, HTTPS
    /// answers carry `Strict-Transport-Security: max-age=<seconds>`.
    pub fn set_https(&self, port: u16, certs: TlsCerts, hsts_max_age: Option<Duration>) {
        let hsts = hsts_max_age
            .map(|d| HeaderValue::from_str(&format!("max-age={}", d.as_secs())).expect("digits"));
        let _ = self.inner.https.set(Upgrade { port, certs, hsts });
    }

    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_auth` on
    /// every listener, for any host, until removed.
    pub fn set_acme_challenge(&self, token: &str, key_auth: &str) {
        let (t, k) = (token.to_string(), key_auth.to_string());
        self.inner.acme.update(|m| {
            m.insert(t, k);
        });
    }

    /// Stops answering a challenge token.
    pub fn remove_acme_challenge(&self, token: &str) {
        self.inner.acme.update(|m| {
            m.remove(token);
        });
    }

    /// Serves HTTPS clients on `listener` with `certs` until `shutdown`
    /// resolves, then stops accepting and lets connections finish their
    /// requests (up to `grace`).
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        certs: TlsCerts,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_tls_with(listener, certs.server_config(), shutdown)
            .await
    }

    /// [`Edge::serve_tls`] with a configuration made by
    /// [`TlsCerts::server_config`] (shared by the worker threads).
    pub(crate) async fn serve_tls_with(
        &self,
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (worker, ticker, reaper) = self.worker();
        let stop = tokio_util::sync::CancellationToken::new();
        let conns = tokio_util::task::TaskTracker::new();
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "tls accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // before the handshake (see `policy::Admission`)
                    let Some(admitted) = crate::front::admit(&worker, stream, remote) else {
                        continue;
                    };
                    let (acceptor, worker, stop) = (acceptor.clone(), worker.clone(), stop.clone());
                    conns.spawn(async move {
                        let crate::front::Admitted { stream, counted: _counted } = admitted;
                        let handshake = tokio::time::timeout(
                            worker.inner.header_read_timeout,
                            acceptor.accept(stream),
                        );
                        let tls = match handshake.await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %remote, "tls handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            serve_h2(worker, tls, remote, stop).await;
                        } else {
                            // HTTP/1.1: the plain listener's hand-written
                            // path, over the TLS stream
                            crate::front::serve_io(worker, tls, remote, "https").await;
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        stop.cancel();
        worker.front.shut_down();
        conns.close();
        conns.wait().await;
        reaper.abort();
        ticker.abort();
        Ok(())
    }
}

/// Serves one TLS connection whose ALPN chose `h2` with hyper, behind the
/// framing scanner.
async fn serve_h2(
    worker: Arc<Worker>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) {
    let ctx = Arc::new(ConnCtx::new(remote).with_proto("https"));
    let io = TokioIo::new(ScanIo::new(tls, ctx.scan.clone()));
    let w = worker.clone();
    let svc = hyper::service::service_fn(move |req| proxy::handle(w.clone(), ctx.clone(), req));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(io, svc));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "tls client connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(names: &[&str]) -> Arc<CertifiedKey> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        certified_key(&c.cert.pem(), &c.signing_key.serialize_pem()).unwrap()
    }

    fn leaf_of(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn the_resolver_picks_exact_then_wildcard_then_fallback() {
        let fallback = key_for(&["fallback.invalid"]);
        let certs = TlsCerts::new(fallback.clone());
        let shop = key_for(&["shop.example.com"]);
        let wild = key_for(&["*.apps.test"]);
        certs.set("Shop.Example.com", shop.clone());
        certs.set("*.apps.test", wild.clone());

        let pick = |n: Option<&str>| leaf_of(&certs.pick(n));
        assert_eq!(pick(Some("shop.example.com")), leaf_of(&shop));
        assert_eq!(pick(Some("SHOP.example.com.")), leaf_of(&shop));
        assert_eq!(pick(Some("a.apps.test")), leaf_of(&wild));
        // A wildcard covers one label only, never the parent itself.
        assert_eq!(pick(Some("b.a.apps.test")), leaf_of(&fallback));
        assert_eq!(pick(Some("apps.test")), leaf_of(&fallback));
        // Unknown names and no SNI: the fallback, never another app's.
        assert_eq!(pick(Some("other.example.com")), leaf_of(&fallback));
        assert_eq!(pick(None), leaf_of(&fallback));

        certs.remove("shop.example.com");
        assert_eq!(pick(Some("shop.example.com")), leaf_of(&fallback));
        assert_eq!(certs.hosts(), vec!["*.apps.test".to_string()]);
    }

    #[test]
    fn the_issuer_makes_certificates_for_the_names_it_accepts_and_they_are_kept() {
        let fallback = key_for(&["fallback.invalid"]);
        let certs = TlsCerts::new(fallback.clone());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        certs.set_issuer(Arc::new(move |name: &str| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            name.ends_with(".localhost").then(|| key_for(&[name]))
        }));
        let a = leaf_of(&certs.pick(Some("app.localhost")));
        assert_ne!(a, leaf_of(&fallback));
        assert_eq!(leaf_of(&certs.pick(Some("app.localhost"))), a);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            leaf_of(&certs.pick(Some("x.example.com"))),
            leaf_of(&fallback)
        );
        assert_eq!(certs.hosts(), vec!["app.localhost".to_string()]);
    }

    #[test]
    fn bad_pem_is_an_error() {
        let c = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        assert!(certified_key("", &c.signing_key.serialize_pem()).is_err());
        assert!(certified_key(&c.cert.pem(), "junk").is_err());
    }

    #[test]
    fn challenges_answer_only_known_tokens() {
        let ch = Challenges::default();
        assert_eq!(ch.answer("/.well-known/acme-challenge/abc"), None);
        ch.update(|m| {
            m.insert("abc".into(), "abc.thumb".into());
        });
        assert_eq!(
            ch.answer("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(ch.answer("/.well-known/acme-challenge/abd"), None);
        assert_eq!(ch.answer("/abc"), None);
    }
}

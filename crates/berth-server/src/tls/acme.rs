//! One certificate from an ACME CA (RFC 8555) (`instant-acme`, `ring`):
//! for one hostname with the HTTP-01 challenge, answered by the edge on
//! `--http-listen`; or, with a [`DnsUpdater`], for a wildcard and its base
//! name with the DNS-01 challenge, whose TXT records go to the zone's DNS
//! server by RFC 2136 updates ([`super::dns01`]) and are removed when the
//! order is over.
//!
//! A CA that is briefly unwell must not cost an order: every request is
//! retried on its own ([`REQUEST_ATTEMPTS`] times, jittered backoff, a fresh
//! nonce each time) when the CA answers `badNonce` or a 5xx, or the
//! connection fails. An attempt that still fails on such a *transient* error
//! leaves a [`Resume`]: the next attempt reloads the same order and goes on
//! from the step it reached (valid authorizations, a readied challenge, a
//! finalized CSR are not redone). Only errors the CA gives as final (a
//! rejected identifier, a failed validation, a rate limit) drop the order;
//! a rate limit's `Retry-After` is carried in [`AcmeError::retry_after`].

use super::dns01::{challenge_name, Dns01Error, DnsUpdater};
use anyhow::{anyhow, Context};
use berth_edge::Edge;
use berth_store::Store;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus,
};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many times one ACME request is sent before its error counts.
pub const REQUEST_ATTEMPTS: u32 = 6;
/// How long one attempt waits for the CA to validate or to issue.
const ORDER_PATIENCE: Duration = Duration::from_secs(120);

/// Where and as whom certificates are asked for.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The directory URL (e.g. Let's Encrypt's).
    pub directory: String,
    /// Contact of the account (`mailto:`).
    pub email: Option<String>,
    /// An extra root to trust for the CA's own HTTPS (a test CA).
    pub ca_file: Option<PathBuf>,
}

/// An issued certificate.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Whether an error is worth sending the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `badNonce`, a 5xx, a connection or an unreadable answer: retried,
    /// and an attempt that fails on it resumes its order later.
    Transient,
    /// The CA's final word (rejected identifier, failed validation, rate
    /// limit, malformed request): the order is dropped.
    Final,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct AcmeError {
    /// The step that failed (`new order`, `finalize`, ...).
    pub step: &'static str,
    pub detail: String,
    pub kind: ErrorKind,
    /// Not before then, says the CA (`Retry-After` of a rate limit or 503).
    pub retry_after: Option<DateTime<Utc>>,
}

impl AcmeError {
    fn fatal(step: &'static str, detail: impl Into<String>) -> AcmeError {
        AcmeError {
            step,
            detail: detail.into(),
            kind: ErrorKind::Final,
            retry_after: None,
        }
    }

    fn transient(step: &'static str, detail: impl Into<String>) -> AcmeError {
        AcmeError {
            step,
            detail: detail.into(),
            kind: ErrorKind::Transient,
            retry_after: None,
        }
    }
}

/// The kind of an `instant-acme` error (see [`ErrorKind`]).
pub fn classify(e: &instant_acme::Error) -> ErrorKind {
    use instant_acme::Error as E;
    match e {
        E::Api(p) => {
            let ty = p.r#type.as_deref().unwrap_or("");
            let ty = ty.rsplit(':').next().unwrap_or(ty);
            if ty == "badNonce" || ty == "serverInternal" || p.status.is_some_and(|s| s >= 500) {
                ErrorKind::Transient
            } else {
                ErrorKind::Final
            }
        }
        // Connection and body errors; a JSON error is a body that is not
        // the CA's (a proxy's 502 page).
        E::Hyper(_) | E::Other(_) | E::Json(_) | E::Timeout(_) => ErrorKind::Transient,
        _ => ErrorKind::Final,
    }
}

/// The delay before resending a request after `failures` failures
/// (≥ 1): 250 ms doubled per failure up to 4 s, with half of it random so
/// servers that failed together do not come back together.
pub fn request_backoff(failures: u32) -> Duration {
    let full = Duration::from_millis(250) * 2u32.pow(failures.saturating_sub(1).min(4));
    let half = full / 2;
    half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis() as u64))
}

/// A `Retry-After` value: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u32>() {
        return Some(now + chrono::Duration::seconds(secs.into()));
    }
    DateTime::parse_from_rfc2822(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The last `Retry-After` the CA sent with an error (`instant-acme` does
/// not hand it over, so the HTTP client keeps it here).
#[derive(Clone, Default)]
struct RetryAfter(Arc<Mutex<Option<DateTime<Utc>>>>);

impl RetryAfter {
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    fn take(&self) -> Option<DateTime<Utc>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The error of a request that failed for good (after its retries).
    fn error(&self, step: &'static str, e: &instant_acme::Error) -> AcmeError {
        AcmeError {
            step,
            detail: e.to_string(),
            kind: classify(e),
            retry_after: self.take(),
        }
    }
}

/// The HTTP client towards the CA.
#[derive(Clone)]
struct CaHttp {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
    seen: RetryAfter,
}

impl HttpClient for CaHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.inner.request(req);
        let seen = self.seen.clone();
        Box::pin(async move {
            let rsp = fut
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            if !rsp.status().is_success() {
                if let Some(t) = rsp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()))
                {
                    seen.set(t);
                }
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// The HTTP client towards the CA: the system roots plus `ca_file`.
fn http_client(settings: &AcmeSettings) -> anyhow::Result<CaHttp> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(path) = &settings.ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("--acme-ca-file {}", path.display()))?;
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.with_context(|| format!("--acme-ca-file {}", path.display()))?)
                .with_context(|| format!("--acme-ca-file {}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(anyhow!(
                "--acme-ca-file {} holds no certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let inner = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    Ok(CaHttp {
        inner,
        seen: RetryAfter::default(),
    })
}

/// An account at a CA.
pub struct Ca {
    account: Account,
    seen: RetryAfter,
}

/// Sends one ACME request (`$call`, an expression that awaits it) up to
/// [`REQUEST_ATTEMPTS`] times while it fails on a transient error; each
/// resend gets a fresh nonce (`instant-acme` gives its nonce up with every
/// request and fetches a new one when it holds none). `$seen` is the
/// [`RetryAfter`] of the client.
macro_rules! with_retries {
    ($seen:expr, $step:expr, $call:expr) => {{
        let mut failures = 0u32;
        loop {
            match $call {
                Ok(v) => break Ok(v),
                Err(e) => {
                    failures += 1;
                    if classify(&e) == ErrorKind::Transient && failures < REQUEST_ATTEMPTS {
                        tracing::debug!(step = $step, error = %e, failures, "ACME request sent again");
                        tokio::time::sleep(request_backoff(failures)).await;
                        continue;
                    }
                    break Err($seen.error($step, &e));
                }
            }
        }
    }};
}

/// The account for the directory: restored from the store, else created
/// (terms agreed) and its credentials stored sealed.
pub async fn account(settings: &AcmeSettings, store: &dyn Store) -> anyhow::Result<Ca> {
    let http = http_client(settings)?;
    let seen = http.seen.clone();
    if let Some(json) = store.acme_account(&settings.directory).await? {
        let account = with_retries!(seen, "restore the ACME account", {
            let creds: AccountCredentials =
                serde_json::from_str(&json).context("stored ACME account credentials")?;
            Account::builder_with_http(Box::new(http.clone()))
                .from_credentials(creds)
                .await
        })?;
        return Ok(Ca { account, seen });
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(|s| s.as_str()).collect();
    let (account, creds) = with_retries!(seen, "create the ACME account", {
        Account::builder_with_http(Box::new(http.clone()))
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                settings.directory.clone(),
                None,
            )
            .await
    })
    .with_context(|| format!("cannot create an ACME account at {}", settings.directory))?;
    store
        .put_acme_account(&settings.directory, &serde_json::to_string(&creds)?)
        .await?;
    Ok(Ca { account, seen })
}

/// Where an order stands between attempts (kept in memory only: after a
/// restart a new order is made, and the CA reuses valid authorizations).
#[derive(Default)]
pub struct Resume {
    order_url: String,
    /// Authorizations whose challenge was already declared ready.
    readied: BTreeSet<String>,
    /// HTTP-01 tokens the edge answers for this order.
    tokens: BTreeSet<String>,
    /// DNS-01 TXT records (name, value) added for this order.
    txt: BTreeSet<(String, String)>,
    /// The key of the CSR once the order is finalized.
    key_pem: Option<String>,
}

impl Resume {
    /// Stops answering this order's challenges: the edge forgets its
    /// tokens, and its TXT records are removed from the zone (a removal
    /// that fails is logged; the record is harmless and replaced by the
    /// next order's).
    pub async fn forget(self, edge: &Edge, dns: Option<&DnsUpdater>) {
        for t in &self.tokens {
            edge.remove_acme_challenge(t);
        }
        let Some(dns) = dns else { return };
        for (name, value) in &self.txt {
            if let Err(e) = dns.remove_txt(name, value).await {
                tracing::warn!(%name, error = %e, "DNS-01 record not removed");
            }
        }
    }
}

/// How an order's challenges are answered.
#[derive(Clone, Copy)]
pub struct Solver<'a> {
    /// HTTP-01 tokens are served by this edge.
    pub edge: &'a Edge,
    /// `Some`: DNS-01 through this server instead.
    pub dns: Option<&'a DnsUpdater>,
}

/// The kind of a DNS-01 update error: a refusal is the server's final
/// word (a wrong key does not get better by itself), no answer is
/// transient.
fn dns_error(e: Dns01Error) -> AcmeError {
    match e {
        Dns01Error::Timeout(_) | Dns01Error::Io { .. } => {
            AcmeError::transient("dns update", e.to_string())
        }
        e => AcmeError::fatal("dns update", e.to_string()),
    }
}

/// Obtains a certificate for `names` (the first is the host it is kept
/// under), going on with `resume`'s order when there is one. On a
/// transient failure `resume` holds the order for the next attempt;
/// otherwise it is emptied (and the challenges forgotten).
pub async fn obtain(
    ca: &Ca,
    solver: Solver<'_>,
    names: &[String],
    resume: &mut Option<Resume>,
) -> Result<Issued, AcmeError> {
    ca.seen.take();
    let result = obtain_steps(ca, solver, names, resume).await;
    let keep = matches!(&result, Err(e) if e.kind == ErrorKind::Transient);
    if !keep {
        if let Some(r) = resume.take() {
            r.forget(solver.edge, solver.dns).await;
        }
    }
    result
}

async fn obtain_steps(
    ca: &Ca,
    solver: Solver<'_>,
    names: &[String],
    resume: &mut Option<Resume>,
) -> Result<Issued, AcmeError> {
    let host = names.first().map(String::as_str).unwrap_or_default();
    let edge = solver.edge;
    let seen = &ca.seen;
    let mut order = None;
    if let Some(r) = resume.as_ref() {
        match with_retries!(seen, "resume the order", {
            ca.account.order(r.order_url.clone()).await
        }) {
            Ok(o) => order = Some(o),
            Err(e) if e.kind == ErrorKind::Transient => return Err(e),
            // Gone or expired: start over.
            Err(e) => {
                tracing::info!(%host, error = %e, "the previous order cannot go on, making a new one");
                if let Some(r) = resume.take() {
                    r.forget(edge, solver.dns).await;
                }
            }
        }
    }
    let mut order = match order {
        Some(o) => o,
        None => {
            let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
            let o = with_retries!(seen, "new order", {
                ca.account.new_order(&NewOrder::new(&ids)).await
            })?;
            *resume = Some(Resume {
                order_url: o.url().to_string(),
                ..Resume::default()
            });
            o
        }
    };
    let r = resume.as_mut().expect("set above");
    let deadline = tokio::time::Instant::now() + ORDER_PATIENCE;
    let mut poll = Duration::from_millis(250);
    loop {
        let status = order.state().status;
        match status {
            OrderStatus::Pending => {
                authorize(seen, &mut order, solver, r).await?;
                // Wait for the CA to validate.
                wait(&mut poll, deadline, "validation").await?;
                with_retries!(seen, "validation", order.refresh().await.map(|_| ()))?;
            }
            OrderStatus::Ready => {
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| AcmeError::fatal("finalize", e.to_string()))?;
                let csr = rcgen::CertificateParams::new(names.to_vec())
                    .and_then(|mut p| {
                        p.distinguished_name = rcgen::DistinguishedName::new();
                        p.serialize_request(&key)
                    })
                    .map_err(|e| AcmeError::fatal("finalize", e.to_string()))?;
                r.key_pem = Some(key.serialize_pem());
                // Not resent blindly: a finalize the CA took but whose
                // answer was lost would be refused the second time; the
                // order's state says whether it went through.
                if let Err(e) = order.finalize_csr(csr.der()).await {
                    if classify(&e) == ErrorKind::Final {
                        return Err(seen.error("finalize", &e));
                    }
                    tracing::debug!(%host, error = %e, "finalize failed, checking the order");
                    wait(&mut poll, deadline, "finalize").await?;
                    with_retries!(seen, "finalize", order.refresh().await.map(|_| ()))?;
                }
            }
            OrderStatus::Processing => {
                wait(&mut poll, deadline, "issuance").await?;
                with_retries!(seen, "issuance", order.refresh().await.map(|_| ()))?;
            }
            OrderStatus::Valid => {
                let key_pem = r.key_pem.clone().ok_or_else(|| {
                    AcmeError::fatal(
                        "certificate",
                        "the order was finalized with a key berth no longer has",
                    )
                })?;
                let chain_pem = with_retries!(seen, "certificate", order.certificate().await)?
                    .ok_or_else(|| AcmeError::transient("certificate", "not issued yet"))?;
                let (not_before, not_after) = validity(&chain_pem)
                    .map_err(|e| AcmeError::fatal("certificate", format!("{e:#}")))?;
                return Ok(Issued {
                    chain_pem,
                    key_pem,
                    not_before,
                    not_after,
                });
            }
            OrderStatus::Invalid => return Err(invalid_reason(seen, &mut order).await),
        }
    }
}

/// Sleeps before the next poll, growing `poll` up to 2 s; a transient
/// error once the attempt has waited long enough.
async fn wait(
    poll: &mut Duration,
    deadline: tokio::time::Instant,
    step: &'static str,
) -> Result<(), AcmeError> {
    if tokio::time::Instant::now() + *poll > deadline {
        return Err(AcmeError::transient(
            step,
            format!(
                "the CA did not finish within {} s",
                ORDER_PATIENCE.as_secs()
            ),
        ));
    }
    tokio::time::sleep(*poll).await;
    *poll = (*poll * 3 / 2).min(Duration::from_secs(2));
    Ok(())
}

/// Answers and readies the challenge of every pending authorization
/// (valid ones are skipped; one readied in an earlier attempt is not
/// readied again).
async fn authorize(
    seen: &RetryAfter,
    order: &mut instant_acme::Order,
    solver: Solver<'_>,
    r: &mut Resume,
) -> Result<(), AcmeError> {
    let kind = if solver.dns.is_some() {
        ChallengeType::Dns01
    } else {
        ChallengeType::Http01
    };
    let mut failures = 0u32;
    loop {
        let mut failed = None;
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = match a {
                Ok(a) => a,
                Err(e) => {
                    failed = Some(("authorization", e));
                    break;
                }
            };
            let url = a.url().to_string();
            if failures > 0 && !r.readied.contains(&url) {
                // A ready that failed may still have reached the CA.
                if let Err(e) = a.refresh().await {
                    failed = Some(("authorization", e));
                    break;
                }
            }
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::fatal(
                        "authorization",
                        format!("authorization is {other:?}"),
                    ))
                }
            }
            let ident = match a.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other => format!("{other:?}"),
            };
            let Some(mut ch) = a.challenge(kind.clone()) else {
                return Err(AcmeError::fatal(
                    "authorization",
                    format!("the CA offers no {kind:?} challenge"),
                ));
            };
            match solver.dns {
                None => {
                    solver
                        .edge
                        .set_acme_challenge(&ch.token, ch.key_authorization().as_str());
                    r.tokens.insert(ch.token.clone());
                }
                Some(dns) => {
                    let rec = (challenge_name(&ident), ch.key_authorization().dns_value());
                    if !r.txt.contains(&rec) {
                        dns.add_txt(&rec.0, &rec.1).await.map_err(dns_error)?;
                        r.txt.insert(rec);
                    }
                }
            }
            if r.readied.contains(&url) || ch.status != instant_acme::ChallengeStatus::Pending {
                continue;
            }
            match ch.set_ready().await {
                Ok(()) => {
                    r.readied.insert(url);
                }
                Err(e) => {
                    failed = Some(("challenge ready", e));
                    break;
                }
            }
        }
        let Some((step, e)) = failed else {
            return Ok(());
        };
        failures += 1;
        if classify(&e) == ErrorKind::Final || failures >= REQUEST_ATTEMPTS {
            return Err(seen.error(step, &e));
        }
        tracing::debug!(step, error = %e, failures, "ACME request sent again");
        tokio::time::sleep(request_backoff(failures)).await;
    }
}

/// Why an order became invalid: the errors of its challenges.
async fn invalid_reason(seen: &RetryAfter, order: &mut instant_acme::Order) -> AcmeError {
    let mut why = String::from("order is invalid");
    if let Some(e) = &order.state().error {
        why = format!("{why}: {e}");
    }
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        let _ = a.refresh().await;
        for c in &a.challenges {
            if let Some(e) = &c.error {
                why = format!("{why}: {e}");
            }
        }
    }
    let _ = seen;
    AcmeError::fatal("validation", why)
}

/// The validity (notBefore, notAfter) of the first certificate of a PEM
/// chain.
pub fn validity(chain_pem: &str) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in the chain"))??;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow!("cannot parse the certificate: {e}"))?;
    let ts = |t: i64| {
        DateTime::from_timestamp(t, 0).ok_or_else(|| anyhow!("certificate validity out of range"))
    };
    Ok((
        ts(cert.validity().not_before.timestamp())?,
        ts(cert.validity().not_after.timestamp())?,
    ))
}

/// The end of validity of the first certificate of a PEM chain.
pub fn not_after(chain_pem: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(validity(chain_pem)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use instant_acme::Problem;

    fn problem(ty: &str, status: u16) -> instant_acme::Error {
        let p: Problem = serde_json::from_value(serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{ty}"),
            "detail": "x",
            "status": status,
        }))
        .unwrap();
        instant_acme::Error::Api(p)
    }

    #[test]
    fn bad_nonces_and_server_errors_are_transient_the_rest_final() {
        assert_eq!(classify(&problem("badNonce", 400)), ErrorKind::Transient);
        assert_eq!(
            classify(&problem("serverInternal", 500)),
            ErrorKind::Transient
        );
        assert_eq!(classify(&problem("malformed", 503)), ErrorKind::Transient);
        assert_eq!(classify(&problem("rateLimited", 429)), ErrorKind::Final);
        assert_eq!(
            classify(&problem("rejectedIdentifier", 400)),
            ErrorKind::Final
        );
        assert_eq!(classify(&problem("unauthorized", 403)), ErrorKind::Final);
        assert_eq!(
            classify(&instant_acme::Error::Other("connection refused".into())),
            ErrorKind::Transient
        );
        assert_eq!(
            classify(&instant_acme::Error::Str("no certificate URL found")),
            ErrorKind::Final
        );
    }

    #[test]
    fn request_backoff_is_jittered_and_bounded() {
        for failures in 1..20 {
            let full = Duration::from_millis(250) * 2u32.pow((failures - 1).min(4));
            let d = request_backoff(failures);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            assert!(d <= Duration::from_secs(4));
        }
        // Jittered: not the same delay every time.
        let set: BTreeSet<Duration> = (0..20).map(|_| request_backoff(3)).collect();
        assert!(set.len() > 1);
    }

    /// A CA on 127.0.0.1 that rejects the first four nonces of newOrder,
    /// then answers 429 with `Retry-After: 120`.
    async fn rate_limiting_ca() -> (String, Arc<std::sync::atomic::AtomicU32>) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use std::sync::atomic::{AtomicU32, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let orders = Arc::new(AtomicU32::new(0));
        let nonce = || {
            let mut h = HeaderMap::new();
            h.insert(
                "replay-nonce",
                rand::random::<u64>().to_string().parse().unwrap(),
            );
            h
        };
        let dir = serde_json::json!({
            "newNonce": format!("{base}/nonce"),
            "newAccount": format!("{base}/account"),
            "newOrder": format!("{base}/order"),
        });
        let acct = format!("{base}/account/1");
        let n = orders.clone();
        let app = axum::Router::new()
            .route("/dir", get(move || async move { axum::Json(dir) }))
            .route("/nonce", get(move || async move { (nonce(), "") }))
            .route(
                "/account",
                post(move || async move {
                    let mut h = nonce();
                    h.insert("location", acct.parse().unwrap());
                    (StatusCode::CREATED, h, r#"{"status":"valid"}"#)
                }),
            )
            .route(
                "/order",
                post(move || async move {
                    let mut h = nonce();
                    h.insert("content-type", "application/problem+json".parse().unwrap());
                    if n.fetch_add(1, Ordering::SeqCst) < 4 {
                        let p = r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"JWS has an invalid anti-replay nonce","status":400}"#;
                        return (StatusCode::BAD_REQUEST, h, p);
                    }
                    h.insert("retry-after", "120".parse().unwrap());
                    let p = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates","status":429}"#;
                    (StatusCode::TOO_MANY_REQUESTS, h, p)
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("{base}/dir"), orders)
    }

    #[tokio::test]
    async fn rejected_nonces_are_sent_again_and_a_rate_limit_carries_its_retry_after() {
        let (directory, orders) = rate_limiting_ca().await;
        let settings = AcmeSettings {
            directory: directory.clone(),
            email: None,
            ca_file: None,
        };
        let http = http_client(&settings).unwrap();
        let seen = http.seen.clone();
        let (account, _) = Account::builder_with_http(Box::new(http))
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory,
                None,
            )
            .await
            .unwrap();
        let ca = Ca { account, seen };
        let edge = Edge::new(berth_edge::EdgeConfig::default()).unwrap();
        let mut resume = None;
        let before = Utc::now();
        let solver = Solver {
            edge: &edge,
            dns: None,
        };
        let names = ["shop.example.com".to_string()];
        let err = match obtain(&ca, solver, &names, &mut resume).await {
            Err(e) => e,
            Ok(_) => panic!("issued by a CA that issues nothing"),
        };
        // Four rejected nonces (three inside instant-acme, one more here),
        // then the rate limit: final, with the CA's time, nothing resent.
        assert_eq!(orders.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(err.kind, ErrorKind::Final, "{err}");
        assert_eq!(err.step, "new order");
        assert!(err.detail.contains("rateLimited"), "{err}");
        let after = err.retry_after.expect("the CA's Retry-After");
        assert!(after >= before + chrono::Duration::seconds(119), "{after}");
        assert!(resume.is_none(), "a final error drops the order");
        // The next attempt is not before it.
        let next = crate::tls::renew::next_attempt(Utc::now(), 1, false, err.retry_after);
        assert!(next >= after);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + chrono::Duration::seconds(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 01:00:00 GMT", now),
            Some(now + chrono::Duration::hours(1))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

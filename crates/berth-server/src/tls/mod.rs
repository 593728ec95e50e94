//! Certificates for the edge's HTTPS listener (`--https-listen`).
//!
//! [`start`] builds the edge's [`TlsCerts`] (a self-signed fallback for
//! unknown names; routed names under `localhost` get a leaf of the local CA
//! at their first handshake, see [`local_ca`]) and spawns the
//! [`CertManager`], which every 2 s — and within [`FOLLOW_EVERY`] of any
//! certificate record being written, so every server of a cluster serves a
//! new certificate within a second ([`Store::certificates_stamp`]):
//! 1. computes the hostnames that should have a certificate
//!    ([`wanted_hosts`]): verified custom domains, and — with an ACME
//!    directory — the route and preview hostnames under `--base-domain`,
//!    which with `--acme-dns-server` are all covered by one wildcard
//!    `*.<base-domain>` (kept under that name);
//! 2. serves the stored certificates of those hosts, stops serving the
//!    others (their records are deleted after a day unwanted);
//! 3. obtains or renews, one host at a time, those whose
//!    [`renew::decide`] says so, through ACME ([`acme`]): DNS-01 through
//!    RFC 2136 updates ([`dns01`]) for the wildcard and its base name, and
//!    for a custom domain whose zone the DNS-01 server is authoritative for
//!    (its SOA answer, AA bit set: the zone is delegated to it); HTTP-01
//!    for every other hostname; recording pending → issued (notAfter) or
//!    failed (reason, retry time) in the store.
//!
//! Invariants: nothing here blocks the API or a deployment (it is its own
//! task, and the edge keeps serving the previous certificate while a renewal
//! runs or fails); private keys reach the store only sealed; the edge never
//! reads the store, it is handed certificates.

pub mod acme;
pub mod dns01;
pub mod local_ca;
pub mod ocsp;
pub mod renew;

use crate::cluster::FOLLOW_EVERY;
use crate::ServerConfig;
use acme::AcmeSettings;
use berth_core::model::{CertState, Domain};
use berth_edge::{Edge, TlsCerts};
use berth_store::{CertRecord, Cipher, Store};
use chrono::{DateTime, Utc};
use dns01::{DnsUpdater, TsigKey};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the manager looks for work.
const POLL: Duration = Duration::from_secs(2);
/// A certificate record no host wants any more is deleted after this.
const UNWANTED_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Validity of the local CA's leaves; re-signed when a third of it is left.
const LOCAL_LEAF_DAYS: i64 = 90;

/// What [`start`] gives the server.
pub struct Started {
    pub certs: TlsCerts,
    /// The local CA certificate to trust for `*.localhost`.
    pub local_ca: PathBuf,
}

/// The hostnames that should have a certificate: verified custom domains
/// and the console's hostname (`--console-host`), plus the routed
/// hostnames under `base` when ACME is on (never under `localhost`, which
/// no public CA signs: the local CA covers it). With
/// `wildcard` (DNS-01 configured), `*.<base>` stands for every hostname one
/// label under `base` (routes, previews, and custom domains there): they
/// need no order of their own.
pub fn wanted_hosts(
    domains: &[Domain],
    console_host: Option<&str>,
    routed: &[String],
    base: &str,
    acme_on: bool,
    wildcard: bool,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = domains
        .iter()
        .filter(|d| d.verified && !is_local(&d.hostname))
        .map(|d| d.hostname.clone())
        .chain(console_host.filter(|h| !is_local(h)).map(str::to_string))
        .collect();
    if acme_on && !is_local(base) {
        let suffix = format!(".{base}");
        out.extend(
            routed
                .iter()
                .filter(|h| h.ends_with(&suffix) && !h.starts_with("*."))
                .cloned(),
        );
        if wildcard {
            out.retain(|h| !covered_by_wildcard(h, base));
            out.insert(format!("*.{base}"));
        }
    }
    out
}

/// The wildcard this server keeps, `*.<base-domain>`, when DNS-01 is
/// configured (ACME directory, `--acme-dns-server`, a public base domain).
pub fn wildcard_host(cfg: &ServerConfig) -> Option<String> {
    let base = cfg.base_domain();
    (cfg.acme_directory.is_some() && cfg.acme_dns_server.is_some() && !is_local(base))
        .then(|| format!("*.{base}"))
}

/// Whether `host` is exactly one label under `base` (what `*.<base>` covers).
pub fn covered_by_wildcard(host: &str, base: &str) -> bool {
    host.strip_suffix(base)
        .and_then(|l| l.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.') && label != "*")
}

/// The names one certificate is ordered for: a wildcard with its base
/// name, else the host alone.
pub fn order_names(host: &str) -> Vec<String> {
    match host.strip_prefix("*.") {
        Some(base) => vec![host.to_string(), base.to_string()],
        None => vec![host.to_string()],
    }
}

/// Whether `name` is under `localhost` (the local CA's names).
pub fn is_local(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Creates the certificates the HTTPS listener serves and starts the
/// manager that keeps them.
pub fn start(
    cfg: &ServerConfig,
    store: Arc<dyn Store>,
    edge: Edge,
    cipher: &Cipher,
    leadership: &crate::cluster::Leadership,
) -> anyhow::Result<Started> {
    let (fb_chain, fb_key) = local_ca::fallback()?;
    let certs = TlsCerts::new(berth_edge::certified_key(&fb_chain, &fb_key)?);
    let ca = Arc::new(local_ca::LocalCa::load_or_create(
        &cfg.data_dir.join("tls"),
        cipher,
    )?);
    let local_ca = ca.cert_path.clone();
    // Routed names under localhost (and localhost itself) get a leaf of
    // the local CA at their first handshake; other unknown names the
    // fallback.
    {
        let edge = edge.clone();
        certs.set_issuer(Arc::new(move |name: &str| {
            if !is_local(name) {
                return None;
            }
            if name != "localhost" && !edge.routes().iter().any(|(h, _)| h == name) {
                return None;
            }
            let (chain, key) = ca.issue(&[name], LOCAL_LEAF_DAYS).ok()?;
            berth_edge::certified_key(&chain, &key).ok()
        }));
    }
    let acme = cfg.acme_directory.as_ref().map(|d| AcmeSettings {
        directory: d.clone(),
        email: cfg.acme_email.clone(),
        ca_file: cfg.acme_ca_file.clone(),
    });
    let dns = dns_setup(cfg)?;
    let m = Arc::new(CertManager {
        store,
        edge,
        certs: certs.clone(),
        acme,
        leadership: leadership.clone(),
        base_domain: cfg.base_domain().to_string(),
        console_host: cfg.console_host.clone(),
        dns,
        account: tokio::sync::Mutex::new(None),
        resume: Mutex::new(HashMap::new()),
        staples: Mutex::new(HashMap::new()),
        loaded: Mutex::new(HashMap::new()),
        unwanted_since: Mutex::new(HashMap::new()),
        local_renew_at: Mutex::new(Utc::now() + chrono::Duration::days(LOCAL_LEAF_DAYS * 2 / 3)),
    });
    tokio::spawn(async move {
        // A pass every POLL, and as soon as a certificate record changed
        // (another server issued or renewed one): the stamp is one cheap
        // read per FOLLOW_EVERY.
        let mut seen: Option<String> = None;
        let mut last = tokio::time::Instant::now();
        let mut first = true;
        loop {
            let stamp = m.store.certificates_stamp().await.ok();
            if first || last.elapsed() >= POLL || (stamp.is_some() && stamp != seen) {
                first = false;
                seen = stamp;
                last = tokio::time::Instant::now();
                // Orders, renewals and removals are leader writes: fenced.
                let fence = m
                    .leadership
                    .is_leader()
                    .then(|| m.leadership.fence())
                    .flatten();
                if let Err(e) = berth_store::cluster::fenced(fence, m.pass()).await {
                    tracing::warn!(error = %format!("{e:#}"), "certificate manager pass failed");
                }
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    });
    Ok(Started { certs, local_ca })
}

/// DNS-01 as configured: `--acme-dns-server`, and the TSIG key given with
/// `--acme-dns-tsig` (else the one the store keeps for that server).
struct DnsSetup {
    server: String,
    given: Option<TsigKey>,
    updater: tokio::sync::Mutex<Option<Arc<DnsUpdater>>>,
}

/// Checks the DNS-01 flags (a bad one stops the server with a one-line
/// reason).
fn dns_setup(cfg: &ServerConfig) -> anyhow::Result<Option<DnsSetup>> {
    let Some(server) = cfg.acme_dns_server.clone() else {
        if cfg.acme_dns_tsig.is_some() {
            anyhow::bail!(
                "--acme-dns-tsig needs --acme-dns-server (host:port of the zone's DNS server)"
            );
        }
        return Ok(None);
    };
    if cfg.acme_directory.is_none() {
        anyhow::bail!("--acme-dns-server needs --acme-directory (DNS-01 is an ACME challenge)");
    }
    if is_local(cfg.base_domain()) {
        anyhow::bail!("--acme-dns-server needs --base-domain (the wildcard is *.<base-domain>)");
    }
    let given = cfg
        .acme_dns_tsig
        .as_deref()
        .map(TsigKey::parse)
        .transpose()?;
    let key = given
        .clone()
        .unwrap_or_else(|| TsigKey::parse("unset:hmac-sha256:AA==").expect("valid"));
    // The server's form is checked now, whatever key comes later.
    DnsUpdater::new(&server, key)?;
    Ok(Some(DnsSetup {
        server,
        given,
        updater: tokio::sync::Mutex::new(None),
    }))
}

/// Keeps the edge's certificates (see the module docs).
pub struct CertManager {
    store: Arc<dyn Store>,
    edge: Edge,
    certs: TlsCerts,
    acme: Option<AcmeSettings>,
    /// Only the leader orders, renews and deletes; every server serves.
    leadership: crate::cluster::Leadership,
    base_domain: String,
    /// `--console-host`: wanted like a verified custom domain.
    console_host: Option<String>,
    /// `Some`: the base domain's hostnames get one wildcard, by DNS-01.
    dns: Option<DnsSetup>,
    account: tokio::sync::Mutex<Option<acme::Ca>>,
    /// Host → the order an attempt that failed on a transient error left,
    /// which the next attempt goes on with.
    resume: Mutex<HashMap<String, acme::Resume>>,
    /// Host → notAfter of the certificate handed to the edge.
    loaded: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Host → the OCSP status stapled to its served certificate.
    staples: Mutex<HashMap<String, StapleState>>,
    /// Stored certificates no host wants, since when.
    unwanted_since: Mutex<HashMap<String, DateTime<Utc>>>,
    /// When the local CA's leaves are dropped (re-signed at the next
    /// handshake), a third of their validity before they end.
    local_renew_at: Mutex<DateTime<Utc>>,
}

/// The OCSP status of one served certificate.
#[derive(Clone)]
struct StapleState {
    /// notAfter of the certificate it is about.
    cert_end: DateTime<Utc>,
    staple: Option<ocsp::Staple>,
    /// When to ask the responder again.
    next_try: DateTime<Utc>,
}

impl CertManager {
    /// The DNS-01 updater: with the key given on the command line (sealed
    /// into the store the first time), else the stored one.
    async fn dns_updater(&self) -> Result<Option<Arc<DnsUpdater>>, acme::AcmeError> {
        let Some(setup) = &self.dns else {
            return Ok(None);
        };
        let mut cached = setup.updater.lock().await;
        if let Some(u) = cached.as_ref() {
            return Ok(Some(u.clone()));
        }
        let fail = |detail: String| acme::AcmeError {
            step: "dns update",
            detail,
            kind: acme::ErrorKind::Transient,
            retry_after: None,
        };
        let key = match &setup.given {
            Some(k) => {
                let stored = self
                    .store
                    .dns_update_key(&setup.server)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if stored.as_deref() != Some(k.to_flag().as_str()) {
                    self.store
                        .put_dns_update_key(&setup.server, &k.to_flag())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    tracing::info!(server = %setup.server, key = %k.name, "TSIG key sealed in the store");
                }
                k.clone()
            }
            None => {
                let stored = self
                    .store
                    .dns_update_key(&setup.server)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| acme::AcmeError {
                        step: "dns update",
                        detail: format!(
                            "no TSIG key for {}: give --acme-dns-tsig name:algorithm:secret once",
                            setup.server
                        ),
                        kind: acme::ErrorKind::Final,
                        retry_after: None,
                    })?;
                TsigKey::parse(&stored).map_err(|e| fail(e.to_string()))?
            }
        };
        let u = Arc::new(DnsUpdater::new(&setup.server, key).map_err(|e| fail(e.to_string()))?);
        *cached = Some(u.clone());
        Ok(Some(u))
    }

    /// How `host` is validated: `Some` (DNS-01 through that server) for
    /// the wildcard, and for a custom domain whose zone the DNS-01 server
    /// is authoritative for (delegated to it); `None` (HTTP-01) for every
    /// other host, and for a custom domain when that server cannot be
    /// asked or has no key (a warning: HTTP-01 may still work).
    async fn challenge_dns(&self, host: &str) -> Result<Option<Arc<DnsUpdater>>, acme::AcmeError> {
        if self.dns.is_none() {
            return Ok(None);
        }
        if host.starts_with("*.") {
            return self.dns_updater().await;
        }
        let updater = match self.dns_updater().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(%host, error = %e, "custom domain by HTTP-01: DNS-01 unusable");
                return Ok(None);
            }
        };
        match updater.serves_zone_of(host).await {
            Ok(true) => Ok(Some(updater)),
            Ok(false) => Ok(None),
            Err(e) => {
                tracing::warn!(%host, server = %updater.server, error = %e, "custom domain by HTTP-01: cannot ask whether the DNS-01 server serves its zone");
                Ok(None)
            }
        }
    }

    /// Serves `key` for `host`, and for a wildcard also for its base name
    /// (which it covers, and which the SNI lookup does not reach).
    fn install(&self, host: &str, key: Arc<rustls::sign::CertifiedKey>) {
        if let Some(base) = host.strip_prefix("*.") {
            self.certs.set(base, key.clone());
        }
        self.certs.set(host, key);
    }

    fn uninstall(&self, host: &str) {
        if let Some(base) = host.strip_prefix("*.") {
            self.certs.remove(base);
        }
        self.certs.remove(host);
    }

    /// Drops the local CA's leaves when they are due for renewal.
    fn refresh_local(&self) {
        let now = Utc::now();
        let mut at = self
            .local_renew_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if now < *at {
            return;
        }
        for h in self.certs.hosts() {
            if is_local(&h) {
                self.certs.remove(&h);
            }
        }
        *at = now + chrono::Duration::days(LOCAL_LEAF_DAYS * 2 / 3);
    }

    async fn pass(&self) -> anyhow::Result<()> {
        self.refresh_local();
        let domains = self.store.list_domains(None).await?;
        let routed: Vec<String> = self.edge.routes().into_iter().map(|(h, _)| h).collect();
        let wanted = wanted_hosts(
            &domains,
            self.console_host.as_deref(),
            &routed,
            &self.base_domain,
            self.acme.is_some(),
            self.dns.is_some(),
        );
        let records: HashMap<String, CertRecord> = self
            .store
            .list_certificates()
            .await?
            .into_iter()
            .map(|r| (r.hostname.clone(), r))
            .collect();
        let now = Utc::now();

        // Serve what is stored for wanted hosts. A record no host wants is
        // deleted after a grace period, so a route that comes back soon (a
        // domain removed and re-added, a restart) does not cost a new
        // certificate from the CA.
        let mut unwanted = self
            .unwanted_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        unwanted.retain(|h, _| records.contains_key(h) && !wanted.contains(h));
        for (host, rec) in &records {
            if wanted.contains(host) {
                self.serve(rec, now);
                continue;
            }
            let since = *unwanted.entry(host.clone()).or_insert(now);
            if !self.leadership.is_leader() {
                continue;
            }
            if now - since >= chrono::Duration::from_std(UNWANTED_GRACE).unwrap_or_default() {
                self.store.remove_certificate(host).await?;
                unwanted.remove(host);
            }
        }
        *self
            .unwanted_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = unwanted;
        let stale: Vec<String> = {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            loaded
                .iter()
                .filter(|(h, end)| !wanted.contains(*h) || **end <= now)
                .map(|(h, _)| h.clone())
                .collect()
        };
        for h in stale {
            self.uninstall(&h);
            self.loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&h);
        }

        self.refresh_staples(&records).await;

        // An order left for a host no longer wanted (or by a server that
        // lost the lead) is dropped, and its challenges forgotten.
        let leader = self.leadership.is_leader();
        let dropped: Vec<acme::Resume> = {
            let mut resume = self.resume.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = resume
                .keys()
                .filter(|h| !leader || !wanted.contains(*h))
                .cloned()
                .collect();
            gone.iter().filter_map(|h| resume.remove(h)).collect()
        };
        let dns = match &self.dns {
            Some(_) => self.dns_updater().await.ok().flatten(),
            None => None,
        };
        for r in dropped {
            r.forget(&self.edge, dns.as_deref()).await;
        }
        let Some(acme) = self.acme.as_ref().filter(|_| leader) else {
            return Ok(());
        };
        for host in &wanted {
            let rec = records.get(host);
            let facts = rec.map(|r| renew::Facts {
                state: r.state,
                not_after: r.not_after,
                next_attempt_at: r.next_attempt_at,
            });
            if renew::decide(Utc::now(), facts) == renew::Action::Obtain {
                self.obtain(acme, host, rec).await?;
            }
        }
        Ok(())
    }

    /// Staples an OCSP status to each served certificate whose issuer
    /// names a responder: fetched when the certificate is new and again
    /// halfway to the status's `nextUpdate`; a responder that fails is
    /// asked again in 10 minutes, the last good status stapled until it
    /// expires. Every server does it for its own edge; a handshake never
    /// waits for it.
    async fn refresh_staples(&self, records: &HashMap<String, CertRecord>) {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.staples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h, s| loaded.get(h) == Some(&s.cert_end));
        for (host, end) in loaded {
            let Some(rec) = records.get(&host).filter(|r| r.not_after == Some(end)) else {
                continue;
            };
            let (Some(chain), Some(key)) = (&rec.chain_pem, &rec.key_pem) else {
                continue;
            };
            let now = Utc::now();
            let prev = self
                .staples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&host)
                .cloned();
            if prev.as_ref().is_some_and(|s| now < s.next_try) {
                continue;
            }
            let mut st = prev.unwrap_or(StapleState {
                cert_end: end,
                staple: None,
                next_try: now,
            });
            let had = st.staple.as_ref().map(|s| s.der.clone());
            match ocsp::fetch(chain).await {
                Ok(staple) => {
                    st.next_try = staple.refresh_at().max(now + chrono::Duration::minutes(1));
                    tracing::debug!(%host, next_update = ?staple.next_update, "OCSP status fetched");
                    st.staple = Some(staple);
                }
                Err(ocsp::OcspError::NoResponder | ocsp::OcspError::NoIssuer) => {
                    // Nothing to staple for this certificate.
                    st.next_try = end;
                    st.staple = None;
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "OCSP status not refreshed");
                    st.staple = st.staple.filter(|s| s.fresh(now));
                    let retry = now + chrono::Duration::minutes(10);
                    st.next_try = st
                        .staple
                        .as_ref()
                        .and_then(|s| s.next_update)
                        .map_or(retry, |n| n.min(retry));
                }
            }
            let now_der = st.staple.as_ref().map(|s| s.der.clone());
            if now_der != had {
                match berth_edge::certified_key(chain, key) {
                    Ok(ck) => self.install(
                        &host,
                        Arc::new(rustls::sign::CertifiedKey {
                            ocsp: now_der,
                            ..(*ck).clone()
                        }),
                    ),
                    Err(e) => tracing::warn!(%host, error = %e, "stored certificate unusable"),
                }
            }
            self.staples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host, st);
        }
    }

    /// Hands a stored certificate to the edge if it is valid and new.
    fn serve(&self, rec: &CertRecord, now: DateTime<Utc>) {
        let (Some(chain), Some(key), Some(end)) = (&rec.chain_pem, &rec.key_pem, rec.not_after)
        else {
            return;
        };
        if !renew::servable(now, Some(end)) {
            return;
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.get(&rec.hostname) == Some(&end) {
            return;
        }
        match berth_edge::certified_key(chain, key) {
            Ok(ck) => {
                self.install(&rec.hostname, ck);
                loaded.insert(rec.hostname.clone(), end);
                tracing::info!(host = %rec.hostname, not_after = %end, "serving certificate");
            }
            Err(e) => {
                tracing::warn!(host = %rec.hostname, error = %e, "stored certificate unusable")
            }
        }
    }

    /// One attempt for `host`: pending, then issued or failed (with backoff).
    async fn obtain(
        &self,
        acme: &AcmeSettings,
        host: &str,
        prev: Option<&CertRecord>,
    ) -> anyhow::Result<()> {
        let mut rec = prev.cloned().unwrap_or_else(|| CertRecord {
            hostname: host.to_string(),
            state: CertState::Pending,
            chain_pem: None,
            key_pem: None,
            not_after: None,
            error: None,
            attempts: 0,
            next_attempt_at: None,
            updated_at: Utc::now(),
        });
        rec.state = CertState::Pending;
        rec.updated_at = Utc::now();
        self.store.put_certificate(&rec).await?;
        let dns = self.challenge_dns(host).await;
        let challenge = if matches!(dns, Ok(None)) {
            "http-01"
        } else {
            "dns-01"
        };
        tracing::info!(%host, directory = %acme.directory, %challenge, "obtaining a certificate");
        let started = std::time::Instant::now();
        let result: Result<acme::Issued, acme::AcmeError> =
            async {
                let dns = dns?;
                let mut account = self.account.lock().await;
                if account.is_none() {
                    *account = Some(acme::account(acme, self.store.as_ref()).await.map_err(
                        |e| acme::AcmeError {
                            step: "account",
                            detail: format!("{e:#}"),
                            kind: acme::ErrorKind::Transient,
                            retry_after: None,
                        },
                    )?);
                }
                let ca = account.as_ref().expect("set above");
                let solver = acme::Solver {
                    edge: &self.edge,
                    dns: dns.as_deref(),
                };
                let mut resume = self
                    .resume
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(host);
                let r = acme::obtain(ca, solver, &order_names(host), &mut resume).await;
                if let Some(resume) = resume {
                    self.resume
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(host.to_string(), resume);
                }
                r
            }
            .await;
        let now = Utc::now();
        match result {
            Ok(issued) => {
                rec.state = CertState::Issued;
                rec.chain_pem = Some(issued.chain_pem);
                rec.key_pem = Some(issued.key_pem);
                rec.not_after = Some(issued.not_after);
                rec.error = None;
                rec.attempts = 0;
                rec.next_attempt_at = Some(renew::renew_at(issued.not_before, issued.not_after));
                tracing::info!(%host, not_after = %issued.not_after, took_ms = started.elapsed().as_millis() as u64, "certificate issued");
            }
            Err(e) => {
                let mut why = e.to_string();
                why.truncate(500);
                let transient = e.kind == acme::ErrorKind::Transient;
                rec.state = CertState::Failed;
                rec.attempts = rec.attempts.saturating_add(1);
                rec.next_attempt_at = Some(renew::next_attempt(
                    now,
                    rec.attempts,
                    transient,
                    e.retry_after,
                ));
                tracing::warn!(%host, error = %why, transient, retry_at = ?rec.next_attempt_at, "certificate attempt failed");
                rec.error = Some(why);
            }
        }
        rec.updated_at = now;
        self.store.put_certificate(&rec).await?;
        self.serve(&rec, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::model::DomainVerification;

    fn domain(host: &str, verified: bool) -> Domain {
        Domain {
            hostname: host.into(),
            project_name: "shop".into(),
            service_name: "web".into(),
            environment_name: "production".into(),
            verified,
            verified_at: None,
            verification: DomainVerification {
                record_type: "TXT".into(),
                name: String::new(),
                value: String::new(),
            },
            target: String::new(),
            created_at: Utc::now(),
            certificate: Default::default(),
        }
    }

    #[test]
    fn verified_domains_always_and_base_domain_hosts_only_with_acme() {
        let domains = [
            domain("shop.example.com", true),
            domain("new.example.com", false),
            domain("dev.localhost", true),
        ];
        let routed = vec![
            "shop.apps.test".to_string(),
            "shop-ab12cd.apps.test".to_string(),
            "legacy.other.test".to_string(),
            "shop.example.com".to_string(),
        ];
        let got = wanted_hosts(&domains, None, &routed, "apps.test", true, false);
        let want: BTreeSet<String> = [
            "shop.example.com",
            "shop.apps.test",
            "shop-ab12cd.apps.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
        // Without ACME: the verified domain only (served if a certificate is stored).
        assert_eq!(
            wanted_hosts(&domains, None, &routed, "apps.test", false, false),
            BTreeSet::from(["shop.example.com".to_string()])
        );
        // Never hosts under localhost: the local CA covers them.
        let routed = vec!["shop.localhost".to_string()];
        assert_eq!(
            wanted_hosts(&[], None, &routed, "localhost", true, true),
            BTreeSet::new()
        );
    }

    #[test]
    fn the_console_host_is_wanted_like_a_verified_domain() {
        let routed = vec!["shop.apps.test".to_string()];
        let got = wanted_hosts(
            &[],
            Some("console.example.com"),
            &routed,
            "apps.test",
            false,
            false,
        );
        assert_eq!(got, BTreeSet::from(["console.example.com".to_string()]));
        let got = wanted_hosts(
            &[],
            Some("console.example.com"),
            &routed,
            "apps.test",
            true,
            false,
        );
        assert!(got.contains("console.example.com") && got.contains("shop.apps.test"));
        // One label under the base domain: the wildcard covers it.
        let got = wanted_hosts(
            &[],
            Some("console.apps.test"),
            &routed,
            "apps.test",
            true,
            true,
        );
        assert_eq!(got, BTreeSet::from(["*.apps.test".to_string()]));
        // Under localhost: the local CA's.
        let got = wanted_hosts(
            &[],
            Some("console.localhost"),
            &routed,
            "localhost",
            true,
            false,
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn with_dns01_one_wildcard_covers_every_hostname_one_label_under_the_base_domain() {
        let domains = [
            domain("shop.example.com", true),
            domain("www.apps.test", true),
        ];
        let routed = vec![
            "shop.apps.test".to_string(),
            "shop-ab12cd.apps.test".to_string(),
            "deep.shop.apps.test".to_string(),
            "legacy.other.test".to_string(),
        ];
        let got = wanted_hosts(&domains, None, &routed, "apps.test", true, true);
        let want: BTreeSet<String> = ["shop.example.com", "*.apps.test", "deep.shop.apps.test"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(got, want, "custom domains elsewhere keep HTTP-01");
        // A new preview changes nothing: no new order.
        let mut more = routed.clone();
        more.push("shop-ef34gh.apps.test".to_string());
        assert_eq!(
            wanted_hosts(&domains, None, &more, "apps.test", true, true),
            want
        );
        // The wildcard is ordered with its base name; a host alone.
        assert_eq!(order_names("*.apps.test"), ["*.apps.test", "apps.test"]);
        assert_eq!(order_names("shop.example.com"), ["shop.example.com"]);
        assert!(covered_by_wildcard("a.apps.test", "apps.test"));
        assert!(!covered_by_wildcard("a.b.apps.test", "apps.test"));
        assert!(!covered_by_wildcard("apps.test", "apps.test"));
        assert!(!covered_by_wildcard("xapps.test", "apps.test"));
    }

    #[test]
    fn dns01_flags_are_checked_at_start_with_a_one_line_reason() {
        let err = |f: &dyn Fn(&mut ServerConfig)| {
            let mut cfg = ServerConfig::new("/tmp/unused".into());
            cfg.acme_directory = Some("https://acme.test/dir".into());
            cfg.base_domain = Some("apps.test".into());
            f(&mut cfg);
            dns_setup(&cfg).err().map(|e| format!("{e:#}"))
        };
        assert_eq!(err(&|_| {}), None, "no DNS-01 asked for");
        assert_eq!(
            err(&|c| {
                c.acme_dns_server = Some("127.0.0.1:53".into());
                c.acme_dns_tsig = Some("k:hmac-sha256:c2VjcmV0".into());
            }),
            None
        );
        // Given once: later starts name the server only.
        assert_eq!(
            err(&|c| c.acme_dns_server = Some("ns1.apps.test:53".into())),
            None
        );
        let e = err(&|c| c.acme_dns_tsig = Some("k:hmac-sha256:c2VjcmV0".into())).unwrap();
        assert!(
            e.starts_with("--acme-dns-tsig needs --acme-dns-server"),
            "{e}"
        );
        let e = err(&|c| c.acme_dns_server = Some("127.0.0.1".into())).unwrap();
        assert_eq!(e, "--acme-dns-server 127.0.0.1: expected host:port");
        let e = err(&|c| {
            c.acme_dns_server = Some("127.0.0.1:53".into());
            c.acme_dns_tsig = Some("k:hmac-md5:c2VjcmV0".into());
        })
        .unwrap();
        assert!(e.starts_with("--acme-dns-tsig: algorithm hmac-md5"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "the secret is not repeated: {e}");
        let e = err(&|c| {
            c.acme_dns_server = Some("127.0.0.1:53".into());
            c.acme_directory = None;
        })
        .unwrap();
        assert!(e.contains("needs --acme-directory"), "{e}");
        let e = err(&|c| {
            c.acme_dns_server = Some("127.0.0.1:53".into());
            c.base_domain = None;
        })
        .unwrap();
        assert!(e.contains("needs --base-domain"), "{e}");
    }
}

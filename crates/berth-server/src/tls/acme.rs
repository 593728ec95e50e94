//! One certificate from an ACME CA (RFC 8555) with the HTTP-01 challenge,
//! answered by the edge on `--http-listen` (`instant-acme`, `ring`).

use anyhow::{anyhow, Context};
use berth_edge::Edge;
use berth_store::Store;
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// The HTTP client towards the CA: the system roots plus `ca_file`.
fn http_client(settings: &AcmeSettings) -> anyhow::Result<Box<dyn instant_acme::HttpClient>> {
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
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// The account for the directory: restored from the store, else created
/// (terms agreed) and its credentials stored sealed.
pub async fn account(settings: &AcmeSettings, store: &dyn Store) -> anyhow::Result<Account> {
    let builder = Account::builder_with_http(http_client(settings)?);
    if let Some(json) = store.acme_account(&settings.directory).await? {
        let creds: AccountCredentials =
            serde_json::from_str(&json).context("stored ACME account credentials")?;
        return builder
            .from_credentials(creds)
            .await
            .context("cannot restore the ACME account");
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(|s| s.as_str()).collect();
    let (account, creds) = builder
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
        .with_context(|| format!("cannot create an ACME account at {}", settings.directory))?;
    store
        .put_acme_account(&settings.directory, &serde_json::to_string(&creds)?)
        .await?;
    Ok(account)
}

/// Obtains a certificate for `host`; the edge answers the challenges while
/// the CA validates, and forgets them afterwards whatever happens.
pub async fn obtain(account: &Account, edge: &Edge, host: &str) -> anyhow::Result<Issued> {
    let mut tokens = Vec::new();
    let result = obtain_inner(account, edge, host, &mut tokens).await;
    for t in &tokens {
        edge.remove_acme_challenge(t);
    }
    result
}

async fn obtain_inner(
    account: &Account,
    edge: &Edge,
    host: &str,
    tokens: &mut Vec<String>,
) -> anyhow::Result<Issued> {
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("new order")?;
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.context("authorization")?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(anyhow!("authorization is {other:?}")),
            }
            let mut ch = a
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow!("the CA offers no http-01 challenge"))?;
            edge.set_acme_challenge(&ch.token, ch.key_authorization().as_str());
            tokens.push(ch.token.clone());
            ch.set_ready().await.context("challenge ready")?;
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(120));
    let status = order.poll_ready(&retry).await.context("validation")?;
    if status != OrderStatus::Ready {
        // The reason is in the challenge's error.
        let mut why = format!("order is {status:?}");
        let mut authzs = order.authorizations();
        while let Some(Ok(a)) = authzs.next().await {
            for c in &a.challenges {
                if let Some(e) = &c.error {
                    why = format!("{why}: {e}");
                }
            }
        }
        return Err(anyhow!(why));
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .context("certificate")?;
    let not_after = not_after(&chain_pem)?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// The end of validity of the first certificate of a PEM chain.
pub fn not_after(chain_pem: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate in the chain"))??;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow!("cannot parse the certificate: {e}"))?;
    let ts = cert.validity().not_after.timestamp();
    chrono::DateTime::from_timestamp(ts, 0).ok_or_else(|| anyhow!("notAfter out of range"))
}

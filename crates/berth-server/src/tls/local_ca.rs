//! The local certificate authority: generated once into the data dir, it
//! signs a certificate for each routed name under `localhost` (one name per
//! leaf: OpenSSL-based clients refuse a `*.localhost` wildcard), so
//! `https://<app>.localhost:<port>` works on the server itself once the
//! CA (`<data-dir>/tls/local-ca.pem`) is trusted. Its private key is sealed
//! with the store's cipher (`local-ca.key.sealed`), never kept in clear.

use anyhow::Context;
use berth_store::Cipher;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

const CA_CERT: &str = "local-ca.pem";
const CA_KEY: &str = "local-ca.key.sealed";
const AAD: &str = "tls/local-ca";

/// The local CA, loaded or created.
pub struct LocalCa {
    pub cert_path: PathBuf,
    pub cert_pem: String,
    key: KeyPair,
}

/// The CA's parameters; the same every time, so a leaf signed with the
/// persisted key chains to the persisted certificate.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth local CA");
    dn.push(DnType::OrganizationName, "berth");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

impl LocalCa {
    /// Loads the CA from `<dir>`, or generates it there (valid 10 years).
    pub fn load_or_create(dir: &Path, cipher: &Cipher) -> anyhow::Result<LocalCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if let (Ok(cert_pem), Ok(sealed)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            let key_pem = cipher
                .open(AAD, sealed.trim())
                .context("cannot open the local CA key (was the master key changed?)")?;
            let key = KeyPair::from_pem(&key_pem).context("local CA key")?;
            return Ok(LocalCa {
                cert_path,
                cert_pem,
                key,
            });
        }
        let key = KeyPair::generate().context("cannot generate the local CA key")?;
        let mut params = ca_params();
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(3650);
        let cert = params
            .self_signed(&key)
            .context("cannot sign the local CA")?;
        let sealed = cipher.seal(AAD, &key.serialize_pem());
        berth_store::crypto::write_private(&key_path, format!("{sealed}\n").as_bytes())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(LocalCa {
            cert_path,
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A new leaf for `names`, valid `days` days: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str], days: i64) -> anyhow::Result<(String, String)> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).context("leaf names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth local");
        params.distinguished_name = dn;
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(days);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().context("cannot generate a leaf key")?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("cannot sign the leaf")?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

/// A self-signed certificate for no real name: what an unknown SNI gets.
pub fn fallback() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["unknown-host.berth.invalid".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "berth: no application is served at this host",
    );
    params.distinguished_name = dn;
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(3650);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn verify(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_localhost_certificate_validates_against_the_generated_ca_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = Cipher::from_key([7; 32]);
        let ca = LocalCa::load_or_create(dir.path(), &cipher).unwrap();
        // The key is sealed on disk; the certificate is a plain PEM.
        let sealed = std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"));
        // Loaded again (a restart): same CA, and its new leaves chain to it.
        let again = LocalCa::load_or_create(dir.path(), &cipher).unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        for name in ["shop.localhost", "api-shop-pr-4.localhost", "localhost"] {
            let (chain, key) = again.issue(&[name], 90).unwrap();
            assert!(berth_edge::certified_key(&chain, &key).is_ok());
            verify(&ca.cert_pem, &chain, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(verify(&ca.cert_pem, &chain, "other.localhost").is_err());
        }
        // Why one name per leaf: a `*.localhost` wildcard (one label under
        // a single-label name) is refused by webpki as by OpenSSL.
        let (chain, _) = again.issue(&["*.localhost"], 90).unwrap();
        assert!(verify(&ca.cert_pem, &chain, "any.localhost").is_err());
        let (chain, _) = again.issue(&["shop.localhost"], 90).unwrap();
        // Not for other names, and not against another CA.
        assert!(verify(&ca.cert_pem, &chain, "shop.example.com").is_err());
        let other = tempfile::tempdir().unwrap();
        let other_ca = LocalCa::load_or_create(other.path(), &cipher).unwrap();
        assert!(verify(&other_ca.cert_pem, &chain, "shop.localhost").is_err());
        // A wrong master key cannot open it.
        assert!(LocalCa::load_or_create(dir.path(), &Cipher::from_key([8; 32])).is_err());
    }

    #[test]
    fn the_fallback_certificate_names_no_real_host() {
        let (chain, key) = fallback().unwrap();
        assert!(berth_edge::certified_key(&chain, &key).is_ok());
    }
}

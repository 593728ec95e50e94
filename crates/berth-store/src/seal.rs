//! Which values are sealed, and where each belongs: the one place every
//! backend seals and opens secrets.
//!
//! A backend never calls [`Cipher`] itself: it names the [`Secret`] a value
//! is (which binds it to its row through the associated data) and stores
//! only what [`Sealer::seal`] returns. A sealed value copied to another row
//! fails to open instead of leaking.

use crate::crypto::Cipher;
use crate::StoreError;

/// A secret and the row it belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Secret<'a> {
    /// A secret variable's value.
    Variable {
        project: &'a str,
        environment: &'a str,
        key: &'a str,
    },
    /// A project's webhook secret.
    Webhook(&'a str),
    /// The userinfo part of a project's repository URL.
    RepoCredentials(&'a str),
    /// A project's SSH deploy key.
    DeployKey(&'a str),
    /// The private key of a hostname's TLS certificate.
    TlsKey(&'a str),
    /// ACME account credentials of a directory URL.
    AcmeAccount(&'a str),
    /// A notification endpoint's URL (its path may be its secret).
    NotifyUrl(&'a str),
    /// The TSIG key (`name:algorithm:secret`) of a DNS server taking
    /// RFC 2136 updates for ACME DNS-01.
    DnsUpdateKey(&'a str),
    /// A notification endpoint's signing secret.
    NotifySecret(&'a str),
    /// A fixed value sealed at a store's first start: whether a master key
    /// opens this store's secrets.
    KeyCheck,
}

impl Secret<'_> {
    /// The associated data: names the row, so a value only opens there.
    pub fn aad(&self) -> String {
        match self {
            Secret::Variable {
                project,
                environment,
                key,
            } => format!("var/{project}/{environment}/{key}"),
            Secret::Webhook(p) => format!("webhook/{p}"),
            Secret::RepoCredentials(p) => format!("repo-credentials/{p}"),
            Secret::DeployKey(p) => format!("deploy-key/{p}"),
            Secret::TlsKey(h) => format!("tls-key/{h}"),
            Secret::AcmeAccount(d) => format!("acme-account/{d}"),
            Secret::NotifyUrl(id) => format!("notify-url/{id}"),
            Secret::DnsUpdateKey(server) => format!("dns-update-key/{server}"),
            Secret::NotifySecret(id) => format!("notify-secret/{id}"),
            Secret::KeyCheck => "key-check".into(),
        }
    }

    /// What the secret is, for error messages (never its value).
    pub fn describe(&self) -> String {
        match self {
            Secret::Variable {
                project,
                environment,
                key,
            } => format!("variable {key} of {project}/{environment}"),
            Secret::Webhook(p) => format!("webhook secret of {p}"),
            Secret::RepoCredentials(p) => format!("repository credentials of {p}"),
            Secret::DeployKey(p) => format!("deploy key of {p}"),
            Secret::TlsKey(h) => format!("tls key of {h}"),
            Secret::AcmeAccount(d) => format!("acme account of {d}"),
            Secret::NotifyUrl(id) => format!("url of notification {id}"),
            Secret::DnsUpdateKey(server) => format!("tsig key of dns server {server}"),
            Secret::NotifySecret(id) => format!("secret of notification {id}"),
            Secret::KeyCheck => "key check".into(),
        }
    }
}

/// Seals values before they reach a database and opens them on read.
#[derive(Clone, Debug)]
pub struct Sealer {
    cipher: Cipher,
}

impl Sealer {
    pub fn new(cipher: Cipher) -> Self {
        Sealer { cipher }
    }

    pub fn seal(&self, what: Secret<'_>, clear: &str) -> String {
        self.cipher.seal(&what.aad(), clear)
    }

    pub fn open(&self, what: Secret<'_>, sealed: &str) -> Result<String, StoreError> {
        self.cipher
            .open(&what.aad(), sealed)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", what.describe())))
    }

    /// Opens an optional sealed column.
    pub fn open_opt(
        &self,
        what: Secret<'_>,
        sealed: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        sealed.map(|s| self.open(what, s)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_where_it_was_sealed() {
        let s = Sealer::new(Cipher::from_key([3; 32]));
        let v = Secret::Variable {
            project: "shop",
            environment: "production",
            key: "API_KEY",
        };
        let sealed = s.seal(v, "hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open(v, &sealed).unwrap(), "hunter2");
        let other = Secret::Variable {
            project: "shop",
            environment: "staging",
            key: "API_KEY",
        };
        let e = s.open(other, &sealed).unwrap_err().to_string();
        assert!(e.contains("variable API_KEY of shop/staging"), "{e}");
        assert!(!e.contains("hunter2"));
        assert!(s.open(Secret::Webhook("shop"), &sealed).is_err());
        assert_eq!(s.open_opt(v, None).unwrap(), None);
    }
}

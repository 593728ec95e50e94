//! Secret encryption at rest: XChaCha20-Poly1305 with a 256-bit master key.
//!
//! A sealed value is `v1:` + base64(nonce ‖ ciphertext). The associated data
//! names where the value belongs (project, environment, key), so a sealed
//! value copied to another row fails to open instead of leaking.
//!
//! The key comes from `BERTH_MASTER_KEY` (base64 of 32 bytes) or from
//! `<data-dir>/master.key`, created with mode 0600 on first start.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("BERTH_MASTER_KEY must be the base64 encoding of 32 bytes")]
    BadEnvKey,
    #[error("master key file {path} is not the base64 encoding of 32 bytes")]
    BadKeyFile { path: String },
    #[error("cannot read or create master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("a sealed value could not be opened (wrong master key or corrupted data)")]
    Open,
}

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let bytes = B64.decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

impl Cipher {
    pub fn from_key(key: [u8; 32]) -> Self {
        Cipher {
            aead: XChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// The key from `env_key` (the value of BERTH_MASTER_KEY) when given,
    /// else from `<data_dir>/master.key`, created when missing.
    pub fn load(data_dir: &Path, env_key: Option<&str>) -> Result<Self, CryptoError> {
        if let Some(k) = env_key.filter(|k| !k.is_empty()) {
            return decode_key(k)
                .map(Self::from_key)
                .ok_or(CryptoError::BadEnvKey);
        }
        let path = data_dir.join("master.key");
        let shown = path.display().to_string();
        let io_err = |source| CryptoError::KeyFile {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => decode_key(&text)
                .map(Self::from_key)
                .ok_or(CryptoError::BadKeyFile {
                    path: shown.clone(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(&path, B64.encode(key).as_bytes()).map_err(io_err)?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    pub fn seal(&self, aad: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("xchacha20poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v1:{}", B64.encode(out))
    }

    pub fn open(&self, aad: &str, sealed: &str) -> Result<String, CryptoError> {
        let raw = sealed
            .strip_prefix("v1:")
            .and_then(|b| B64.decode(b).ok())
            .ok_or(CryptoError::Open)?;
        if raw.len() < 24 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = raw.split_at(24);
        let pt = self
            .aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Open)
    }
}

/// Write a file readable by its owner only (0600), durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let c = Cipher::from_key([7; 32]);
        let s = c.seal("p/e/K", "hunter2");
        assert!(s.starts_with("v1:"));
        assert!(!s.contains("hunter2"));
        assert_eq!(c.open("p/e/K", &s).unwrap(), "hunter2");
        assert!(c.open("p/e/OTHER", &s).is_err());
        assert!(Cipher::from_key([8; 32]).open("p/e/K", &s).is_err());
        assert_ne!(c.seal("p/e/K", "hunter2"), s, "nonces are random");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cipher::load(dir.path(), None).unwrap();
        let sealed = a.seal("x", "v");
        let b = Cipher::load(dir.path(), None).unwrap();
        assert_eq!(b.open("x", &sealed).unwrap(), "v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            Cipher::load(dir.path(), Some("short")),
            Err(CryptoError::BadEnvKey)
        ));
    }
}

//! Sticky canary assignment: a visitor stays on the version it first got
//! for the whole rollout.
//!
//! A route is *under canary* when its targets with a weight above 0 run more
//! than one deployment (`TargetSpec::deployment_id`); only such a route
//! looks at cookies at all, so the common request pays nothing. On it:
//! * a request pinned to one of those deployments goes there: by the
//!   header [`PIN_HEADER`] or by the cookie [`COOKIE`], whose value is a
//!   *pin value* `<deployment id>.<mac>` (an HMAC-SHA256 of the id under the
//!   edge's key, 24 hex digits); a value that does not verify, or names a
//!   deployment the route does not weigh, is ignored;
//! * any other request is split by weight as usual, and its response sets
//!   the cookie to the pin value of the deployment that answered
//!   (`HttpOnly; SameSite=Lax; Path=/`, no `Domain`, so the browser keeps
//!   it for this hostname only; it holds no personal data). A client that
//!   keeps cookies stays on that deployment; one that does not (an API
//!   client) is split per request.
//!
//! When the rollout ends the route has one deployment again and the cookie
//! is ignored (and no longer set). The pin values the edge issues are the
//! only ones it accepts, so a visitor cannot pick a version by editing the
//! cookie; the server hands out the same values to holders of an API token
//! (`GET /api/v1/deployments/<id>/pin`), for testing a version on purpose.
//! The key lives in a file beside the routes (0600), so a restarted or
//! taken-over berth keeps honouring the cookies it gave.

use std::io::Write as _;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::select::Picker;

/// The cookie that keeps a visitor on one version.
pub const COOKIE: &str = "berth_rollout";
/// The request header that pins a request to a version (its value: a pin
/// value). The edge removes it before forwarding.
pub const PIN_HEADER: &str = "x-berth-deployment";
/// How long a browser keeps the cookie (a day: longer than any rollout).
const MAX_AGE_SECS: u32 = 86_400;
/// Hex digits of the MAC in a pin value (96 bits).
const MAC_HEX: usize = 24;

/// The edge's key for pin values.
#[derive(Clone)]
pub(crate) struct PinKey([u8; 32]);

impl std::fmt::Debug for PinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinKey(..)")
    }
}

impl PinKey {
    /// A fresh random key (kept in memory only).
    pub(crate) fn random() -> PinKey {
        PinKey(rand::random())
    }

    /// The key in `path`, created (mode 0600) when absent.
    pub(crate) fn load_or_create(path: &Path) -> std::io::Result<PinKey> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the key file does not hold 32 bytes",
                    )
                })?;
                Ok(PinKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PinKey::random();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(path)?;
                f.write_all(&key.0)?;
                f.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The pin value of a deployment: `<id>.<mac>`.
    pub(crate) fn value(&self, deployment_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"berth pin v1\0");
        mac.update(deployment_id.as_bytes());
        let sum = mac.finalize().into_bytes();
        let mut out = String::with_capacity(deployment_id.len() + 1 + MAC_HEX);
        out.push_str(deployment_id);
        out.push('.');
        for b in &sum[..MAC_HEX / 2] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// True when `id` can sit in a cookie value as it is.
fn cookie_safe(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One deployment of a route under canary.
#[derive(Debug)]
struct Version {
    /// Its pin value.
    pin: Box<[u8]>,
    /// The `Set-Cookie` values that keep a visitor on it: plain HTTP, and
    /// HTTPS (with `Secure`).
    set_cookie: [http::HeaderValue; 2],
    /// Picks among its own targets (replicas), by their weights.
    picker: Picker,
}

/// The versions of a route under canary.
#[derive(Debug)]
pub(crate) struct Sticky {
    versions: Box<[Version]>,
    /// For each target of the route, the version it belongs to (if any).
    of_target: Box<[Option<usize>]>,
}

impl Sticky {
    /// `targets`: each target's deployment id and weight, in route order.
    /// `None` unless the weighted targets run two deployments or more.
    pub(crate) fn new(key: &PinKey, targets: &[(Option<&str>, u32)]) -> Option<Sticky> {
        let mut ids: Vec<&str> = Vec::new();
        for (id, w) in targets {
            match id {
                Some(id) if *w > 0 && cookie_safe(id) && !ids.contains(id) => ids.push(id),
                Some(id) if *w > 0 && cookie_safe(id) => {}
                // a weighted target we cannot name: no pinning on this route
                _ if *w > 0 => return None,
                _ => {}
            }
        }
        if ids.len() < 2 {
            return None;
        }
        let mut versions = Vec::with_capacity(ids.len());
        for id in &ids {
            let weights: Vec<u32> = targets
                .iter()
                .map(|(t, w)| if *t == Some(*id) { *w } else { 0 })
                .collect();
            let pin = key.value(id);
            let cookie =
                format!("{COOKIE}={pin}; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax");
            versions.push(Version {
                set_cookie: [
                    http::HeaderValue::from_str(&cookie).ok()?,
                    http::HeaderValue::from_str(&format!("{cookie}; Secure")).ok()?,
                ],
                pin: pin.into_bytes().into_boxed_slice(),
                picker: Picker::new(&weights)?,
            });
        }
        let of_target = targets
            .iter()
            .map(|(t, w)| {
                let t = (*w > 0).then_some(*t).flatten()?;
                ids.iter().position(|id| *id == t)
            })
            .collect();
        Some(Sticky {
            versions: versions.into_boxed_slice(),
            of_target,
        })
    }

    /// The target of a request that carries the pin value `pin`, if it
    /// names one of this route's versions.
    pub(crate) fn pinned(&self, pin: &[u8]) -> Option<usize> {
        let pin = pin.trim_ascii();
        self.versions
            .iter()
            .find(|v| constant_time_eq(&v.pin, pin))
            .map(|v| v.picker.pick())
    }

    /// The target of a request whose `Cookie` header values are `cookies`,
    /// if one of our cookies names one of this route's versions.
    pub(crate) fn by_cookie<'a>(&self, cookies: impl Iterator<Item = &'a [u8]>) -> Option<usize> {
        cookies
            .flat_map(|v| v.split(|b| *b == b';'))
            .filter_map(|pair| {
                let (name, value) = split_pair(pair)?;
                (name == COOKIE.as_bytes()).then_some(value)
            })
            .find_map(|value| {
                self.pinned(
                    value
                        .strip_prefix(b"\"")
                        .map_or(value, |v| v.strip_suffix(b"\"").unwrap_or(v)),
                )
            })
    }

    /// The `Set-Cookie` value for a visitor given `target` (`secure`: the
    /// request came over HTTPS).
    pub(crate) fn cookie_for(&self, target: usize, secure: bool) -> Option<&http::HeaderValue> {
        let v = (*self.of_target.get(target)?)?;
        Some(&self.versions[v].set_cookie[usize::from(secure)])
    }
}

fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|b| *b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(targets: &[(Option<&str>, u32)]) -> (PinKey, Option<Sticky>) {
        let key = PinKey::random();
        let s = Sticky::new(&key, targets);
        (key, s)
    }

    #[test]
    fn only_routes_with_two_weighted_deployments_are_sticky() {
        assert!(sticky(&[(Some("a"), 100)]).1.is_none());
        assert!(
            sticky(&[(Some("a"), 50), (Some("a"), 50)]).1.is_none(),
            "replicas"
        );
        assert!(sticky(&[(Some("a"), 100), (Some("b"), 0)]).1.is_none());
        assert!(sticky(&[(Some("a"), 75), (None, 25)]).1.is_none());
        assert!(sticky(&[(Some("a"), 75), (Some("b b"), 25)]).1.is_none());
        assert!(sticky(&[(Some("a"), 75), (Some("b"), 25)]).1.is_some());
    }

    #[test]
    fn a_valid_cookie_or_pin_keeps_its_version_and_others_are_ignored() {
        let targets = [(Some("old"), 75), (Some("new"), 20), (Some("new"), 5)];
        let (key, s) = sticky(&targets);
        let s = s.unwrap();
        let new_pin = key.value("new");
        assert!(new_pin.starts_with("new.") && new_pin.len() == 4 + MAC_HEX);
        for _ in 0..50 {
            let t = s.pinned(new_pin.as_bytes()).unwrap();
            assert!(t == 1 || t == 2, "{t}");
        }
        assert_eq!(s.pinned(key.value("old").as_bytes()), Some(0));
        // another key's value, an edited MAC, a bare id: not a pin
        let other = PinKey::random().value("new");
        assert_eq!(s.pinned(other.as_bytes()), None);
        let mut edited = new_pin.clone().into_bytes();
        *edited.last_mut().unwrap() ^= 1;
        assert_eq!(s.pinned(&edited), None);
        assert_eq!(s.pinned(b"new"), None);
        assert_eq!(s.pinned(key.value("gone").as_bytes()), None);

        let header = format!("a=1; {COOKIE}={}; b=2", key.value("old"));
        assert_eq!(s.by_cookie([header.as_bytes()].into_iter()), Some(0));
        let quoted = format!("{COOKIE}=\"{new_pin}\"");
        assert!(s
            .by_cookie([b"x=y".as_slice(), quoted.as_bytes()].into_iter())
            .is_some());
        assert_eq!(
            s.by_cookie([b"berth_rollout_x=1; other=2".as_slice()].into_iter()),
            None
        );

        let c = s.cookie_for(0, false).unwrap().to_str().unwrap();
        assert_eq!(
            c,
            format!(
                "{COOKIE}={}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax",
                key.value("old")
            )
        );
        assert_eq!(s.cookie_for(2, false), s.cookie_for(1, false));
        let secure = s.cookie_for(0, true).unwrap().to_str().unwrap();
        assert!(secure.ends_with("SameSite=Lax; Secure"), "{secure}");
    }

    #[test]
    fn the_key_is_kept_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edge.key");
        let a = PinKey::load_or_create(&p).unwrap();
        let b = PinKey::load_or_create(&p).unwrap();
        assert_eq!(a.value("x"), b.value("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, b"short").unwrap();
        assert!(PinKey::load_or_create(&p).is_err());
    }
}

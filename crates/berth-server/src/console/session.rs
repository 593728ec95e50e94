//! Console sign-in sessions and their CSRF tokens.
//!
//! Invariants: a session id and its CSRF token are 32 random bytes (hex)
//! from the OS generator; a session lives 12 hours from sign-in and is kept
//! in memory only (a restart signs everyone out); CSRF tokens are compared
//! in constant time; at most [`MAX_SESSIONS`] live at once (the oldest go
//! first), so sign-ins cannot grow memory without bound.

use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "berth_session";
/// How long a session lives after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    csrf: String,
    expires: Instant,
}

/// Console sign-in sessions: session id → CSRF token and expiry.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// A new session; returns its id and CSRF token.
    pub fn create(&self) -> (String, String) {
        self.create_at(Instant::now())
    }

    fn create_at(&self, now: Instant) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| s.expires > now);
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    m.remove(&k);
                }
                None => break,
            }
        }
        m.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + LIFETIME,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str) -> Option<String> {
        self.csrf_at(id, Instant::now())
    }

    fn csrf_at(&self, id: &str, now: Instant) -> Option<String> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(id) {
            Some(s) if s.expires > now => Some(s.csrf.clone()),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
        }
    }

    /// Sign out.
    pub fn remove(&self, id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Whether a form's CSRF token is the session's (constant time).
pub fn csrf_ok(want: &str, given: &str) -> bool {
    !want.is_empty() && crate::api::token_matches(given.as_bytes(), want.as_bytes())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The session id the request carries, if it looks like one.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE).filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` value that signs a browser in.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// `Set-Cookie` value that signs a browser out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Whether a state-changing request comes from this origin: browsers send
/// `Origin` on form posts; when present its host must be the `Host` header.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_are_random_expire_and_sign_out() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let (a, csrf_a) = s.create_at(t0);
        let (b, csrf_b) = s.create_at(t0);
        assert_ne!(a, b);
        assert_ne!(csrf_a, csrf_b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.csrf_at(&a, t0).as_deref(), Some(csrf_a.as_str()));
        assert_eq!(s.csrf_at("nope", t0), None);
        // Expired after 12 hours.
        assert_eq!(s.csrf_at(&a, t0 + LIFETIME), None);
        assert_eq!(s.csrf_at(&a, t0), None, "an expired session is forgotten");
        s.remove(&b);
        assert_eq!(s.csrf_at(&b, t0), None);
    }

    #[test]
    fn csrf_compare() {
        assert!(csrf_ok("abc", "abc"));
        assert!(!csrf_ok("abc", "abd"));
        assert!(!csrf_ok("abc", ""));
        assert!(!csrf_ok("", ""), "an empty token never matches");
    }

    #[test]
    fn cookie_parsing() {
        let id = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={id}; y=2")).unwrap(),
        );
        assert_eq!(session_id(&h), Some(id.as_str()));
        assert_eq!(cookie(&h, "y"), Some("2"));
        let mut bad = HeaderMap::new();
        bad.insert(
            header::COOKIE,
            HeaderValue::from_static("berth_session=../../etc"),
        );
        assert_eq!(session_id(&bad), None);
        assert_eq!(session_id(&HeaderMap::new()), None);
    }

    #[test]
    fn origin_check() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        assert!(same_origin(&h), "no Origin header: not a cross-site form");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7070"),
        );
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}

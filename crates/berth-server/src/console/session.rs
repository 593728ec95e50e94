//! Console sign-in sessions and their CSRF tokens.
//!
//! Invariants: a session id is 32 random bytes (hex) from the OS
//! generator, sent only in an `HttpOnly; SameSite=Strict` cookie (`Secure`
//! when the console is reached over HTTPS); the store keeps its SHA-256
//! and the name of the token that signed in, never the id, so sessions
//! survive a restart and a database dump opens none; a session lives 12
//! hours; its CSRF token is derived from the id (a keyed digest nobody
//! without the cookie can compute) and compared in constant time.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Name of the session cookie.
pub const COOKIE: &str = "berth_session";
/// How long a session lives after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A new session id.
pub fn new_id() -> String {
    crate::access::random_secret("")
}

/// The CSRF token of a session: its forms carry it.
pub fn csrf_of(sid: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"berth console csrf\0");
    h.update(sid.as_bytes());
    hex::encode(h.finalize())
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

/// `Set-Cookie` value that signs a browser in (`Secure` over HTTPS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` value that signs a browser out.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the browser reached the console over HTTPS: the form's `Origin`
/// is `https://…`, or berth's own edge said so (`edge_https`: the request
/// came through the console host's private listener with the edge's
/// `X-Forwarded-Proto: https`, see [`super::host`]). An `X-Forwarded-Proto`
/// sent straight to `--api-listen` is not believed.
pub fn over_https(headers: &HeaderMap, edge_https: bool) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    origin || edge_https
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
    fn session_ids_are_random_and_csrf_is_derived() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(csrf_of(&a), csrf_of(&a));
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert_ne!(
            csrf_of(&a),
            crate::access::digest(&a),
            "not the stored hash"
        );
    }

    #[test]
    fn secure_cookie_over_https_only() {
        assert!(set_cookie("x", true).ends_with("; Secure"));
        assert!(!set_cookie("x", false).contains("Secure"));
        let mut h = HeaderMap::new();
        assert!(!over_https(&h, false));
        assert!(over_https(&h, true), "the edge said https");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(!over_https(&h, false), "only berth's own edge is believed");
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://console.example"),
        );
        assert!(over_https(&h, false));
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

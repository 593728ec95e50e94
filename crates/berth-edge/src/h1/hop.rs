//! Hop-by-hop headers (RFC 9110 7.6.1 plus the usual non-standard ones):
//! never forwarded, in either direction, nor any header a `Connection`
//! header names.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The hop-by-hop header names, lowercase.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

const CONNECTION: usize = 0;
const UPGRADE: usize = 6;

/// The index of `name` in [`HOP_BY_HOP`], compared without regard to case.
pub(crate) fn hop_index(name: &[u8]) -> Option<usize> {
    let eq = |i: usize| name.eq_ignore_ascii_case(HOP_BY_HOP[i].as_bytes());
    let i = match name.len() {
        2 => 3,
        7 if eq(4) => return Some(4),
        7 => 6,
        10 if eq(0) => return Some(0),
        10 => 1,
        16 => 2,
        17 => 5,
        18 => 8,
        19 => 7,
        _ => return None,
    };
    eq(i).then_some(i)
}

/// True for a hop-by-hop header name (any case).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_index(name).is_some()
}

/// Removes hop-by-hop headers and every header named in `Connection`.
/// Returns the `Upgrade` value if `keep_upgrade` and the message asks for an
/// upgrade (`Connection: upgrade` + `Upgrade`).
pub(crate) fn strip(headers: &mut HeaderMap, keep_upgrade: bool) -> Option<HeaderValue> {
    // One pass over the (few) names notes which hop-by-hop headers are
    // present; only those are then removed.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_index(k.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return None;
    }
    let mut wants_upgrade = false;
    if present & (1 << CONNECTION) != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for t in headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let t = t.trim();
            if t.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            } else if is_hop_by_hop(t.as_bytes()) {
                // removed below
            } else if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                named.push(n);
            }
        }
        for n in named {
            headers.remove(&n);
        }
    }
    let upgrade = if keep_upgrade && wants_upgrade && present & (1 << UPGRADE) != 0 {
        headers.get(http::header::UPGRADE).cloned()
    } else {
        None
    };
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn every_listed_name_and_only_those_are_hop_by_hop() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name.as_bytes()), Some(i), "{name}");
            assert_eq!(hop_index(name.to_uppercase().as_bytes()), Some(i), "{name}");
        }
        for other in [
            "host",
            "tex",
            "trailers",
            "upgrade-insecure-requests",
            "x",
            "",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("x"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(strip(&mut h, true).is_none(), "no Connection: upgrade");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_is_kept_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut h2 = h.clone();
        assert_eq!(strip(&mut h, true).unwrap(), "websocket");
        assert!(strip(&mut h2, false).is_none());
        assert!(h.is_empty() && h2.is_empty());
    }
}

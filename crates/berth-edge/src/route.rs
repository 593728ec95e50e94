//! Route model (what the control plane sends) and its validation.
//!
//! Everything here is pure: no IO, no tokio. [`validate_batch`] is the single
//! gate every route change goes through, on `apply` and when persisted routes
//! are loaded at start.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// Longest DNS name we accept (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// What to do with the requests of one hostname.
///
/// An empty `targets` list is allowed: the route exists but nothing is
/// healthy, so the edge answers 503 instead of 404.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RouteSpec {
    pub targets: Vec<TargetSpec>,
    /// Who may reach the route and how much (see `policy.rs`).
    #[serde(default, skip_serializing_if = "Policy::is_open")]
    pub policy: Policy,
}

/// One upstream of a route.
///
/// `id` is the target's identity (a deployment id, or `ext:<host>` for an
/// external upstream): in-flight counters and metrics follow the id across
/// route swaps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub id: String,
    /// `host:port`, for example `127.0.0.1:32768` or `[::1]:8080`.
    pub upstream: String,
    /// Relative share of the route's requests; 0 keeps the target known
    /// (metrics, drain) but sends it nothing.
    pub weight: u32,
    /// The deployment the target runs, named by the edge's own error pages
    /// (never the upstream address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The full commit SHA of that deployment's build; error pages show its
    /// first 7 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
}

/// One change of the route table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RouteChange {
    /// Create or replace the route of `host`.
    Upsert { host: String, route: RouteSpec },
    /// Remove the route of `host`; removing an unknown host is a no-op, so a
    /// reconciler can repeat itself.
    Remove { host: String },
}

/// Why a batch of route changes was refused (the table is left untouched).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("invalid host {host:?}: {rule}")]
    InvalidHost { host: String, rule: &'static str },
    #[error("route {host}: target {id:?}: invalid upstream {upstream:?}: {rule}")]
    InvalidUpstream {
        host: String,
        id: String,
        upstream: String,
        rule: &'static str,
    },
    #[error("route {host}: {rule}")]
    InvalidTargets { host: String, rule: String },
    #[error("cannot persist routes to {path}: {source}")]
    Persist {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Normalises a configured hostname: lowercase, no trailing dot, RFC 1123
/// labels, an optional leading `*.` wildcard label.
pub(crate) fn normalize_config_host(host: &str) -> Result<String, RouteError> {
    let bad = |rule| RouteError::InvalidHost {
        host: host.to_string(),
        rule,
    };
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if h.is_empty() {
        return Err(bad("hostname is empty"));
    }
    if h.len() > MAX_HOST_LEN {
        return Err(bad("hostname is longer than 253 characters"));
    }
    let (labels, wildcard) = match h.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (h.as_str(), false),
    };
    if wildcard && !labels.contains('.') {
        return Err(bad("a wildcard needs at least two labels after `*.`"));
    }
    for label in labels.split('.') {
        check_label(label).map_err(bad)?;
    }
    Ok(h)
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > MAX_LABEL_LEN {
        return Err("label longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(
            "labels may only hold letters, digits and `-` (a `*` only as the whole first label)",
        );
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label cannot start or end with `-`");
    }
    Ok(())
}

/// Checks `host:port` (IPv6 in brackets); returns the rule broken.
pub(crate) fn check_upstream(upstream: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = upstream.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("unclosed `[`")?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address inside `[]`");
        }
        (None, after.strip_prefix(':').ok_or("expected host:port")?)
    } else {
        let (h, p) = upstream.rsplit_once(':').ok_or("expected host:port")?;
        (Some(h), p)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => {}
        _ => return Err("port must be a number from 1 to 65535"),
    }
    if let Some(h) = host {
        if h.is_empty() || h.len() > MAX_HOST_LEN {
            return Err("host is empty or too long");
        }
        let h = h.to_ascii_lowercase();
        for label in h.split('.') {
            check_label(&label.replace('_', "-"))?;
        }
    }
    // The URI layer must accept it too (it is what the client dials).
    upstream
        .parse::<http::uri::Authority>()
        .map_err(|_| "not a valid URI authority")?;
    Ok(())
}

fn check_route(host: &str, route: &RouteSpec) -> Result<(), RouteError> {
    let targets_err = |rule: String| RouteError::InvalidTargets {
        host: host.to_string(),
        rule,
    };
    let mut ids = HashSet::new();
    for t in &route.targets {
        if t.id.is_empty() {
            return Err(targets_err("a target id is empty".into()));
        }
        if !ids.insert(t.id.as_str()) {
            return Err(targets_err(format!("target id {:?} appears twice", t.id)));
        }
        check_upstream(&t.upstream).map_err(|rule| RouteError::InvalidUpstream {
            host: host.to_string(),
            id: t.id.clone(),
            upstream: t.upstream.clone(),
            rule,
        })?;
    }
    if !route.targets.is_empty() && route.targets.iter().all(|t| t.weight == 0) {
        return Err(targets_err(
            "at least one target needs a weight above 0 (or give no targets for 503)".into(),
        ));
    }
    crate::policy::check(&route.policy).map_err(targets_err)?;
    let total: u64 = route.targets.iter().map(|t| u64::from(t.weight)).sum();
    if total > u64::from(u32::MAX) {
        return Err(targets_err("the sum of weights exceeds 2^32-1".into()));
    }
    Ok(())
}

/// Applies `changes` to a copy of `current` after validating every one of
/// them; the first invalid change refuses the whole batch.
pub(crate) fn validate_batch(
    current: &BTreeMap<String, RouteSpec>,
    changes: Vec<RouteChange>,
) -> Result<BTreeMap<String, RouteSpec>, RouteError> {
    let mut next = current.clone();
    for change in changes {
        match change {
            RouteChange::Upsert { host, route } => {
                let h = normalize_config_host(&host)?;
                check_route(&h, &route)?;
                next.insert(h, route);
            }
            RouteChange::Remove { host } => {
                let h = normalize_config_host(&host)?;
                next.remove(&h);
            }
        }
    }
    Ok(next)
}

/// The lookup key of a request's Host (or `:authority`): port and trailing
/// dot removed, lowercased only when needed. `None` for an empty host.
pub(crate) fn request_host_key(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        // a `:` followed by nothing but digits ends the name
        let b = raw.as_bytes();
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        match b.len().checked_sub(digits + 1) {
            Some(colon) if b[colon] == b':' => &raw[..colon],
            _ => raw,
        }
    };
    let h = without_port.strip_suffix('.').unwrap_or(without_port);
    if h.is_empty() {
        return None;
    }
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(h.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, up: &str, w: u32) -> TargetSpec {
        TargetSpec {
            deployment_id: None,
            sha: None,
            id: id.into(),
            upstream: up.into(),
            weight: w,
        }
    }

    #[test]
    fn hosts_are_normalised_and_checked() {
        assert_eq!(
            normalize_config_host("Shop.Example.COM.").unwrap(),
            "shop.example.com"
        );
        assert_eq!(
            normalize_config_host("*.preview.localhost").unwrap(),
            "*.preview.localhost"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "*.com",
            "a.*.com",
            "ex ample.com",
            "a:80",
        ] {
            assert!(normalize_config_host(bad).is_err(), "{bad:?} accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(normalize_config_host(&long_label).is_err());
        let long_host = vec!["abcdefghi"; 26].join(".");
        assert!(long_host.len() > 253);
        assert!(normalize_config_host(&long_host).is_err());
    }

    #[test]
    fn upstreams_are_checked() {
        for ok in [
            "127.0.0.1:32768",
            "localhost:80",
            "[::1]:8080",
            "my_svc.internal:3000",
        ] {
            assert!(check_upstream(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:x",
            ":80",
            "[::1]",
            "[zz]:80",
            "a b:80",
            "h:+80",
        ] {
            assert!(check_upstream(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_bad_change_refuses_the_whole_batch() {
        let current = BTreeMap::new();
        let err = validate_batch(
            &current,
            vec![
                RouteChange::Upsert {
                    host: "ok.localhost".into(),
                    route: RouteSpec {
                        targets: vec![t("a", "127.0.0.1:1000", 1)],
                        ..Default::default()
                    },
                },
                RouteChange::Upsert {
                    host: "bad.localhost".into(),
                    route: RouteSpec {
                        targets: vec![t("b", "127.0.0.1:1000", 0)],
                        ..Default::default()
                    },
                },
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad.localhost"), "{err}");
        assert!(err.to_string().contains("weight"), "{err}");
    }

    #[test]
    fn duplicate_ids_and_empty_routes() {
        let current = BTreeMap::new();
        let dup = validate_batch(
            &current,
            vec![RouteChange::Upsert {
                host: "x.localhost".into(),
                route: RouteSpec {
                    targets: vec![t("a", "127.0.0.1:1", 1), t("a", "127.0.0.1:2", 1)],
                    ..Default::default()
                },
            }],
        );
        assert!(dup.is_err());
        let empty = validate_batch(
            &current,
            vec![RouteChange::Upsert {
                host: "x.localhost".into(),
                route: RouteSpec::default(),
            }],
        )
        .unwrap();
        assert_eq!(empty.get("x.localhost"), Some(&RouteSpec::default()));
    }

    #[test]
    fn request_hosts_lose_port_case_and_dot() {
        assert_eq!(
            request_host_key("Shop.Localhost:8080").unwrap(),
            "shop.localhost"
        );
        assert_eq!(
            request_host_key("shop.localhost.").unwrap(),
            "shop.localhost"
        );
        assert_eq!(request_host_key("[::1]:80").unwrap(), "[::1]");
        assert!(request_host_key("").is_none());
        assert!(request_host_key(":80").is_none());
        assert!(request_host_key(":").is_none());
        assert_eq!(request_host_key("a:").unwrap(), "a");
        assert_eq!(request_host_key("a:b:80").unwrap(), "a:b");
        assert_eq!(request_host_key("a:8x").unwrap(), "a:8x");
        assert_eq!(request_host_key("8080").unwrap(), "8080");
        assert_eq!(request_host_key("host1").unwrap(), "host1");
    }
}

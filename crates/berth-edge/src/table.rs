//! The immutable route table the request path reads (through `ArcSwap`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::uri::Authority;

use crate::metrics::Series;
use crate::route::RouteSpec;
use crate::select::Picker;
use crate::sticky::{PinKey, Sticky};
use crate::target::{Registry, TargetInfo, TargetState};

/// One target as seen by one route.
#[derive(Debug)]
pub(crate) struct RouteTarget {
    pub(crate) state: Arc<TargetState>,
    pub(crate) series: Arc<Series>,
    pub(crate) authority: Authority,
    /// Pool key of `authority` (see `Registry::upstream_id`).
    pub(crate) upstream_id: u64,
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) targets: Box<[RouteTarget]>,
    /// `None` when the route has no target with weight > 0 (503).
    picker: Option<Picker>,
    /// Set when the route is under canary (see `sticky.rs`).
    pub(crate) sticky: Option<Box<Sticky>>,
}

impl Route {
    pub(crate) fn pick(&self) -> Option<&RouteTarget> {
        self.pick_index().map(|i| &self.targets[i])
    }

    pub(crate) fn pick_index(&self) -> Option<usize> {
        self.picker.as_ref().map(Picker::pick)
    }
}

/// The hash of the table's host keys. The keys are configured (trusted),
/// and a lookup of any request host costs at most the comparisons within
/// one probe group, so a multiply-rotate hash of 8 bytes at a time (then a
/// 64-bit finaliser) serves instead of SipHash, at a fraction of its cost.
#[derive(Debug, Default, Clone, Copy)]
struct HostHash(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl HostHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for HostHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

type Hosts = HashMap<Box<str>, Route, BuildHasherDefault<HostHash>>;

/// Validated routes, by normalised host. Never mutated once built.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    exact: Hosts,
    /// `*.example.com` stored under `example.com`; matches one label.
    wildcard: Hosts,
    pub(crate) specs: BTreeMap<String, RouteSpec>,
}

impl RouteTable {
    /// Builds the table; `specs` must have passed `route::validate_batch`.
    pub(crate) fn build(
        specs: BTreeMap<String, RouteSpec>,
        registry: &Registry,
        key: &PinKey,
    ) -> RouteTable {
        let mut exact = Hosts::default();
        let mut wildcard = Hosts::default();
        for (host, spec) in &specs {
            let mut targets = Vec::with_capacity(spec.targets.len());
            let mut weights = Vec::with_capacity(spec.targets.len());
            let mut versions = Vec::with_capacity(spec.targets.len());
            for t in &spec.targets {
                // validated before, but never panic: skip what does not parse
                let Ok(authority) = t.upstream.parse::<Authority>() else {
                    continue;
                };
                let state = registry.target(&t.id);
                state.set_info(TargetInfo::of(t.deployment_id.as_deref(), t.sha.as_deref()));
                targets.push(RouteTarget {
                    state,
                    series: registry.series(host, &t.id),
                    upstream_id: registry.upstream_id(authority.as_str()),
                    authority,
                });
                weights.push(t.weight);
                versions.push((t.deployment_id.as_deref(), t.weight));
            }
            let route = Route {
                picker: Picker::new(&weights),
                sticky: Sticky::new(key, &versions).map(Box::new),
                targets: targets.into_boxed_slice(),
            };
            match host.strip_prefix("*.") {
                Some(suffix) => wildcard.insert(suffix.into(), route),
                None => exact.insert(host.as_str().into(), route),
            };
        }
        RouteTable {
            exact,
            wildcard,
            specs,
        }
    }

    /// `host` is a request host key (see `route::request_host_key`).
    pub(crate) fn lookup(&self, host: &str) -> Option<&Route> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::TargetSpec;

    fn spec(id: &str) -> RouteSpec {
        RouteSpec {
            targets: vec![TargetSpec {
                deployment_id: None,
                sha: None,
                id: id.into(),
                upstream: "127.0.0.1:9".into(),
                weight: 1,
            }],
        }
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let reg = Registry::default();
        let mut specs = BTreeMap::new();
        specs.insert("*.preview.localhost".to_string(), spec("wild"));
        specs.insert("a.preview.localhost".to_string(), spec("exact"));
        let t = RouteTable::build(specs, &reg, &PinKey::random());
        let id = |h: &str| {
            t.lookup(h)
                .and_then(|r| r.pick())
                .map(|x| x.state.id.to_string())
        };
        assert_eq!(id("a.preview.localhost").as_deref(), Some("exact"));
        assert_eq!(id("b.preview.localhost").as_deref(), Some("wild"));
        assert_eq!(id("x.b.preview.localhost"), None);
        assert_eq!(id("preview.localhost"), None);
    }

    #[test]
    fn many_similar_hosts_each_find_their_route() {
        let reg = Registry::default();
        let hosts: Vec<String> = (0..500)
            .map(|i| format!("app-{i}.preview-{}.localhost", i % 7))
            .collect();
        let specs = hosts
            .iter()
            .map(|h| (h.clone(), spec(h)))
            .collect::<BTreeMap<_, _>>();
        let t = RouteTable::build(specs, &reg, &PinKey::random());
        for h in &hosts {
            let id = t
                .lookup(h)
                .and_then(|r| r.pick())
                .map(|x| x.state.id.to_string());
            assert_eq!(id.as_deref(), Some(h.as_str()));
        }
        assert!(t.lookup("app-500.preview-3.localhost").is_none());
    }

    #[test]
    fn targets_keep_identity_across_tables() {
        let reg = Registry::default();
        let mut specs = BTreeMap::new();
        specs.insert("a.localhost".to_string(), spec("dep-1"));
        let t1 = RouteTable::build(specs.clone(), &reg, &PinKey::random());
        let t2 = RouteTable::build(specs, &reg, &PinKey::random());
        let s1 = &t1.lookup("a.localhost").unwrap().targets[0];
        let s2 = &t2.lookup("a.localhost").unwrap().targets[0];
        assert!(Arc::ptr_eq(&s1.state, &s2.state));
        assert!(Arc::ptr_eq(&s1.series, &s2.series));
    }
}

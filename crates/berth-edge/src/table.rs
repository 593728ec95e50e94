//! The immutable route table the request path reads (through `ArcSwap`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::uri::Authority;

use crate::metrics::Series;
use crate::route::RouteSpec;
use crate::select::Picker;
use crate::target::{Registry, TargetState};

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
}

impl Route {
    pub(crate) fn pick(&self) -> Option<&RouteTarget> {
        self.picker.as_ref().map(|p| &self.targets[p.pick()])
    }
}

/// Validated routes, by normalised host. Never mutated once built.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    exact: HashMap<Box<str>, Route>,
    /// `*.example.com` stored under `example.com`; matches one label.
    wildcard: HashMap<Box<str>, Route>,
    pub(crate) specs: BTreeMap<String, RouteSpec>,
}

impl RouteTable {
    /// Builds the table; `specs` must have passed `route::validate_batch`.
    pub(crate) fn build(specs: BTreeMap<String, RouteSpec>, registry: &Registry) -> RouteTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (host, spec) in &specs {
            let mut targets = Vec::with_capacity(spec.targets.len());
            let mut weights = Vec::with_capacity(spec.targets.len());
            for t in &spec.targets {
                // validated before, but never panic: skip what does not parse
                let Ok(authority) = t.upstream.parse::<Authority>() else {
                    continue;
                };
                targets.push(RouteTarget {
                    state: registry.target(&t.id),
                    series: registry.series(host, &t.id),
                    upstream_id: registry.upstream_id(authority.as_str()),
                    authority,
                });
                weights.push(t.weight);
            }
            let route = Route {
                picker: Picker::new(&weights),
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
        let t = RouteTable::build(specs, &reg);
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
    fn targets_keep_identity_across_tables() {
        let reg = Registry::default();
        let mut specs = BTreeMap::new();
        specs.insert("a.localhost".to_string(), spec("dep-1"));
        let t1 = RouteTable::build(specs.clone(), &reg);
        let t2 = RouteTable::build(specs, &reg);
        let s1 = &t1.lookup("a.localhost").unwrap().targets[0];
        let s2 = &t2.lookup("a.localhost").unwrap().targets[0];
        assert!(Arc::ptr_eq(&s1.state, &s2.state));
        assert!(Arc::ptr_eq(&s1.series, &s2.series));
    }
}

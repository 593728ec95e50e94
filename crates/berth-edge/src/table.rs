//! The immutable route table the request path reads (through `ArcSwap`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::uri::Authority;

use crate::metrics::Series;
use crate::policy::Compiled;
use crate::route::RouteSpec;
use crate::select::{Balance, Picker};
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
    /// Its replica group in `Route::groups`: the targets of the same
    /// deployment (`TargetSpec::deployment_id`); a target without one is
    /// a group of its own.
    group: u32,
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) targets: Box<[RouteTarget]>,
    /// `None` when the route has no target with weight > 0 (503).
    picker: Option<Picker>,
    /// Set when the route is under canary (see `sticky.rs`).
    pub(crate) sticky: Option<Box<Sticky>>,
    /// The weighted targets of each replica group, by index in `targets`.
    groups: Box<[Box<[u32]>]>,
    balance: Balance,
    /// `None` for an open policy (see `policy.rs`).
    pub(crate) policy: Option<Box<Compiled>>,
}

impl Route {
    pub(crate) fn pick(&self) -> Option<&RouteTarget> {
        self.pick_index().map(|i| &self.targets[i])
    }

    pub(crate) fn pick_index(&self) -> Option<usize> {
        self.picker.as_ref().map(|p| self.settle(p.pick()))
    }

    /// The replica that serves a request the weights sent to target `i`:
    /// the weights choose the deployment, this the replica. Round robin
    /// keeps `i` unless it is passively down (then the next sibling that is
    /// up); least in-flight takes the sibling with the fewest requests
    /// running (ties go to the first from `i` on, so an idle route still
    /// turns round). A deployment whose replicas are all down keeps `i`.
    pub(crate) fn settle(&self, i: usize) -> usize {
        let Some(group) = self.targets.get(i).map(|t| &self.groups[t.group as usize]) else {
            return i;
        };
        if group.len() < 2 {
            return i;
        }
        let start = group.iter().position(|m| *m as usize == i).unwrap_or(0);
        let order = group[start..]
            .iter()
            .chain(&group[..start])
            .map(|m| *m as usize);
        match self.balance {
            Balance::RoundRobin => {
                if !self.targets[i].state.is_down() {
                    return i;
                }
                order
                    .into_iter()
                    .find(|m| !self.targets[*m].state.is_down())
                    .unwrap_or(i)
            }
            Balance::LeastInflight => {
                let mut best: Option<(usize, usize)> = None;
                for m in order {
                    let t = &self.targets[m].state;
                    if t.is_down() {
                        continue;
                    }
                    let n = t.inflight();
                    if best.is_none_or(|(_, b)| n < b) {
                        best = Some((m, n));
                        if n == 0 {
                            break;
                        }
                    }
                }
                best.map_or(i, |(m, _)| m)
            }
        }
    }

    /// Another replica of `failed`'s deployment for a request that found
    /// `failed` refusing connections: one that is not passively down
    /// (`failed` itself was marked down before this is asked, so a request
    /// never tries one replica twice), the least busy first. `None` when
    /// `failed` is not in this route, has no sibling up, or the request
    /// already tried `tried` others of the group's replicas (so a request
    /// tries at most N - 1 others, however the marks change meanwhile).
    pub(crate) fn sibling_of(&self, failed: &TargetState, tried: usize) -> Option<&RouteTarget> {
        let t = self
            .targets
            .iter()
            .find(|t| std::ptr::eq(Arc::as_ptr(&t.state), failed))?;
        let group = &self.groups[t.group as usize];
        if tried + 1 >= group.len() {
            return None;
        }
        group
            .iter()
            .map(|m| &self.targets[*m as usize])
            .filter(|s| !std::ptr::eq(Arc::as_ptr(&s.state), failed) && !s.state.is_down())
            .min_by_key(|s| s.state.inflight())
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
        balance: Balance,
    ) -> RouteTable {
        let mut exact = Hosts::default();
        let mut wildcard = Hosts::default();
        for (host, spec) in &specs {
            let mut targets = Vec::with_capacity(spec.targets.len());
            let mut weights = Vec::with_capacity(spec.targets.len());
            let mut versions = Vec::with_capacity(spec.targets.len());
            let mut group_of: Vec<Option<&str>> = Vec::new();
            let mut groups: Vec<Vec<u32>> = Vec::new();
            for t in &spec.targets {
                // validated before, but never panic: skip what does not parse
                let Ok(authority) = t.upstream.parse::<Authority>() else {
                    continue;
                };
                let state = registry.target(&t.id);
                state.set_info(TargetInfo::of(t.deployment_id.as_deref(), t.sha.as_deref()));
                let dep = t.deployment_id.as_deref();
                let group = match dep.and_then(|d| group_of.iter().position(|g| *g == Some(d))) {
                    Some(g) => g,
                    None => {
                        group_of.push(dep);
                        groups.push(Vec::new());
                        groups.len() - 1
                    }
                };
                if t.weight > 0 {
                    groups[group].push(targets.len() as u32);
                }
                targets.push(RouteTarget {
                    state,
                    series: registry.series(host, &t.id),
                    upstream_id: registry.upstream_id(authority.as_str()),
                    authority,
                    group: group as u32,
                });
                weights.push(t.weight);
                versions.push((t.deployment_id.as_deref(), t.weight));
            }
            let route = Route {
                picker: Picker::new(&weights),
                sticky: Sticky::new(key, &versions).map(Box::new),
                targets: targets.into_boxed_slice(),
                groups: groups.into_iter().map(Vec::into_boxed_slice).collect(),
                balance,
                policy: Compiled::new(&spec.policy).map(Box::new),
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
            policy: Default::default(),
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
        let t = RouteTable::build(specs, &reg, &PinKey::random(), Balance::default());
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
        let t = RouteTable::build(specs, &reg, &PinKey::random(), Balance::default());
        for h in &hosts {
            let id = t
                .lookup(h)
                .and_then(|r| r.pick())
                .map(|x| x.state.id.to_string());
            assert_eq!(id.as_deref(), Some(h.as_str()));
        }
        assert!(t.lookup("app-500.preview-3.localhost").is_none());
    }

    fn replicas(dep: &str, n: usize) -> RouteSpec {
        RouteSpec {
            policy: Default::default(),
            targets: (0..n)
                .map(|i| TargetSpec {
                    deployment_id: Some(dep.into()),
                    sha: None,
                    id: format!("{dep}-{i}"),
                    upstream: format!("127.0.0.1:{}", 9000 + i),
                    weight: 1,
                })
                .collect(),
        }
    }

    fn picks(t: &RouteTable, n: usize) -> Vec<String> {
        let r = t.lookup("a.localhost").unwrap();
        (0..n)
            .map(|_| r.pick().unwrap().state.id.to_string())
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn round_robin_skips_a_replica_marked_down_and_takes_it_back() {
        let reg = Registry::default();
        let specs = BTreeMap::from([("a.localhost".to_string(), replicas("d", 3))]);
        let t = RouteTable::build(specs, &reg, &PinKey::random(), Balance::RoundRobin);
        assert_eq!(sorted(picks(&t, 3)), ["d-0", "d-1", "d-2"]);
        reg.find_target("d-1").unwrap().mark_down();
        let p = picks(&t, 6);
        assert!(!p.contains(&"d-1".to_string()), "{p:?}");
        assert_eq!(p.iter().filter(|x| *x == "d-2").count(), 4, "{p:?}");
        reg.find_target("d-1").unwrap().mark_up();
        assert_eq!(sorted(picks(&t, 3)), ["d-0", "d-1", "d-2"]);
        // all down: picked as if up (the route keeps trying)
        for i in 0..3 {
            reg.find_target(&format!("d-{i}")).unwrap().mark_down();
        }
        assert_eq!(sorted(picks(&t, 3)), ["d-0", "d-1", "d-2"]);
    }

    #[test]
    fn least_inflight_takes_the_idlest_replica_of_the_picked_deployment() {
        let reg = Registry::default();
        let mut spec = replicas("d", 3);
        spec.targets.extend(replicas("e", 1).targets);
        let specs = BTreeMap::from([("a.localhost".to_string(), spec)]);
        let t = RouteTable::build(specs, &reg, &PinKey::random(), Balance::LeastInflight);
        let busy: Vec<_> = ["d-0", "d-0", "d-1"]
            .iter()
            .map(|id| crate::target::InflightGuard::new(reg.find_target(id).unwrap()))
            .collect();
        let p = picks(&t, 8);
        // the weights still split the deployments: d 6 of 8, e 2 of 8
        assert_eq!(p.iter().filter(|x| *x == "e-0").count(), 2, "{p:?}");
        assert!(p.iter().all(|x| x == "d-2" || x == "e-0"), "{p:?}");
        drop(busy);
        let r = t.lookup("a.localhost").unwrap();
        let d0 = r.targets.iter().find(|x| &*x.state.id == "d-0").unwrap();
        assert_eq!(
            r.sibling_of(&d0.state, 0).map(|x| x.state.id.to_string()),
            Some("d-1".to_string()),
            "a sibling of the same deployment"
        );
        assert!(r.sibling_of(&d0.state, 2).is_none(), "at most N - 1 tries");
        let e0 = r.targets.iter().find(|x| &*x.state.id == "e-0").unwrap();
        assert!(
            r.sibling_of(&e0.state, 0).is_none(),
            "never another deployment"
        );
    }

    #[test]
    fn targets_keep_identity_across_tables() {
        let reg = Registry::default();
        let mut specs = BTreeMap::new();
        specs.insert("a.localhost".to_string(), spec("dep-1"));
        let t1 = RouteTable::build(specs.clone(), &reg, &PinKey::random(), Balance::default());
        let t2 = RouteTable::build(specs, &reg, &PinKey::random(), Balance::default());
        let s1 = &t1.lookup("a.localhost").unwrap().targets[0];
        let s2 = &t2.lookup("a.localhost").unwrap().targets[0];
        assert!(Arc::ptr_eq(&s1.state, &s2.state));
        assert!(Arc::ptr_eq(&s1.series, &s2.series));
    }
}

//! Weighted target selection.
//!
//! Pingora expands weights into a slice with one entry per unit of weight
//! (memory grows with the weights, and round robin over it sends bursts to
//! the same backend); nginx's smooth weighted round robin needs a lock per
//! pick. Here a pick is one relaxed `fetch_add` plus a binary search:
//!
//! * tickets `n = 0, 1, 2, ...` are mapped to positions `p = n * s mod W`
//!   where `W` is the sum of weights and `s` is coprime with `W` (close to
//!   `W / golden ratio`). Because `s` is coprime, every window of `W`
//!   consecutive tickets visits every position exactly once, so a target of
//!   weight `w` gets **exactly** `w` of every `W` consecutive requests;
//! * the golden-ratio stride spreads positions evenly (a Weyl sequence), so a
//!   5 % canary sees every ~20th request instead of 5 in a row;
//! * position `p` belongs to the target whose cumulative weight range holds
//!   it; memory is one `u64` per target, whatever the weights.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a request chooses among the replicas of one deployment (the
/// weights choose the deployment first; see `Route::settle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn (the weighted picker's order).
    RoundRobin,
    /// The replica with the fewest requests in flight (ties in turn); the
    /// default: a replica that slows down gets fewer new requests instead
    /// of a fixed share, at no measured cost (bench/README.md,
    /// "replicas.sh").
    #[default]
    LeastInflight,
}

/// Immutable weighted table with its own ticket counter.
#[derive(Debug)]
pub(crate) struct Picker {
    /// `cumulative[i]` = sum of the weights of targets `0..=i`.
    cumulative: Box<[u64]>,
    total: u64,
    stride: u64,
    /// Set when a single target has weight: picking it needs no ticket (no
    /// shared counter written on every request).
    only: Option<usize>,
    next: AtomicU64,
}

impl Picker {
    /// `None` when no weight is above zero (the route answers 503).
    pub(crate) fn new(weights: &[u32]) -> Option<Picker> {
        let mut sum = 0u64;
        let cumulative: Box<[u64]> = weights
            .iter()
            .map(|w| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        if sum == 0 {
            return None;
        }
        let mut weighted = weights.iter().enumerate().filter(|(_, w)| **w > 0);
        let only = match (weighted.next(), weighted.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        Some(Picker {
            cumulative,
            only,
            total: sum,
            stride: stride_for(sum),
            next: AtomicU64::new(0),
        })
    }

    /// Index of the target that gets the next request.
    pub(crate) fn pick(&self) -> usize {
        if let Some(i) = self.only {
            return i;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        let p = ((u128::from(n) * u128::from(self.stride)) % u128::from(self.total)) as u64;
        // First target whose cumulative weight is above p; zero-weight targets
        // have an empty range and are never chosen.
        self.cumulative.partition_point(|&c| c <= p)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride coprime with `total`, near `total / phi`.
fn stride_for(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let mut s = ((total as f64) * 0.618_033_988_75).round() as u64;
    s = s.clamp(1, total - 1);
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(weights: &[u32], picks: usize) -> Vec<usize> {
        let p = Picker::new(weights).unwrap();
        let mut c = vec![0; weights.len()];
        for _ in 0..picks {
            c[p.pick()] += 1;
        }
        c
    }

    #[test]
    fn every_cycle_gives_exact_shares() {
        assert_eq!(counts(&[95, 5], 100), vec![95, 5]);
        assert_eq!(counts(&[75, 25], 400), vec![300, 100]);
        assert_eq!(counts(&[50, 50], 1000), vec![500, 500]);
        assert_eq!(counts(&[1, 0, 2], 30), vec![10, 0, 20]);
        assert_eq!(counts(&[7], 3), vec![3]);
    }

    #[test]
    fn small_shares_are_spread_not_bunched() {
        // a 5 % canary: the gap between two canary picks is never tiny.
        let p = Picker::new(&[95, 5]).unwrap();
        let hits: Vec<usize> = (0..200).filter(|_| p.pick() == 1).collect();
        assert_eq!(hits.len(), 10);
        let min_gap = hits.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(min_gap >= 5, "canary picks bunched: {hits:?}");
    }

    #[test]
    fn huge_weights_use_no_memory_per_unit() {
        let p = Picker::new(&[u32::MAX - 1, 1]).unwrap();
        assert_eq!(p.cumulative.len(), 2);
        let _ = p.pick();
    }

    #[test]
    fn all_zero_is_none() {
        assert!(Picker::new(&[0, 0]).is_none());
        assert!(Picker::new(&[]).is_none());
    }

    #[test]
    fn stride_is_coprime() {
        for total in 1..500u64 {
            let s = stride_for(total);
            assert_eq!(gcd(s, total), 1, "total {total} stride {s}");
        }
    }
}

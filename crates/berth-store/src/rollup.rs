//! The traffic rollup's rows of several cluster members, combined: every
//! server's edge writes its own [`MetricMinute`] rows, and a reader gets one
//! row per deployment and minute with the members summed. Requests and
//! errors add up; a p95 does not, so each row keeps the minute's latency
//! histogram (sparse, see [`sparse`]) and the p95 of the sum is computed
//! from the summed histogram.

use crate::MetricMinute;
use berth_core::canary::Window;

/// `latency` (`(upper bound in seconds, cumulative count)` of every bucket,
/// the edge's fixed layout) with only the entries a quantile needs: each
/// non-empty bucket's upper bound and the bound just below it (its lower
/// bound). Between two kept entries the cumulative count is flat except in
/// the upper one's own bucket, so [`Window::p95`] (which interpolates
/// inside the bucket holding the rank) reads the same value from the sparse
/// list as from the full one.
pub fn sparse(latency: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let count_at = |i: usize| if i == 0 { 0 } else { latency[i - 1].1 };
    let mut out = Vec::new();
    for i in 0..latency.len() {
        let (bound, cum) = latency[i];
        let filled = cum > count_at(i);
        let below_filled = latency.get(i + 1).is_some_and(|(_, next)| *next > cum);
        if filled || below_filled {
            out.push((bound, cum));
        }
    }
    out
}

/// The cumulative count of a sparse histogram at `bound`: the count at the
/// largest kept bound not above it (0 below the first).
fn count_at(latency: &[(f64, u64)], bound: f64) -> u64 {
    match latency.partition_point(|(b, _)| *b <= bound) {
        0 => 0,
        i => latency[i - 1].1,
    }
}

/// Several members' sparse histograms of one minute summed: the union of
/// their bounds, each member counted at every one of them. Exact for
/// histograms of one bucket layout (every edge's).
pub fn sum_latency(parts: &[&[(f64, u64)]]) -> Vec<(f64, u64)> {
    let mut bounds: Vec<f64> = parts
        .iter()
        .flat_map(|p| p.iter().map(|(b, _)| *b))
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
        .into_iter()
        .map(|b| (b, parts.iter().map(|p| count_at(p, b)).sum()))
        .collect()
}

/// p95 in milliseconds of a (sparse) histogram; `None` when it is empty or
/// the rank lies beyond its last bound.
pub fn p95_ms(latency: &[(f64, u64)]) -> Option<f64> {
    let total = latency.last().map(|(_, c)| *c).unwrap_or(0);
    Window {
        requests: total,
        errors: 0,
        latency: latency.to_vec(),
    }
    .p95()
    .filter(|s| s.is_finite() && total > 0)
    .map(|s| s * 1000.0)
}

/// `rows` (ordered by minute, then deployment id) with the rows of one
/// deployment and minute combined into one whose `member` is empty:
/// requests and errors summed, the histograms summed and p95 read from the
/// sum. Rows without a histogram (written before members were kept) add
/// their requests and errors; their p95 is used only when no row of that
/// minute has a histogram (then the largest).
pub fn merge_members(rows: Vec<MetricMinute>) -> Vec<MetricMinute> {
    let mut out: Vec<MetricMinute> = Vec::new();
    let mut group: Vec<MetricMinute> = Vec::new();
    for r in rows {
        if group
            .first()
            .is_some_and(|g| g.minute != r.minute || g.deployment_id != r.deployment_id)
        {
            out.push(combine(std::mem::take(&mut group)));
        }
        group.push(r);
    }
    if !group.is_empty() {
        out.push(combine(group));
    }
    out
}

fn combine(group: Vec<MetricMinute>) -> MetricMinute {
    let parts: Vec<&[(f64, u64)]> = group
        .iter()
        .filter(|r| !r.latency.is_empty())
        .map(|r| r.latency.as_slice())
        .collect();
    let latency = sum_latency(&parts);
    let p95_ms = if parts.is_empty() {
        group.iter().filter_map(|r| r.p95_ms).max_by(f64::total_cmp)
    } else {
        p95_ms(&latency)
    };
    let first = &group[0];
    MetricMinute {
        deployment_id: first.deployment_id.clone(),
        project_name: first.project_name.clone(),
        environment_name: first.environment_name.clone(),
        service_name: first.service_name.clone(),
        member: String::new(),
        minute: first.minute,
        requests: group.iter().map(|r| r.requests).sum(),
        errors: group.iter().map(|r| r.errors).sum(),
        latency,
        p95_ms,
    }
}

/// The stored form of a sparse histogram: JSON `[[bound, count], …]`
/// (`NULL` for none).
pub(crate) fn encode_latency(latency: &[(f64, u64)]) -> Option<String> {
    (!latency.is_empty()).then(|| serde_json::to_string(latency).unwrap_or_default())
}

/// A stored histogram back; an unreadable one is treated as none (its
/// row's p95 still stands).
pub(crate) fn decode_latency(text: Option<String>) -> Vec<(f64, u64)> {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dense cumulative histogram with bounds 1, 2, …, n ms and the
    /// given per-bucket counts.
    fn dense(counts: &[u64]) -> Vec<(f64, u64)> {
        let mut acc = 0;
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                acc += c;
                ((i + 1) as f64 / 1000.0, acc)
            })
            .collect()
    }

    fn p95_dense(latency: &[(f64, u64)]) -> Option<f64> {
        p95_ms(latency)
    }

    #[test]
    fn sparse_keeps_what_the_p95_reads() {
        let mut counts = vec![0u64; 200];
        counts[3] = 50;
        counts[4] = 30;
        counts[120] = 20;
        let full = dense(&counts);
        let s = sparse(&full);
        assert!(s.len() <= 6, "{s:?}");
        assert_eq!(p95_ms(&s), p95_dense(&full));
        // The rank (95 of 100) lies in the bucket (120 ms, 121 ms]:
        // interpolated inside it, not from 5 ms.
        let p = p95_ms(&s).unwrap();
        assert!(p > 120.0 && p <= 121.0, "{p}");
        assert!(sparse(&dense(&[0; 10])).is_empty());
    }

    #[test]
    fn summed_histograms_give_the_p95_of_all_requests() {
        // Member a: 90 fast requests (2 ms); member b: 10 slow ones (300 ms).
        let mut a = vec![0u64; 400];
        a[1] = 90;
        let mut b = vec![0u64; 400];
        b[299] = 10;
        let (fa, fb) = (dense(&a), dense(&b));
        let merged = sum_latency(&[&sparse(&fa), &sparse(&fb)]);
        let all: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(p95_ms(&merged), p95_dense(&dense(&all)));
        let p = p95_ms(&merged).unwrap();
        assert!(p > 299.0 && p <= 300.0, "{p}");
        // Neither member's own p95 is that of the whole.
        assert!(p95_ms(&sparse(&fa)).unwrap() <= 2.0);
        assert!(p95_ms(&sparse(&fb)).unwrap() > 299.0);
        assert_eq!(merged.last().unwrap().1, 100);
    }

    #[test]
    fn rows_of_one_deployment_and_minute_become_one() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let row =
            |dep: &str, member: &str, min: i64, requests: u64, lat: Vec<(f64, u64)>| MetricMinute {
                deployment_id: dep.into(),
                member: member.into(),
                minute: t + chrono::Duration::minutes(min),
                requests,
                errors: 1,
                p95_ms: p95_ms(&lat),
                latency: lat,
                ..Default::default()
            };
        let merged = merge_members(vec![
            row("d1", "a", 0, 10, vec![(0.001, 0), (0.002, 10)]),
            row("d1", "b", 0, 5, vec![(0.009, 0), (0.010, 5)]),
            row("d2", "a", 0, 3, vec![(0.001, 0), (0.002, 3)]),
            row("d1", "", 1, 7, vec![]),
        ]);
        assert_eq!(merged.len(), 3);
        assert_eq!(
            (
                merged[0].requests,
                merged[0].errors,
                merged[0].member.as_str()
            ),
            (15, 2, "")
        );
        assert!(merged[0].p95_ms.unwrap() > 9.0, "{:?}", merged[0]);
        assert_eq!(
            (merged[1].deployment_id.as_str(), merged[1].requests),
            ("d2", 3)
        );
        assert_eq!((merged[2].requests, merged[2].p95_ms), (7, None));
    }

    #[test]
    fn histograms_round_trip_through_their_stored_form() {
        let l = vec![(0.000_528, 3), (0.000_544, 10), (38.0, 11)];
        assert_eq!(decode_latency(encode_latency(&l)), l);
        assert!(decode_latency(Some("garbage".into())).is_empty());
        assert!(encode_latency(&[]).is_none());
    }
}

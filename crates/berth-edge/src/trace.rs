//! W3C trace context (`traceparent`, `tracestate`) at the edge.
//!
//! Every request forwarded upstream carries exactly one valid `traceparent`
//! naming the edge's span as its parent:
//! * none, or a malformed one (or several): a new trace id, and any
//!   `tracestate` is dropped (it belongs to the trace that was not kept);
//! * a valid one: its trace id and flags are kept, its parent id is replaced
//!   by the edge's span id, `tracestate` passes through unchanged.
//!
//! A valid value follows the W3C Trace Context rules: version two lowercase
//! hex digits other than `ff`, a 32-digit trace id and a 16-digit parent id
//! of lowercase hex, not all zeros, two hex digits of flags; version `00` is
//! exactly 55 characters, a later version may continue after a `-`.
//! Ids come from a per-thread xorshift generator seeded from the clock and
//! the thread: unique enough for tracing, and no system call per request.

use std::cell::Cell;

/// Length of a version-00 `traceparent` value.
pub(crate) const TRACEPARENT_LEN: usize = 55;

/// The trace context of one forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// Lowercase hex.
    pub(crate) trace_id: [u8; 32],
    /// The edge's span (the upstream's parent), lowercase hex.
    pub(crate) span_id: [u8; 16],
    /// The caller's span, if the request came with a valid `traceparent`.
    pub(crate) parent_id: Option<[u8; 16]>,
    pub(crate) flags: u8,
}

impl TraceContext {
    /// The context for a request whose `traceparent` is `incoming` (`None`
    /// when absent or repeated).
    pub(crate) fn for_request(incoming: Option<&[u8]>) -> TraceContext {
        let span_id = hex16(next_nonzero());
        match incoming.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => {
                let mut trace_id = [0u8; 32];
                trace_id[..16].copy_from_slice(&hex16(next_nonzero()));
                trace_id[16..].copy_from_slice(&hex16(next_u64()));
                TraceContext {
                    trace_id,
                    span_id,
                    parent_id: None,
                    flags: 0,
                }
            }
        }
    }

    /// True if the incoming trace was kept (so its `tracestate` goes on).
    pub(crate) fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The `traceparent` value to send upstream.
    pub(crate) fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut v = [0u8; TRACEPARENT_LEN];
        v[..3].copy_from_slice(b"00-");
        v[3..35].copy_from_slice(&self.trace_id);
        v[35] = b'-';
        v[36..52].copy_from_slice(&self.span_id);
        v[52] = b'-';
        v[53] = HEX[usize::from(self.flags >> 4)];
        v[54] = HEX[usize::from(self.flags & 15)];
        v
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

/// A valid `traceparent`: its trace id, parent id and flags.
pub(crate) fn parse(v: &[u8]) -> Option<([u8; 32], [u8; 16], u8)> {
    let v = v.trim_ascii();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !is_lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && v.len() != TRACEPARENT_LEN {
        return None;
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
        return None;
    }
    if trace.iter().all(|c| *c == b'0') || parent.iter().all(|c| *c == b'0') {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(trace);
    let mut p = [0u8; 16];
    p.copy_from_slice(parent);
    Some((t, p, hex_val(flags[0]) << 4 | hex_val(flags[1])))
}

fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((n >> (60 - 4 * i)) & 15) as usize];
    }
    out
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

/// xorshift64* (Vigna): fast, never 0 for a non-zero state.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn next_nonzero() -> u64 {
    loop {
        let n = next_u64();
        if n != 0 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_new_parent() {
        let c = TraceContext::for_request(Some(GOOD));
        assert!(c.continued());
        let out = c.traceparent();
        assert_eq!(&out[..36], &GOOD[..36], "version and trace id kept");
        assert_ne!(&out[36..52], &GOOD[36..52], "the edge's span is the parent");
        assert_eq!(&out[52..], b"-01", "flags kept");
        assert!(parse(&out).is_some());
        assert_eq!(c.parent_id.unwrap(), *b"00f067aa0ba902b7");
    }

    #[test]
    fn absent_or_malformed_values_are_replaced_by_a_fresh_valid_one() {
        let mut seen = std::collections::HashSet::new();
        for bad in [
            None,
            Some(&b""[..]),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"),
            Some(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
            Some(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            Some(b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e47g6-00f067aa0ba902b7-01"),
        ] {
            let c = TraceContext::for_request(bad);
            assert!(!c.continued(), "{bad:?}");
            let out = c.traceparent();
            assert!(parse(&out).is_some(), "{}", String::from_utf8_lossy(&out));
            assert_ne!(&out[3..35], &GOOD[3..35]);
            assert!(seen.insert(c.trace_id), "trace ids repeat");
        }
        // a later version may carry more after a dash: kept as version 00
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let c = TraceContext::for_request(Some(later));
        assert!(c.continued());
        assert_eq!(&c.traceparent()[..3], b"00-");
    }
}

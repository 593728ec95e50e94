//! Edge policies of a route (berth.toml `[services.<name>.edge]`, and
//! maintenance): who may reach the app and how much, decided before a
//! request is forwarded.
//!
//! A [`Policy`] travels in its [`crate::RouteSpec`], so it changes with the
//! deployment that carries it, in the same table swap. A route without one
//! (the common case) pays one `Option` check per request. In order:
//! * `allow`: the client's socket address (never a forwarded header) must
//!   be in one of the CIDRs, else 403;
//! * `maintenance`: 503 with `Retry-After` and berth's maintenance page
//!   (health probes go to the instances, not through the edge, so they are
//!   unaffected);
//! * `rate_limit`: requests per second per client IP, a token bucket of one
//!   second of burst; over it 429 with `Retry-After`. The buckets of a route
//!   are bounded ([`MAX_CLIENTS`]): when full, buckets idle long enough to
//!   be full again are forgotten first (forgetting one changes nothing),
//!   then the oldest; a flood from one address only ever empties its own.
//!   A 429 is held back ([`Tarpit`]) before it is written: up to
//!   `min(Retry-After, 1 s)`, so a client that sends its next request as
//!   soon as it has an answer (a flood over a few connections) gets about
//!   one answer per connection and second instead of thousands, and the CPU
//!   its 429s would have taken stays with the other clients. At most
//!   [`PARK_PER_CLIENT`] requests of one address and [`PARK_TOTAL`] of all
//!   are held at a time; past that the 429 leaves at once with
//!   `Connection: close`, so an address cannot keep more connections busy
//!   than that, and the tarpit's memory is bounded however many clients.
//!   A 429 also flags its address for [`Admission`]: until its
//!   `Retry-After` has passed, a new connection from it beyond a small
//!   allowance is closed right after accept, so a client that opens
//!   connections without waiting for answers is bounded too;
//! * `basic_auth`: the route asks for HTTP basic authentication (preview
//!   hostnames, `preview_auth = "basic"`); the policy holds the SHA-256 of
//!   the expected `Authorization` token (the base64 of `user:password`),
//!   never the password, compared in constant time; else 401;
//! * `max_body`: a request whose `Content-Length` is above it gets 413
//!   without a byte of its body read; a chunked one is read up to the
//!   limit before anything is forwarded (413 once it passes it), so the app
//!   never sees a body over the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Client buckets one route keeps for `rate_limit`.
pub const MAX_CLIENTS: usize = 16 * 1024;
const SHARDS: usize = 16;

/// What a route lets through; the default lets everything through.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    /// CIDRs (`10.0.0.0/8`, `::1/128`; a bare address is one host) the
    /// client address must be in; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Requests per second per client IP (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Largest request body, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// Hex SHA-256 of the expected basic `Authorization` token (see
    /// [`basic_auth_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<String>,
    /// Answer 503 with the maintenance page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
}

impl Policy {
    /// True when the policy lets everything through.
    pub fn is_open(&self) -> bool {
        *self == Policy::default()
    }
}

/// What [`Policy::basic_auth`] holds for `user:password`.
pub fn basic_auth_digest(user: &str, password: &str) -> String {
    let token = base64(format!("{user}:{password}").as_bytes());
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Standard base64 with padding (RFC 4648), what clients send.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Why a policy was refused (the batch is refused, see `route.rs`).
pub(crate) fn check(p: &Policy) -> Result<(), String> {
    for c in &p.allow {
        Cidr::parse(c).map_err(|r| format!("allow {c:?}: {r}"))?;
    }
    if p.rate_limit == Some(0) {
        return Err("rate_limit must be at least 1".into());
    }
    if let Some(d) = &p.basic_auth {
        if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("basic_auth must be a hex SHA-256".into());
        }
    }
    Ok(())
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address; the rule broken.
    pub(crate) fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip.trim().parse().map_err(|_| "not an IP address")?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or(if ip.is_ipv4() {
                    "the prefix length must be 0 to 32"
                } else {
                    "the prefix length must be 0 to 128"
                })?,
            None => max,
        };
        let (bits, v4) = to_bits(ip);
        // the top `len` bits of the address (a v4 one in the low 32)
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (max - len)
        };
        Ok(Cidr {
            net: bits & mask,
            mask,
            v4,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v4) = to_bits(ip);
        v4 == self.v4 && bits & self.mask == self.net
    }
}

/// The address as bits, an IPv4-mapped IPv6 address as its IPv4 one.
fn to_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), true),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(a), false),
        },
    }
}

/// A policy ready for the request path.
#[derive(Debug)]
pub(crate) struct Compiled {
    allow: Box<[Cidr]>,
    limiter: Option<Limiter>,
    pub(crate) max_body: Option<u64>,
    basic_auth: Option<[u8; 32]>,
    maintenance: bool,
}

/// What a policy answers instead of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Forbidden,
    Maintenance,
    /// Seconds until the client may try again.
    TooMany(u64),
    Unauthorized,
}

impl Compiled {
    /// `None` for an open policy (nothing to check per request).
    pub(crate) fn new(p: &Policy) -> Option<Compiled> {
        if p.is_open() {
            return None;
        }
        Some(Compiled {
            allow: p.allow.iter().filter_map(|c| Cidr::parse(c).ok()).collect(),
            limiter: p.rate_limit.filter(|r| *r > 0).map(Limiter::new),
            max_body: p.max_body,
            basic_auth: p.basic_auth.as_deref().and_then(unhex),
            maintenance: p.maintenance,
        })
    }

    /// The answer for a request from `client` carrying `authorization`
    /// (the `Authorization` header value), or `None` to let it through.
    pub(crate) fn judge(&self, client: IpAddr, authorization: Option<&[u8]>) -> Option<Refusal> {
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(client)) {
            return Some(Refusal::Forbidden);
        }
        if self.maintenance {
            return Some(Refusal::Maintenance);
        }
        if let Some(l) = &self.limiter {
            if let Err(wait) = l.take(client, Instant::now()) {
                return Some(Refusal::TooMany(wait));
            }
        }
        if let Some(want) = &self.basic_auth {
            let token = authorization
                .and_then(|v| {
                    let v = v.trim_ascii();
                    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
                    scheme
                        .eq_ignore_ascii_case(b"basic")
                        .then(|| rest.trim_ascii())
                })
                .unwrap_or_default();
            let got: [u8; 32] = Sha256::digest(token).into();
            if !crate::sticky::constant_time_eq(&got, want) {
                return Some(Refusal::Unauthorized);
            }
        }
        None
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Longest a 429 is held back (see [`Tarpit`]).
pub const TARPIT_MAX: Duration = Duration::from_secs(1);
/// Requests of one client address held back at a time (the default of
/// `EdgeConfig::tarpit_per_client`). A held request holds a connection the
/// client has open anyway (and one timer), so the cap is high: it is there
/// so that one address cannot keep an unbounded number of connections
/// waiting; past it the excess is closed.
pub const PARK_PER_CLIENT: u32 = 4096;
/// Requests held back at a time, all addresses together
/// (`EdgeConfig::tarpit_total`).
pub const PARK_TOTAL: u32 = 65536;
/// Counters of held requests, by a hash of the address: a fixed array, so
/// its memory does not grow with the number of clients (two addresses
/// whose hashes meet share a budget, which only ever makes a 429 leave
/// sooner).
const PARK_SLOTS: usize = 4096;

/// Where 429s wait before they are written, edge-wide (a client address
/// reaches several routes and every serve thread). Holding a request costs
/// a timer; writing a 429 at once to a client that sends the next request
/// the moment it has the answer costs a read, a policy check and a write,
/// tens of thousands of times a second.
#[derive(Debug)]
pub(crate) struct Tarpit {
    per_client: u32,
    total_max: u32,
    total: AtomicU32,
    slots: Box<[AtomicU32]>,
    /// 429s answered (held or not).
    pub(crate) refused: AtomicU64,
    /// 429s answered at once with `Connection: close` (tarpit full).
    pub(crate) full: AtomicU64,
}

/// A request held in the [`Tarpit`]; its place is given back on drop.
#[derive(Debug)]
pub(crate) struct Parked<'a> {
    pit: &'a Tarpit,
    slot: usize,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.pit.slots[self.slot].fetch_sub(1, Ordering::Relaxed);
        self.pit.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tarpit {
    pub(crate) fn with_limits(per_client: u32, total_max: u32) -> Tarpit {
        Tarpit {
            per_client,
            total_max,
            total: AtomicU32::new(0),
            slots: (0..PARK_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            refused: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// How long to hold a 429 whose `Retry-After` is `retry_after` seconds.
    pub(crate) fn delay(retry_after: u64) -> Duration {
        Duration::from_secs(retry_after).min(TARPIT_MAX)
    }

    /// A place for a 429 to `ip`, or `None` when its address or the edge
    /// holds as many as allowed (answer at once and close the connection).
    /// Counts the 429 either way.
    pub(crate) fn park(&self, ip: IpAddr) -> Option<Parked<'_>> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let slot = (hash(ip) >> 32) as usize % PARK_SLOTS;
        let bounded = |c: &AtomicU32, max: u32| {
            c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
        };
        if !bounded(&self.total, self.total_max) {
            self.full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !bounded(&self.slots[slot], self.per_client) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            self.full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Parked { pit: self, slot })
    }

    #[cfg(test)]
    fn held(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Connections an address over its rate limit may open while it is (the
/// default of `EdgeConfig::flagged_conns_per_client`; see [`Admission`]).
pub const FLAGGED_CONNS: u32 = 8;
/// Addresses [`Admission`] can hold flagged at a time: a fixed array, so
/// its memory does not grow with the number of clients.
const FLAG_SLOTS: usize = 4096;

/// Connection admission, edge-wide: an address answered a 429 is
/// *flagged* until its `Retry-After` has passed, counted from when the 429
/// leaves the [`Tarpit`] (each 429 moves that on: [`Admission::span`]).
/// While it is, a new connection from it is counted, and one beyond
/// `per_client` counted ones still open is closed right after accept,
/// before a byte of it is read or a TLS handshake begins: a client that
/// opens connections as fast as it can (an open-loop flood, which the
/// [`Tarpit`] does not slow) then costs an accept and a close each.
///
/// An address that was never answered a 429, or whose `Retry-After` has
/// passed, is never refused: the check is one atomic load of its slot (and
/// a clock read and a lock when the slot is flagged). Connections opened
/// before the flag are not counted (the tarpit bounds what they can cost).
/// Slots are picked by a hash of the address and remember the address
/// itself: two flagged addresses whose hashes meet share a slot, the later
/// flag taking it (the other one is then admitted as if unflagged), never
/// an address refused for another's flag.
#[derive(Debug)]
pub(crate) struct Admission {
    per_client: u32,
    epoch: Instant,
    slots: Box<[FlagSlot]>,
    /// Connections closed right after accept.
    pub(crate) refused: AtomicU64,
}

#[derive(Debug, Default)]
struct FlagSlot {
    /// Milliseconds since `epoch` until which `flag.who` is flagged; 0:
    /// never flagged. Read without the lock on every accept.
    until: AtomicU64,
    flag: Mutex<Flag>,
}

#[derive(Debug, Default)]
struct Flag {
    /// The address, as [`to_bits`] gives it (an IPv4-mapped IPv6 address
    /// is its IPv4 one).
    who: Option<(u128, bool)>,
    until: u64,
    /// Bumped when the slot changes address, so that a connection counted
    /// for the previous one is not given back to the new one.
    generation: u64,
    /// Connections counted for `who` and still open.
    open: u32,
}

/// A connection counted by [`Admission::admit`]; give it back with
/// [`Admission::release`] when it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    slot: usize,
    generation: u64,
}

/// A connection [`Admission::admit`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused;

impl Admission {
    pub(crate) fn new(per_client: u32) -> Admission {
        Admission {
            per_client,
            epoch: Instant::now(),
            slots: (0..FLAG_SLOTS).map(|_| FlagSlot::default()).collect(),
            refused: AtomicU64::new(0),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        // +1: 0 means "never flagged"
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    fn slot(ip: IpAddr) -> usize {
        // other bits than the tarpit's and the limiter's
        (hash(ip) >> 40) as usize % FLAG_SLOTS
    }

    fn lock(&self, slot: usize) -> std::sync::MutexGuard<'_, Flag> {
        self.slots[slot]
            .flag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// `ip` was answered a 429 and is to be counted for `span` from `now`.
    pub(crate) fn flag(&self, ip: IpAddr, span: Duration, now: Instant) {
        let slot = Admission::slot(ip);
        let until = self.millis(now + span);
        let mut f = self.lock(slot);
        if f.who != Some(to_bits(ip)) {
            f.who = Some(to_bits(ip));
            f.generation += 1;
            f.open = 0;
            f.until = until;
        } else {
            f.until = f.until.max(until);
        }
        self.slots[slot].until.store(f.until, Ordering::Relaxed);
    }

    /// How long a 429 with `Retry-After: retry_after` flags its address:
    /// the time it is held back, then the `Retry-After`.
    pub(crate) fn span(retry_after: u64) -> Duration {
        Tarpit::delay(retry_after) + Duration::from_secs(retry_after.max(1))
    }

    /// Whether a connection from `ip`, accepted `now`, may be served:
    /// `Ok(None)` when `ip` is not flagged, `Ok(Some(ticket))` when it is
    /// and is within its allowance (the connection is counted until the
    /// ticket is released), `Err` when it is over it (close the
    /// connection; counted in `refused`).
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<Option<Ticket>, Refused> {
        let slot = Admission::slot(ip);
        let until = self.slots[slot].until.load(Ordering::Relaxed);
        if until == 0 {
            return Ok(None);
        }
        let now = self.millis(now);
        if until <= now {
            return Ok(None);
        }
        let mut f = self.lock(slot);
        if f.who != Some(to_bits(ip)) || f.until <= now {
            return Ok(None);
        }
        if f.open >= self.per_client {
            drop(f);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused);
        }
        f.open += 1;
        Ok(Some(Ticket {
            slot,
            generation: f.generation,
        }))
    }

    /// A counted connection closed.
    pub(crate) fn release(&self, ticket: Ticket) {
        let mut f = self.lock(ticket.slot);
        if f.generation == ticket.generation {
            f.open = f.open.saturating_sub(1);
        }
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let f = self.lock(Admission::slot(ip));
        if f.who == Some(to_bits(ip)) {
            f.open
        } else {
            0
        }
    }
}

fn hash(ip: IpAddr) -> u64 {
    let (bits, _) = to_bits(ip);
    (bits as u64 ^ (bits >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Per-client token buckets of one route, bounded.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    fn new(rate: u32) -> Limiter {
        Limiter {
            rate: f64::from(rate),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        &self.shards[(hash(ip) >> 60) as usize % SHARDS]
    }

    /// Takes a token for `ip`; `Err(seconds to wait)` when none is left.
    fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let burst = self.rate;
        let mut map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&ip) && map.len() >= MAX_CLIENTS / SHARDS {
            let rate = self.rate;
            // a bucket full again is as good as none
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_CLIENTS / SHARDS {
                if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("127.0.0.2/32").unwrap();
        assert!(c.contains(ip("127.0.0.2")));
        assert!(!c.contains(ip("127.0.0.1")));
        assert!(c.contains(ip("::ffff:127.0.0.2")), "mapped v4");
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::2")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err(),
            "the prefix length must be 0 to 32"
        );
        assert!(Cidr::parse("::/129").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("lots").is_err());
    }

    #[test]
    fn basic_auth_digest_is_of_the_header_token() {
        // "Aladdin:open sesame" is RFC 7617's example
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        let p = Compiled::new(&Policy {
            basic_auth: Some(basic_auth_digest("Aladdin", "open sesame")),
            ..Policy::default()
        })
        .unwrap();
        let me = ip("127.0.0.1");
        assert_eq!(
            p.judge(me, Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")),
            None
        );
        assert_eq!(
            p.judge(me, Some(b"basic  QWxhZGRpbjpvcGVuIHNlc2FtZQ==")),
            None
        );
        for bad in [&b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZR=="[..], b"Bearer x", b""] {
            assert_eq!(p.judge(me, Some(bad)), Some(Refusal::Unauthorized));
        }
        assert_eq!(p.judge(me, None), Some(Refusal::Unauthorized));
    }

    #[test]
    fn one_client_over_its_rate_does_not_touch_another() {
        let l = Limiter::new(20);
        let t0 = Instant::now();
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let passed = (0..100).filter(|_| l.take(a, t0).is_ok()).count();
        assert_eq!(passed, 20, "a burst of one second");
        assert_eq!(l.take(a, t0), Err(1));
        assert!(l.take(b, t0).is_ok(), "another address has its own bucket");
        // refills at the rate
        let later = t0 + Duration::from_millis(500);
        let passed = (0..100).filter(|_| l.take(a, later).is_ok()).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn buckets_are_bounded() {
        let l = Limiter::new(5);
        let t0 = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 * 3) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.take(a, t0);
        }
        assert!(l.clients() <= MAX_CLIENTS, "{}", l.clients());
    }

    #[test]
    fn the_tarpit_holds_a_bounded_number_per_address_and_in_all() {
        let pit = Tarpit::with_limits(3, 5);
        let (a, b, c) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3"));
        let held_a: Vec<_> = (0..3).map(|_| pit.park(a).expect("a place")).collect();
        assert!(pit.park(a).is_none(), "a fourth request of one address");
        assert!(pit.park(b).is_some(), "another address has its own places");
        let held_b: Vec<_> = (0..2).map(|_| pit.park(b).expect("a place")).collect();
        assert_eq!(pit.held(), 5);
        assert!(pit.park(c).is_none(), "all places taken");
        drop(held_a);
        assert_eq!(pit.held(), 2);
        assert!(pit.park(a).is_some() && pit.park(c).is_some());
        assert_eq!(pit.refused.load(Ordering::Relaxed), 10);
        assert_eq!(pit.full.load(Ordering::Relaxed), 2);
        drop(held_b);
        assert_eq!(pit.held(), 0, "every place given back");
        assert_eq!(Tarpit::delay(1), Duration::from_secs(1));
        assert_eq!(Tarpit::delay(30), TARPIT_MAX);
    }

    #[test]
    fn a_flagged_address_gets_its_allowance_of_connections_until_its_retry_after_passes() {
        let adm = Admission::new(2);
        let t0 = Instant::now();
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        // never answered a 429: admitted, not counted
        assert_eq!(adm.admit(a, t0), Ok(None));
        adm.flag(a, Duration::from_secs(1), t0);
        let first = adm.admit(a, t0).unwrap().expect("counted");
        let second = adm.admit(a, t0).unwrap().expect("counted");
        assert_eq!(adm.open(a), 2);
        assert_eq!(adm.admit(a, t0), Err(Refused), "past its allowance");
        assert_eq!(adm.admit(b, t0), Ok(None), "another address");
        adm.release(first);
        let third = adm.admit(a, t0).unwrap().expect("a place given back");
        assert_eq!(adm.admit(a, t0), Err(Refused));
        assert_eq!(adm.refused.load(Ordering::Relaxed), 2);
        // a later 429 moves the flag on; a shorter one does not shorten it
        let t1 = t0 + Duration::from_millis(600);
        adm.flag(a, Duration::from_secs(1), t1);
        adm.flag(a, Duration::from_secs(1), t0);
        assert_eq!(adm.admit(a, t0 + Duration::from_millis(1500)), Err(Refused));
        // once its Retry-After has passed: admitted, not counted
        let later = t1 + Duration::from_millis(1001);
        assert_eq!(adm.admit(a, later), Ok(None));
        // flagged again: the connections still open still count
        adm.flag(a, Duration::from_secs(2), later);
        assert_eq!(adm.admit(a, later), Err(Refused));
        adm.release(second);
        adm.release(third);
        assert_eq!(adm.open(a), 0, "every place given back");
        assert!(adm.admit(a, later).unwrap().is_some());
        // a 429 held 1 s and saying Retry-After: 1 counts for 2 s
        assert_eq!(Admission::span(1), Duration::from_secs(2));
        assert_eq!(Admission::span(30), Duration::from_secs(31));
    }

    #[test]
    fn admission_memory_is_bounded_and_a_shared_slot_never_refuses_another_address() {
        let adm = Admission::new(1);
        let t0 = Instant::now();
        // far more flagged addresses than slots: the table does not grow
        for i in 0..(FLAG_SLOTS as u32 * 4) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            adm.flag(a, Duration::from_secs(1), t0);
            let _ = adm.admit(a, t0);
        }
        assert_eq!(adm.slots.len(), FLAG_SLOTS);
        // two addresses whose hashes meet
        let a = ip("192.168.0.1");
        let b = (1u32..)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0xc0a8_0001 + i)))
            .find(|b| Admission::slot(*b) == Admission::slot(a))
            .unwrap();
        let adm = Admission::new(1);
        adm.flag(a, Duration::from_secs(1), t0);
        let held = adm.admit(a, t0).unwrap().expect("counted");
        assert_eq!(adm.admit(a, t0), Err(Refused));
        for _ in 0..10 {
            assert_eq!(adm.admit(b, t0), Ok(None), "b was never flagged");
        }
        // b's flag takes the slot: a is admitted again, b counted
        adm.flag(b, Duration::from_secs(1), t0);
        assert_eq!(adm.admit(a, t0), Ok(None));
        let held_b = adm.admit(b, t0).unwrap().expect("counted");
        assert_eq!(adm.admit(b, t0), Err(Refused));
        // a's old connection closing does not give b a place
        adm.release(held);
        assert_eq!(adm.admit(b, t0), Err(Refused));
        adm.release(held_b);
        assert!(adm.admit(b, t0).unwrap().is_some());
        // IPv6, and a mapped IPv4 address is its IPv4 one
        adm.flag(ip("::ffff:10.9.8.7"), Duration::from_secs(1), t0);
        assert!(adm.admit(ip("10.9.8.7"), t0).unwrap().is_some());
        assert_eq!(adm.admit(ip("10.9.8.7"), t0), Err(Refused));
        adm.flag(ip("fd00::1"), Duration::from_secs(1), t0);
        assert!(adm.admit(ip("fd00::1"), t0).unwrap().is_some());
        assert_eq!(adm.admit(ip("fd00::1"), t0), Err(Refused));
        assert_eq!(adm.admit(ip("fd00::2"), t0), Ok(None));
    }

    #[test]
    fn checks_refuse_bad_values() {
        let bad = |p: Policy| check(&p).unwrap_err();
        assert!(bad(Policy {
            allow: vec!["10.0.0.0/33".into()],
            ..Policy::default()
        })
        .contains("0 to 32"));
        assert!(bad(Policy {
            rate_limit: Some(0),
            ..Policy::default()
        })
        .contains("at least 1"));
        assert!(check(&Policy::default()).is_ok());
        assert!(Compiled::new(&Policy::default()).is_none());
    }
}

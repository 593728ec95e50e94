//! Deployment ids: 14 lowercase base32 characters, time-ordered (10 for the
//! millisecond clock, 4 random), so they sort by creation and fit in a DNS
//! label of a preview hostname.

use rand::Rng;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

pub fn new_id() -> String {
    let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let rnd: u32 = rand::thread_rng().gen_range(0..(1 << 20));
    encode(ms, 10) + &encode(rnd as u64, 4)
}

fn encode(mut v: u64, len: usize) -> String {
    let mut out = vec![b'0'; len];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    String::from_utf8(out).expect("alphabet is ascii")
}

/// Current time at millisecond precision (what the store keeps exactly).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_safe_unique_and_time_ordered() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert_eq!(a.len(), 14);
        assert!(a < b);
        assert!(berth_core::names::project_name(&format!("x{a}")).is_ok());
    }
}

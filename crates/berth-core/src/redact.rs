//! Redaction of secret values in log lines and failure messages: every
//! secret, its base64 and its URL-encoded forms become `***`.

/// Replaces secret values in text. Values shorter than 4 bytes are not
/// redacted (they would mask ordinary words), which the docs say.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

pub const MASK: &str = "***";

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn url_encode(input: &str) -> String {
    let mut out = String::new();
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for s in secrets {
            if s.len() < 4 {
                continue;
            }
            let b64 = base64(s.as_bytes());
            let forms = [
                s.to_string(),
                b64.trim_end_matches('=').to_string(),
                url_encode(s),
                url_encode(s).replace("%20", "+"),
            ];
            for f in forms {
                if f.len() >= 4 && !needles.contains(&f) {
                    needles.push(f);
                }
            }
        }
        // Longest first, so a value containing another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Redactor { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }
}

/// Redacts a byte stream cut into arbitrary chunks (a terminal's output):
/// a secret split across two chunks is masked too. The bytes at the end
/// of a chunk that could be the start of a secret are held back until the
/// next chunk shows whether they are, or until [`StreamRedactor::flush`].
#[derive(Clone, Debug, Default)]
pub struct StreamRedactor {
    needles: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl StreamRedactor {
    pub fn new(r: &Redactor) -> Self {
        StreamRedactor {
            needles: r.needles.iter().map(|n| n.as_bytes().to_vec()).collect(),
            held: Vec::new(),
        }
    }

    /// The redacted bytes of `chunk` that can go out now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return chunk.to_vec();
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        let out = self.mask(&data);
        // Hold back the longest tail that is a proper prefix of a secret.
        let keep = self
            .needles
            .iter()
            .map(|n| {
                (1..n.len().min(out.len() + 1))
                    .rev()
                    .find(|&k| out.ends_with(&n[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let (now, later) = out.split_at(out.len() - keep);
        self.held = later.to_vec();
        now.to_vec()
    }

    /// Whatever is held back (the stream ended, or went quiet).
    pub fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Whether bytes are held back.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'outer: while i < data.len() {
            // Longest first, as in [`Redactor::redact`].
            for n in &self.needles {
                if data[i..].starts_with(n) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += n.len();
                    continue 'outer;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_masks_secrets_split_across_chunks() {
        let r = Redactor::new(["hunter22"]);
        let mut s = StreamRedactor::new(&r);
        let mut out = Vec::new();
        for chunk in [&b"pw=hun"[..], b"ter", b"22\r\n$ ", b"hunt"] {
            out.extend(s.push(chunk));
        }
        // The prompt went out at once; the trailing "hunt" is held back.
        assert_eq!(out, b"pw=***\r\n$ ");
        assert!(s.holds());
        out.extend(s.flush());
        assert_eq!(out, b"pw=***\r\n$ hunt");
        // Nothing to redact: bytes pass as they are.
        let mut none = StreamRedactor::new(&Redactor::new([]));
        assert_eq!(none.push(b"\x1b[1mhi"), b"\x1b[1mhi");
        assert!(!none.holds());
    }

    #[test]
    fn masks_value_base64_and_url_forms() {
        let r = Redactor::new(["p@ss word/1", "abc"]);
        assert_eq!(r.redact("x p@ss word/1 y"), "x *** y");
        assert_eq!(r.redact("auth cEBzcyB3b3JkLzE= end"), "auth ***= end");
        assert_eq!(r.redact("q=p%40ss%20word%2F1"), "q=***");
        assert_eq!(r.redact("q=p%40ss+word%2F1"), "q=***");
        assert_eq!(r.redact("abc stays"), "abc stays");
        assert!(Redactor::new([]).is_empty());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}

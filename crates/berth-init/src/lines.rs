//! Log records on the stdout/stderr ports: `<unix nanoseconds> <line>\n`.
//!
//! The init cuts the app's output into lines and stamps each with the guest
//! clock; a line longer than [`MAX_RECORD_BYTES`] is cut into several
//! records, and a last line without `\n` is flushed at EOF.

/// Longest line payload in one record.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// Cuts a byte stream into stamped records.
#[derive(Debug, Default)]
pub struct Framer {
    pending: Vec<u8>,
}

impl Framer {
    /// Feeds `data`; complete records are appended to `out`.
    pub fn push(&mut self, data: &[u8], now_ns: i64, out: &mut Vec<u8>) {
        for &byte in data {
            if byte == b'\n' {
                emit(&self.pending, now_ns, out);
                self.pending.clear();
            } else {
                self.pending.push(byte);
                if self.pending.len() == MAX_RECORD_BYTES {
                    emit(&self.pending, now_ns, out);
                    self.pending.clear();
                }
            }
        }
    }

    /// Flushes an unterminated last line.
    pub fn finish(&mut self, now_ns: i64, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            emit(&self.pending, now_ns, out);
            self.pending.clear();
        }
    }
}

fn emit(line: &[u8], now_ns: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(now_ns.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// Splits one record (without its `\n`) into its timestamp and line.
/// `None` for anything that is not a record.
pub fn parse_record(record: &[u8]) -> Option<(i64, &[u8])> {
    let space = record.iter().position(|&b| b == b' ')?;
    let stamp = std::str::from_utf8(&record[..space]).ok()?.parse().ok()?;
    Some((stamp, &record[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_lines_across_chunks() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        framer.push(b"hel", 5, &mut out);
        assert!(out.is_empty());
        framer.push(b"lo\n\nwor", 6, &mut out);
        framer.finish(7, &mut out);
        assert_eq!(out, b"6 hello\n6 \n7 wor\n");
        let records: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .map(|r| parse_record(r).unwrap())
            .collect();
        assert_eq!(
            records,
            vec![(6, &b"hello"[..]), (6, &b""[..]), (7, &b"wor"[..])]
        );
    }

    #[test]
    fn cuts_overlong_lines() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        framer.push(&vec![b'x'; MAX_RECORD_BYTES + 3], 1, &mut out);
        framer.finish(2, &mut out);
        let lines: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(parse_record(lines[0]).unwrap().1.len(), MAX_RECORD_BYTES);
        assert_eq!(parse_record(lines[1]).unwrap(), (2, &b"xxx"[..]));
    }

    #[test]
    fn rejects_non_records() {
        assert_eq!(parse_record(b"no-stamp here"), None);
        assert_eq!(parse_record(b"12"), None);
    }
}

//! Turns engine log frames (`<RFC 3339 timestamp> <text>`, one or more lines
//! or part of one) into one [`LogChunk`] per line.

use chrono::{DateTime, Utc};

use crate::spec::{LogChunk, LogStream};

/// Longest line kept whole; longer ones are cut into pieces of this size so
/// a process that never prints a newline cannot grow memory without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits frames into lines, per stream. A line split over several frames
/// (the engine cuts lines longer than 16 KiB) is joined again and keeps the
/// timestamp of its first part.
#[derive(Debug, Default)]
pub struct LineSplitter {
    stdout: Option<(DateTime<Utc>, Vec<u8>)>,
    stderr: Option<(DateTime<Utc>, Vec<u8>)>,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one frame; returns the lines it completed.
    pub fn push(&mut self, stream: LogStream, frame: &[u8]) -> Vec<LogChunk> {
        let (ts, mut text) = split_timestamp(frame);
        let pending = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        let mut out = Vec::new();
        loop {
            let (line_ts, buf) = pending.get_or_insert_with(|| (ts, Vec::new()));
            match text.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    buf.extend_from_slice(&text[..i]);
                    let line_ts = *line_ts;
                    let buf = std::mem::take(buf);
                    *pending = None;
                    push_line(&mut out, stream, line_ts, buf);
                    text = &text[i + 1..];
                    if text.is_empty() {
                        break;
                    }
                }
                None => {
                    buf.extend_from_slice(text);
                    while buf.len() >= MAX_LINE_BYTES {
                        let rest = buf.split_off(MAX_LINE_BYTES);
                        let full = std::mem::replace(buf, rest);
                        push_line(&mut out, stream, *line_ts, full);
                    }
                    if buf.is_empty() {
                        *pending = None;
                    }
                    break;
                }
            }
        }
        out
    }

    /// Lines still waiting for their newline (the stream ended).
    pub fn finish(&mut self) -> Vec<LogChunk> {
        let mut out = Vec::new();
        for (stream, pending) in [
            (LogStream::Stdout, self.stdout.take()),
            (LogStream::Stderr, self.stderr.take()),
        ] {
            if let Some((ts, buf)) = pending {
                if !buf.is_empty() {
                    push_line(&mut out, stream, ts, buf);
                }
            }
        }
        out.sort_by_key(|c| c.ts);
        out
    }
}

fn push_line(out: &mut Vec<LogChunk>, stream: LogStream, ts: DateTime<Utc>, mut buf: Vec<u8>) {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let line = match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    out.push(LogChunk { stream, ts, line });
}

/// Splits `<timestamp> <rest>`; a frame without a parsable timestamp is
/// taken whole and stamped now.
fn split_timestamp(frame: &[u8]) -> (DateTime<Utc>, &[u8]) {
    if let Some(space) = frame.iter().take(40).position(|&b| b == b' ') {
        if let Ok(s) = std::str::from_utf8(&frame[..space]) {
            if let Ok(ts) = DateTime::parse_from_rfc3339(s) {
                return (ts.with_timezone(&Utc), &frame[space + 1..]);
            }
        }
    }
    (Utc::now(), frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[LogChunk]) -> Vec<(&str, LogStream)> {
        chunks.iter().map(|c| (c.line.as_str(), c.stream)).collect()
    }

    #[test]
    fn one_frame_one_line() {
        let mut s = LineSplitter::new();
        let out = s.push(LogStream::Stdout, b"2024-05-01T10:00:00.123456789Z hello\n");
        assert_eq!(lines(&out), [("hello", LogStream::Stdout)]);
        assert_eq!(
            out[0].ts.to_rfc3339(),
            "2024-05-01T10:00:00.123456789+00:00"
        );
        assert!(s.finish().is_empty());
    }

    #[test]
    fn several_lines_in_one_frame_and_crlf() {
        let mut s = LineSplitter::new();
        let out = s.push(LogStream::Stderr, b"2024-05-01T10:00:00Z a\r\nb\n\nc\n");
        assert_eq!(
            lines(&out),
            [
                ("a", LogStream::Stderr),
                ("b", LogStream::Stderr),
                ("", LogStream::Stderr),
                ("c", LogStream::Stderr)
            ]
        );
    }

    #[test]
    fn partial_lines_are_joined_per_stream() {
        let mut s = LineSplitter::new();
        assert!(s
            .push(LogStream::Stdout, b"2024-05-01T10:00:00Z par")
            .is_empty());
        let err = s.push(LogStream::Stderr, b"2024-05-01T10:00:01Z oops\n");
        assert_eq!(lines(&err), [("oops", LogStream::Stderr)]);
        let out = s.push(LogStream::Stdout, b"2024-05-01T10:00:02Z tial\nnext");
        assert_eq!(lines(&out), [("partial", LogStream::Stdout)]);
        assert_eq!(out[0].ts.to_rfc3339(), "2024-05-01T10:00:00+00:00");
        assert_eq!(lines(&s.finish()), [("next", LogStream::Stdout)]);
    }

    #[test]
    fn frames_without_timestamp_are_kept() {
        let mut s = LineSplitter::new();
        let out = s.push(LogStream::Stdout, b"no timestamp here\n");
        assert_eq!(lines(&out), [("no timestamp here", LogStream::Stdout)]);
    }

    #[test]
    fn endless_lines_are_cut() {
        let mut s = LineSplitter::new();
        let mut frame = b"2024-05-01T10:00:00Z ".to_vec();
        frame.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES * 2 + 5));
        let out = s.push(LogStream::Stdout, &frame);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.line.len() == MAX_LINE_BYTES));
        assert_eq!(s.finish()[0].line.len(), 5);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut s = LineSplitter::new();
        let out = s.push(LogStream::Stdout, b"2024-05-01T10:00:00Z a\xffb\n");
        assert_eq!(out[0].line, "a\u{fffd}b");
    }
}

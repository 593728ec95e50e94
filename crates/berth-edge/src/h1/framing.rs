//! Message framing: `Content-Length` and `Transfer-Encoding` read exactly as
//! hyper reads them, and the edge's request rule, stricter than hyper's.

/// Largest body length (hyper refuses the two values above it).
const MAX_LENGTH: u64 = u64::MAX - 2;

/// A request's `Content-Length` value, as hyper's server reads it: decimal
/// digits only (blanks around are not part of a value), no sign, no
/// overflow.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() {
        return None;
    }
    v.iter()
        .try_fold(0u64, |n, b| {
            let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            n.checked_mul(10)?.checked_add(u64::from(d))
        })
        .filter(|n| *n <= MAX_LENGTH)
}

/// A response's `Content-Length` value, as hyper's client reads it: one
/// length, or a comma list of equal lengths (`5, 5`).
pub(crate) fn parse_length_list(v: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in v.split(|b| *b == b',') {
        let n = parse_length(part)?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// True if a `Transfer-Encoding` value's last coding is `chunked` (the value
/// must be visible ASCII, as for hyper).
pub(crate) fn is_chunked(v: &[u8]) -> bool {
    if !v.iter().all(|b| *b == b'\t' || (b' '..0x7f).contains(b)) {
        return false;
    }
    let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// This many bytes (0: no body).
    Length(u64),
    Chunked,
}

/// Why a request head is refused (400, connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("both content-length and transfer-encoding")]
    LengthAndChunked,
    #[error("invalid or conflicting content-length")]
    BadLength,
    #[error("transfer-encoding whose final coding is not chunked")]
    NotChunked,
    #[error("transfer-encoding in an http/1.0 request")]
    ChunkedHttp10,
}

/// The body framing of a request from its headers (`http11`: the request
/// line says HTTP/1.1). The edge refuses a request with both
/// `Content-Length` and `Transfer-Encoding` (hyper would let the chunks
/// decide): a request smuggling vector, never forwarded.
pub(crate) fn request_body(
    headers: &[httparse::Header<'_>],
    http11: bool,
) -> Result<Body, FramingError> {
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(FramingError::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::BadLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(FramingError::ChunkedHttp10);
            }
            // the last header decides, as its last coding
            chunked = Some(is_chunked(h.value));
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) => Err(FramingError::LengthAndChunked),
        (Some(true), None) => Ok(Body::Chunked),
        (Some(false), None) => Err(FramingError::NotChunked),
        (None, l) => Ok(Body::Length(l.unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_plain_decimal() {
        assert_eq!(parse_length(b"24"), Some(24));
        assert_eq!(parse_length(b" 0 "), Some(0));
        assert_eq!(parse_length(b"5, 5"), None, "a list, not a request length");
        assert_eq!(parse_length_list(b"5, 5"), Some(5));
        assert_eq!(parse_length_list(b"5,6"), None);
        assert_eq!(parse_length_list(b"5,"), None);
        assert_eq!(parse_length(b"18446744073709551613"), Some(u64::MAX - 2));
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"18446744073709551614",
            b"18446744073709551616",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn request_framing_rules() {
        assert_eq!(request_body(&[], true), Ok(Body::Length(0)));
        assert_eq!(
            request_body(&[h("Content-Length", "3"), h("content-length", "3")], true),
            Ok(Body::Length(3))
        );
        assert_eq!(
            request_body(&[h("Content-Length", "3"), h("content-length", "4")], true),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            request_body(&[h("Transfer-Encoding", "gzip, Chunked")], true),
            Ok(Body::Chunked)
        );
        assert_eq!(
            request_body(&[h("Transfer-Encoding", "chunked, gzip")], true),
            Err(FramingError::NotChunked)
        );
        assert_eq!(
            request_body(&[h("Transfer-Encoding", "chunked")], false),
            Err(FramingError::ChunkedHttp10)
        );
        for pair in [
            [h("Content-Length", "4"), h("Transfer-Encoding", "chunked")],
            [h("Transfer-Encoding", "chunked"), h("Content-Length", "4")],
        ] {
            assert_eq!(
                request_body(&pair, true),
                Err(FramingError::LengthAndChunked)
            );
        }
    }
}

//! The chunked transfer coding (RFC 9112 7.1), decoded with hyper's rules:
//! a size of hex digits (no overflow), then optional blanks, a `;`
//! extension (at most [`EXTENSIONS_LIMIT`] bytes per body, no bare LF), CRLF;
//! data then CRLF; after the last chunk, trailer lines (at most
//! [`TRAILERS_LIMIT`] bytes and [`super::MAX_HEADERS`] lines, which must
//! parse as header fields) and CRLF. Anything else is [`BadChunk`].
//!
//! The decoder is fed whatever bytes have arrived ([`Decoder::decode`]) and
//! says how many are framing and how many body data that follows; trailers
//! are read and dropped (the edge does not forward them).

/// Bytes of chunk extensions accepted per body.
pub(crate) const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Bytes of trailers accepted per body.
pub(crate) const TRAILERS_LIMIT: usize = 16 * 1024;

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked framing")]
pub(crate) struct BadChunk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first digit of a size.
    Start,
    Size,
    /// Blanks after the size.
    SizeLws,
    Ext,
    SizeLf,
    /// This many data bytes left in the chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk, at the start of a line (trailer or the end).
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body being decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoder {
    state: State,
    size: u64,
    extensions: u64,
    /// The trailer section (allocated only if there is one) and its lines.
    trailers: Option<Vec<u8>>,
    trailer_lines: usize,
}

/// What [`Decoder::decode`] found at the start of a buffer: `framing` bytes
/// of chunk framing, then `data` bytes of body data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) framing: usize,
    pub(crate) data: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub(crate) const fn new() -> Decoder {
        Decoder {
            state: State::Start,
            size: 0,
            extensions: 0,
            trailers: None,
            trailer_lines: 0,
        }
    }

    /// The body has ended (last chunk and trailers read).
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), BadChunk> {
        let t = self.trailers.get_or_insert_with(Vec::new);
        t.push(b);
        if t.len() >= TRAILERS_LIMIT {
            return Err(BadChunk);
        }
        Ok(())
    }

    /// Reads the framing at the start of `buf` up to the next body data; the
    /// caller consumes `framing + data` bytes. `data` is 0 when `buf` ran out
    /// or the body is done ([`Decoder::is_done`]).
    pub(crate) fn decode(&mut self, buf: &[u8]) -> Result<Step, BadChunk> {
        let mut i = 0;
        loop {
            if let State::Data(rem) = self.state {
                let n = rem.min((buf.len() - i) as u64) as usize;
                if n > 0 {
                    self.state = if rem == n as u64 {
                        State::DataCr
                    } else {
                        State::Data(rem - n as u64)
                    };
                }
                return Ok(Step {
                    framing: i,
                    data: n,
                });
            }
            if self.state == State::Done || i == buf.len() {
                return Ok(Step {
                    framing: i,
                    data: 0,
                });
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Start | State::Size, b) if b.is_ascii_hexdigit() => {
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or(BadChunk)?;
                    State::Size
                }
                (State::Size | State::SizeLws, b'\t' | b' ') => State::SizeLws,
                (State::Size | State::SizeLws, b';') => State::Ext,
                (State::Size | State::SizeLws | State::Ext, b'\r') => State::SizeLf,
                (State::Ext, b'\n') => return Err(BadChunk),
                (State::Ext, _) => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        return Err(BadChunk);
                    }
                    State::Ext
                }
                (State::SizeLf, b'\n') => {
                    let size = std::mem::take(&mut self.size);
                    if size == 0 {
                        State::EndCr
                    } else {
                        State::Data(size)
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Start,
                (State::EndCr, b'\r') => {
                    if self.trailers.is_some() {
                        self.trailer_byte(b)?;
                    }
                    State::EndLf
                }
                (State::EndCr | State::Trailer, b) => {
                    self.trailer_byte(b)?;
                    if b == b'\r' {
                        State::TrailerLf
                    } else {
                        State::Trailer
                    }
                }
                (State::TrailerLf, b'\n') => {
                    if self.trailer_lines >= super::MAX_HEADERS {
                        return Err(BadChunk);
                    }
                    self.trailer_lines += 1;
                    self.trailer_byte(b)?;
                    State::EndCr
                }
                (State::EndLf, b'\n') => {
                    if self.trailers.is_some() {
                        self.trailer_byte(b)?;
                        let t = self.trailers.take().unwrap_or_default();
                        check_trailers(&t, self.trailer_lines)?;
                    }
                    State::Done
                }
                _ => return Err(BadChunk),
            };
        }
    }
}

/// The trailer section must parse as header fields (names and values that
/// `http` accepts), as hyper requires.
fn check_trailers(section: &[u8], lines: usize) -> Result<(), BadChunk> {
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(section, &mut headers) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            for h in parsed {
                http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| BadChunk)?;
                http::HeaderValue::from_bytes(h.value).map_err(|_| BadChunk)?;
            }
            Ok(())
        }
        _ => Err(BadChunk),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `split` bytes: the body data, and
    /// whether the body ended exactly at the end of the input.
    pub(crate) fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool), BadChunk> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let step = d.decode(&buf)?;
                out.extend_from_slice(&buf[step.framing..step.framing + step.data]);
                buf.drain(..step.framing + step.data);
                if step.data == 0 {
                    break;
                }
            }
        }
        Ok((out, d.is_done() && buf.is_empty()))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let input =
            b"5;ext=1\r\nhello\r\n1A \t\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in [1, 2, 3, 7, 100] {
            let (out, done) = decode_all(input, split).unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz", "split {split}");
            assert!(done, "split {split}");
        }
        let (out, done) = decode_all(b"0\r\n\r\n", 1).unwrap();
        assert!(out.is_empty() && done);
        let (out, done) = decode_all(b"000000000000000000003\r\nabc\r\n0\r\n\r\n", 5).unwrap();
        assert!(out == b"abc" && done, "leading zeros do not overflow");
        let (_, done) = decode_all(b"3\r\nabc\r\n", 2).unwrap();
        assert!(!done, "no last chunk yet");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b" 3\r\n",
            b"3\r\nabcX\r\n",
            b"3\nabc",
            b"3;a\nabc",
            b"3 4\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx\n\r\n\r\n",
            b"0\r\nbad name: 1\r\n\r\n",
            b"0\r\n\rx",
        ] {
            assert!(
                decode_all(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long_ext = b"1;".to_vec();
        long_ext.resize(EXTENSIONS_LIMIT as usize + 10, b'a');
        assert!(decode_all(&long_ext, 4096).is_err());
        let mut many = b"0\r\n".to_vec();
        for i in 0..=crate::h1::MAX_HEADERS {
            many.extend_from_slice(format!("t{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(decode_all(&many, 4096).is_err());
    }
}

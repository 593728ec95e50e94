//! Splicing of upgraded connections, and their clean close on drain.
//!
//! Bytes are copied both ways as they come. For a WebSocket each direction
//! also follows the frame headers (2 to 14 bytes, then the payload length),
//! so a drain can wait for the end of the frame in flight (at most
//! [`FRAME_END_WAIT`]) and then inject a close frame with status 1001
//! ("going away"): unmasked towards the client, masked towards the upstream
//! (RFC 6455 5.3). The write side is then shut down, and what the peer still
//! sends (its close reply) is read and discarded for up to [`LINGER`], so
//! the socket is not reset under its feet. Other upgraded protocols are
//! shut down at once.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a drain waits for the frame in flight to end.
pub(crate) const FRAME_END_WAIT: Duration = Duration::from_secs(2);
/// How long the peer's input is drained after the close frame.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Close frame, status 1001, server to client (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Follows WebSocket frame boundaries in one direction.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
}

impl FrameTracker {
    /// True between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Consumes `data` up to the end of the frame in progress (or the whole
    /// of `data`); returns the bytes consumed. At a boundary it consumes 0.
    pub(crate) fn finish_frame(&mut self, data: &[u8]) -> usize {
        if self.at_boundary() {
            return 0;
        }
        let mut used = 0;
        while used < data.len() {
            used += self.step(&data[used..]);
            if self.at_boundary() {
                break;
            }
        }
        used
    }

    /// Consumes all of `data`.
    pub(crate) fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// Consumes some of `data` (at least one byte, at most one frame part).
    fn step(&mut self, data: &[u8]) -> usize {
        if self.payload_left > 0 {
            let n = usize::try_from(self.payload_left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.payload_left -= n as u64;
            return n;
        }
        self.header[self.header_len] = data[0];
        self.header_len += 1;
        if self.header_len < 2 {
            return 1;
        }
        let masked = self.header[1] & 0x80 != 0;
        let len7 = self.header[1] & 0x7F;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.header_len < need {
            return 1;
        }
        self.payload_left = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
        };
        self.header_len = 0;
        1
    }
}

/// A masked close frame (client to server), status 1001.
fn close_to_upstream() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0x5A5A_5A5A);
    let m = (nanos ^ 0x9E37_79B9).to_be_bytes();
    [0x88, 0x82, m[0], m[1], m[2], m[3], 0x03 ^ m[0], 0xE9 ^ m[1]]
}

/// Copies `src` to `dst` until EOF (then shuts `dst` down) or until `drain`
/// is cancelled (then, for a WebSocket, ends the frame in flight and writes
/// `close_frame`, shuts `dst` down, and discards `src` for a moment).
async fn pump<R, W>(
    mut src: R,
    mut dst: W,
    drain: CancellationToken,
    mut frames: Option<FrameTracker>,
    close_frame: &[u8],
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = dst.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = drain.cancelled() => break,
        };
        if dst.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(f) = &mut frames {
            f.advance(&buf[..n]);
        }
    }
    // Draining.
    if let Some(mut f) = frames {
        let deadline = tokio::time::Instant::now() + FRAME_END_WAIT;
        while !f.at_boundary() {
            let r = tokio::time::timeout_at(deadline, src.read(&mut buf)).await;
            let n = match r {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            let used = f.finish_frame(&buf[..n]);
            if dst.write_all(&buf[..used]).await.is_err() {
                return;
            }
        }
        if f.at_boundary() {
            let _ = dst.write_all(close_frame).await;
        }
    }
    let _ = dst.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(src.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Splices `client` and `upstream` until both directions end.
pub(crate) async fn splice<C, U>(client: C, upstream: U, drain: CancellationToken, websocket: bool)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = tokio::io::split(upstream);
    let frames = websocket.then(FrameTracker::default);
    let to_upstream = close_to_upstream();
    tokio::join!(
        pump(client_r, up_w, drain.clone(), frames.clone(), &to_upstream),
        pump(up_r, client_w, drain, frames, &CLOSE_TO_CLIENT),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_byte_by_byte() {
        // unmasked "hi", masked 3 bytes, 16-bit length 300, empty ping
        let mut stream = vec![0x81, 0x02, b'h', b'i'];
        stream.extend_from_slice(&[0x81, 0x83, 1, 2, 3, 4, 9, 9, 9]);
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2C]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0x00]);
        let ends = [4, 13, 17 + 300, 17 + 302];
        let mut f = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            f.advance(std::slice::from_ref(b));
            assert_eq!(f.at_boundary(), ends.contains(&(i + 1)), "after byte {i}");
        }
    }

    #[test]
    fn finish_frame_stops_at_the_end_of_the_frame_in_flight() {
        let mut f = FrameTracker::default();
        f.advance(&[0x81, 0x05, b'a', b'b']);
        assert!(!f.at_boundary());
        let next = [b'c', b'd', b'e', 0x81, 0x01, b'z'];
        assert_eq!(f.finish_frame(&next), 3);
        assert!(f.at_boundary());
        assert_eq!(f.finish_frame(&next[3..]), 0);
        // a 64-bit length
        let mut g = FrameTracker::default();
        g.advance(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(!g.at_boundary());
        assert_eq!(g.finish_frame(&vec![0u8; 70_000]), 65_536);
    }

    #[test]
    fn close_frames_carry_1001() {
        let up = close_to_upstream();
        assert_eq!(up[0], 0x88);
        assert_eq!(up[1], 0x82, "masked, 2 bytes");
        assert_eq!([up[6] ^ up[2], up[7] ^ up[3]], [0x03, 0xE9]);
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
    }
}

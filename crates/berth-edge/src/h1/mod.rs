//! The HTTP/1 rules of the edge, in one place: every path (the hand-written
//! client loop `front.rs`, the framing scanner `scan.rs` in front of hyper,
//! the hand-written upstream client `fast.rs` and hyper's path `proxy.rs`)
//! reads messages with these and nothing else.
//!
//! * [`MAX_HEAD`] and [`MAX_HEADERS`]: the limits of a message head, the
//!   same for hyper (its `max_buf_size` and `max_headers` are set to them),
//!   the scanner, the client loop and the upstream client.
//! * `hop`: the hop-by-hop header list and the `Connection`-named headers,
//!   removed in both directions.
//! * `framing`: `Content-Length` and `Transfer-Encoding` as hyper reads them,
//!   and the edge's stricter request rule (both present, or lengths that
//!   disagree: 400 and close).
//! * `chunked`: the one chunked decoder (requests in the scanner, responses
//!   in the upstream client), byte for byte hyper's rules: CRLF only, chunk
//!   extensions and trailers bounded, trailers that must parse as headers.
//!
//! The property test in `prop.rs` feeds generated and mutated requests to
//! these parsers and to hyper's server and requires the same verdict.

pub(crate) mod chunked;
pub(crate) mod framing;
pub(crate) mod hop;
#[cfg(test)]
mod prop;

/// Longest message head (request or response) read, in bytes.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a message head (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;

//! HTTP health probes against an instance's published address, and the
//! schedule a caller follows while waiting for a new instance.
//!
//! A probe is one `GET <path>` over a fresh TCP connection with
//! `Host: localhost` and `Connection: close`; 2xx and 3xx are healthy.
//! Every failure is reported as a short human string (`connection refused`,
//! `timed out after 5s`, ...) for messages like `GET / -> connection refused`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::spec::Endpoint;

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The instance answered with this HTTP status.
    Status(u16),
    /// No HTTP answer.
    Failed(ProbeFailure),
}

impl ProbeResult {
    /// 2xx and 3xx are healthy.
    pub fn is_healthy(&self) -> bool {
        matches!(self, ProbeResult::Status(code) if (200..400).contains(code))
    }

    /// `GET <path> -> <outcome>`, for failure messages.
    pub fn describe(&self, path: &str) -> String {
        format!("GET {path} -> {self}")
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Status(code) => write!(f, "{code}"),
            ProbeResult::Failed(failure) => write!(f, "{failure}"),
        }
    }
}

/// Why a probe got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("connection refused")]
    Refused,
    #[error("connection reset")]
    Reset,
    #[error("connection closed without a response")]
    Closed,
    #[error("timed out after {}", fmt_duration(*.0))]
    Timeout(Duration),
    #[error("invalid http response")]
    BadResponse,
    #[error("invalid path {0:?}")]
    BadPath(String),
    #[error("{0}")]
    Other(String),
}

/// Probes `http://<endpoint><path>` once; the whole exchange (connect, send,
/// response head) is bounded by `timeout`. The body is not read.
pub async fn probe(endpoint: &Endpoint, path: &str, timeout: Duration) -> ProbeResult {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let request = match Request::get(path.as_str())
        .header(HOST, "localhost")
        .header(CONNECTION, "close")
        .header(USER_AGENT, "berth-health/1")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(_) => return ProbeResult::Failed(ProbeFailure::BadPath(path)),
    };
    match tokio::time::timeout(timeout, exchange(endpoint, request)).await {
        Ok(Ok(code)) => ProbeResult::Status(code),
        Ok(Err(failure)) => ProbeResult::Failed(failure),
        Err(_) => ProbeResult::Failed(ProbeFailure::Timeout(timeout)),
    }
}

async fn exchange(
    endpoint: &Endpoint,
    request: Request<Empty<Bytes>>,
) -> Result<u16, ProbeFailure> {
    let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| io_failure(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failure(&e))?;
    // Drives the connection; aborted when this function returns or is
    // cancelled by the timeout.
    let driver = AbortOnDrop(tokio::spawn(conn));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_failure(&e))?;
    drop(driver);
    Ok(response.status().as_u16())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn io_failure(e: &std::io::Error) -> ProbeFailure {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => ProbeFailure::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            ProbeFailure::Reset
        }
        ErrorKind::UnexpectedEof => ProbeFailure::Closed,
        ErrorKind::TimedOut => ProbeFailure::Other("connect timed out".to_owned()),
        _ => ProbeFailure::Other(e.to_string()),
    }
}

fn hyper_failure(e: &hyper::Error) -> ProbeFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io_failure(io);
        }
        source = err.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        ProbeFailure::Closed
    } else if e.is_parse() {
        ProbeFailure::BadResponse
    } else {
        ProbeFailure::Other(e.to_string())
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// How often to probe a starting instance: every `burst_interval` during
/// the first `burst_for`, then every `fast_interval` until `fast_for`, then
/// every `slow_interval`. The caller drives it (sleeping
/// [`ProbeSchedule::interval_at`] between probes) and owns the deadline and
/// the failure threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSchedule {
    pub burst_interval: Duration,
    pub burst_for: Duration,
    pub fast_interval: Duration,
    pub fast_for: Duration,
    pub slow_interval: Duration,
}

impl ProbeSchedule {
    /// For a new instance: every 10 ms for 300 ms (most apps that start
    /// fast listen within it: the edge serves them within ~10 ms of it),
    /// every 100 ms until 3 s, then every 500 ms, so a slow app is not
    /// hammered.
    pub const STARTUP: ProbeSchedule = ProbeSchedule {
        burst_interval: Duration::from_millis(10),
        burst_for: Duration::from_millis(300),
        fast_interval: Duration::from_millis(100),
        fast_for: Duration::from_secs(3),
        slow_interval: Duration::from_millis(500),
    };

    /// A fixed interval (the steady-state check, e.g. every 15 s).
    pub const fn every(interval: Duration) -> Self {
        ProbeSchedule {
            burst_interval: interval,
            burst_for: Duration::ZERO,
            fast_interval: interval,
            fast_for: Duration::ZERO,
            slow_interval: interval,
        }
    }

    /// Wait before the next probe, `elapsed` after the first one.
    pub fn interval_at(&self, elapsed: Duration) -> Duration {
        if elapsed < self.burst_for {
            self.burst_interval
        } else if elapsed < self.fast_for {
            self.fast_interval
        } else {
            self.slow_interval
        }
    }
}

impl Default for ProbeSchedule {
    fn default() -> Self {
        Self::STARTUP
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one connection: reads the request head, records it, replies
    /// `reply` (or never replies when `None`).
    async fn one_shot_server(
        reply: Option<&'static str>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            match reply {
                Some(r) => {
                    let _ = sock.write_all(r.as_bytes()).await;
                    let _ = sock.shutdown().await;
                }
                None => std::future::pending::<()>().await,
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn ok_is_healthy_and_request_is_well_formed() {
        let (addr, server) =
            one_shot_server(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
        let result = probe(&addr.into(), "/healthz", Duration::from_secs(5)).await;
        assert_eq!(result, ProbeResult::Status(200));
        assert!(result.is_healthy());
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains("host: localhost\r\n"), "{head}");
    }

    #[tokio::test]
    async fn redirect_is_healthy_server_error_is_not() {
        let (addr, _s) = one_shot_server(Some(
            "HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        assert!(probe(&addr.into(), "/", Duration::from_secs(5))
            .await
            .is_healthy());

        let (addr, _s) = one_shot_server(Some(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        let result = probe(&addr.into(), "/", Duration::from_secs(5)).await;
        assert_eq!(result, ProbeResult::Status(500));
        assert!(!result.is_healthy());
        assert_eq!(result.describe("/"), "GET / -> 500");
    }

    #[tokio::test]
    async fn refused_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let result = probe(&addr.into(), "/", Duration::from_secs(5)).await;
        assert_eq!(result, ProbeResult::Failed(ProbeFailure::Refused));
        assert_eq!(result.describe("/"), "GET / -> connection refused");
    }

    #[tokio::test]
    async fn timeout_when_server_never_answers() {
        let (addr, server) = one_shot_server(None).await;
        let result = probe(&addr.into(), "/", Duration::from_millis(200)).await;
        assert_eq!(
            result,
            ProbeResult::Failed(ProbeFailure::Timeout(Duration::from_millis(200)))
        );
        assert_eq!(result.to_string(), "timed out after 200ms");
        server.abort();
    }

    #[tokio::test]
    async fn closed_without_response() {
        let (addr, _s) = one_shot_server(Some("")).await;
        let result = probe(&addr.into(), "/", Duration::from_secs(5)).await;
        assert!(!result.is_healthy());
        assert!(
            matches!(
                result,
                ProbeResult::Failed(ProbeFailure::Closed | ProbeFailure::Reset)
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn garbage_is_a_bad_response() {
        let (addr, _s) = one_shot_server(Some("SSH-2.0-OpenSSH\r\n\r\n")).await;
        let result = probe(&addr.into(), "/", Duration::from_secs(5)).await;
        assert_eq!(result, ProbeResult::Failed(ProbeFailure::BadResponse));
    }

    #[test]
    fn startup_schedule_backs_off() {
        let s = ProbeSchedule::STARTUP;
        assert_eq!(s.interval_at(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(
            s.interval_at(Duration::from_millis(290)),
            Duration::from_millis(10)
        );
        assert_eq!(
            s.interval_at(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(
            s.interval_at(Duration::from_millis(2900)),
            Duration::from_millis(100)
        );
        assert_eq!(
            s.interval_at(Duration::from_secs(3)),
            Duration::from_millis(500)
        );
        let steady = ProbeSchedule::every(Duration::from_secs(15));
        assert_eq!(steady.interval_at(Duration::ZERO), Duration::from_secs(15));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }
}

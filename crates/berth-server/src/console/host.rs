//! The console on its own hostname (`--console-host`): the edge answers
//! that hostname, over HTTP and (with `--https-listen`) HTTPS with a
//! certificate like any domain's, by proxying to a listener of the API
//! (console, `/api/v1`, `git push`) that only the edge is told about.
//!
//! ```text
//! browser ──https://console.example.com──▶ edge ──X-Forwarded-For/-Proto──▶ 127.0.0.1:<private port> ──▶ the API's router
//! CLI ─────http://<--api-listen>────────────────────────────────────────▶ --api-listen ───────────▶ the same router
//! ```
//!
//! Invariants: the forwarded headers are believed only on the private
//! listener, which serves only connections from this very process
//! ([`OwnEdgeOnly`]: another local process's connection is closed at
//! accept), so every request there comes from berth's own edge, which
//! replaces any `X-Forwarded-*` a client sent; so the audit log's source
//! IP is the browser's socket address through the edge and the socket's
//! own on `--api-listen` (where a sent `X-Forwarded-For` is ignored), and
//! a session cookie is `Secure` when the browser reached the edge over
//! TLS. A hostname an app already routes (a custom domain, an external
//! route, a service's hostname) keeps its app: the console route is left
//! out, with one error in the server log; adding such a route later is
//! refused naming the console host.

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use berth_edge::{RouteSpec, TargetSpec};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};

/// The edge target id of the console route (metrics, error pages).
pub const TARGET_ID: &str = "berth:console";

/// Why a `--console-host` is refused at start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Name(#[from] berth_core::names::NameError),
    #[error("{0} is a wildcard; the console needs one hostname")]
    Wildcard(String),
    #[error("{0} is an IP address; the console needs a hostname (its certificate names it)")]
    Address(String),
}

/// `--console-host` normalized (lowercase, no trailing dot), or why not.
pub fn check(name: &str) -> Result<String, HostError> {
    let host = berth_core::names::hostname(name.trim())?;
    if host.starts_with("*.") {
        return Err(HostError::Wildcard(host));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(HostError::Address(host));
    }
    Ok(host)
}

/// The console's hostname and the private listener the edge sends it to.
#[derive(Debug)]
pub struct ConsoleHost {
    pub host: String,
    /// `127.0.0.1:<port>` of the listener serving the API's router behind
    /// the edge (bound by the server at start; a restart binds another).
    pub upstream: SocketAddr,
    /// A collision with an app's hostname was logged already.
    warned: AtomicBool,
}

impl ConsoleHost {
    pub fn new(host: String, upstream: SocketAddr) -> Self {
        ConsoleHost {
            host,
            upstream,
            warned: AtomicBool::new(false),
        }
    }

    /// The edge route of the console host.
    pub fn route(&self) -> RouteSpec {
        RouteSpec {
            targets: vec![TargetSpec {
                id: TARGET_ID.into(),
                upstream: self.upstream.to_string(),
                weight: 100,
                deployment_id: None,
                sha: None,
            }],
            ..Default::default()
        }
    }

    /// Whether `spec` is a console route (this process's or an earlier
    /// one's, kept in the persisted table).
    pub fn is_console_route(spec: &RouteSpec) -> bool {
        spec.targets.iter().any(|t| t.id == TARGET_ID)
    }

    /// Logs, once, that an app's route holds the console's hostname.
    pub fn warn_taken(&self) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                host = %self.host,
                "--console-host is a hostname an app already routes (custom domain, external route or service hostname); the app keeps it and the console is not served there"
            );
        }
    }
}

/// Refuses an app's route or domain for the console's hostname (409
/// naming it).
pub fn refuse_console_host(
    cfg: &crate::ServerConfig,
    hostname: &str,
) -> Result<(), crate::error::ApiError> {
    match cfg.console_host.as_deref() {
        Some(console) if console == hostname => Err(crate::error::ApiError::conflict(format!(
            "{hostname} is the console's hostname (--console-host); choose another"
        ))),
        _ => Ok(()),
    }
}

/// What berth's edge said of a request on the private listener: whether
/// the browser reached the edge over TLS.
#[derive(Clone, Copy, Debug)]
pub struct ViaEdge {
    pub https: bool,
}

/// Layered over the router on the private listener only: the client's
/// address becomes the edge's `X-Forwarded-For` (the socket address the
/// edge saw; it drops any such header a client sent), and the request
/// carries [`ViaEdge`] with the edge's `X-Forwarded-Proto`.
pub async fn via_edge(mut req: Request, next: Next) -> Response {
    let client = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if let Some(ip) = client {
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 0)));
    }
    req.extensions_mut().insert(ViaEdge { https });
    next.run(req).await
}

/// The private listener: a connection is served only when its other end
/// is a socket of this process (the edge's connection pool); any other
/// local process's connection is closed at accept, so nobody else can
/// speak for the edge with forged `X-Forwarded-*` headers. Looked up in
/// `/proc` once per connection (the edge keeps its connections alive).
pub struct OwnEdgeOnly(pub tokio::net::TcpListener);

impl axum::serve::Listener for OwnEdgeOnly {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, peer) = axum::serve::Listener::accept(&mut self.0).await;
            let local = match io.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            match tokio::task::spawn_blocking(move || peer_is_this_process(peer, local)).await {
                Ok(Ok(true)) => return (io, peer),
                Ok(Ok(false)) => tracing::warn!(
                    %peer,
                    "a connection to the console host's private listener from another process was closed (only berth's edge may use it)"
                ),
                Ok(Err(e)) => tracing::warn!(
                    %peer,
                    error = %e,
                    "cannot tell who connected to the console host's private listener; closed"
                ),
                Err(_) => {}
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Whether the TCP connection from `peer` to `local` (a socket this
/// process accepted) was opened by this process: its `peer` end is found
/// in `/proc/net/tcp` and that socket's inode among `/proc/self/fd`.
pub fn peer_is_this_process(peer: SocketAddr, local: SocketAddr) -> std::io::Result<bool> {
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
        return Ok(false);
    };
    let (want_local, want_remote) = (proc_net_addr(peer), proc_net_addr(local));
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].to_owned())
    });
    let Some(inode) = inode.filter(|i| i != "0") else {
        return Ok(false);
    };
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An address as `/proc/net/tcp` prints it: the address's four bytes as
/// one native-endian word, then the port, both in hex.
fn proc_net_addr(a: SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::serve::ListenerExt;
    use std::future::IntoFuture;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    #[test]
    fn console_hosts_are_hostnames() {
        assert_eq!(
            check("Console.Example.com.").unwrap(),
            "console.example.com"
        );
        assert_eq!(check("console.localhost").unwrap(), "console.localhost");
        for (bad, why) in [
            ("", "empty"),
            ("bad_host", "only letters"),
            ("-x.example.com", "start or end"),
            ("*.example.com", "wildcard"),
            ("127.0.0.1", "IP address"),
            ("a..b", "1 to 63"),
        ] {
            let e = check(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_route_goes_to_the_private_listener() {
        let c = ConsoleHost::new("c.example.com".into(), ([127, 0, 0, 1], 4711).into());
        let r = c.route();
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].upstream, "127.0.0.1:4711");
        assert!(ConsoleHost::is_console_route(&r));
        assert!(!ConsoleHost::is_console_route(&RouteSpec::default()));
    }

    /// What a handler behind [`via_edge`] sees.
    async fn seen(headers: &[(&str, &str)]) -> String {
        let app = axum::Router::new()
            .route(
                "/",
                get(
                    |ConnectInfo(a): ConnectInfo<SocketAddr>,
                     e: Option<axum::Extension<ViaEdge>>| async move {
                        format!("{} {}", a.ip(), e.is_some_and(|e| e.https))
                    },
                ),
            )
            .layer(axum::middleware::from_fn(via_edge));
        let mut req = axum::http::Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 50000))));
        let resp = app.oneshot(req).await.unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_edge_headers_name_the_client_and_the_scheme() {
        assert_eq!(
            seen(&[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https")
            ])
            .await,
            "203.0.113.9 true"
        );
        assert_eq!(
            seen(&[
                ("x-forwarded-for", "2001:db8::1"),
                ("x-forwarded-proto", "http")
            ])
            .await,
            "2001:db8::1 false"
        );
        // Without the edge's header the socket's address stays.
        assert_eq!(seen(&[]).await, "127.0.0.1 false");
        assert_eq!(
            seen(&[("x-forwarded-for", "not an address")]).await,
            "127.0.0.1 false"
        );
    }

    #[tokio::test]
    async fn only_this_process_is_served_on_the_private_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/", get(|| async { "console" }));
        tokio::spawn(
            axum::serve(
                OwnEdgeOnly(listener).tap_io(|_| {}),
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .into_future(),
        );
        let request = "GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n";
        // Another process (a shell) connects and asks: closed unanswered.
        let other = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; printf '{}' >&3; cat <&3",
                request.replace("\r", "\\r").replace("\n", "\\n")
            ))
            .output()
            .await
            .unwrap();
        assert!(
            other.stdout.is_empty(),
            "another process was answered: {}",
            String::from_utf8_lossy(&other.stdout)
        );
        // This process (where the edge lives) is served.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("console"), "{answer}");
    }

    #[test]
    fn a_connection_is_told_apart_by_the_process_that_opened_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, peer) = l.accept().unwrap();
        assert_eq!(peer, ours.local_addr().unwrap());
        assert!(peer_is_this_process(peer, accepted.local_addr().unwrap()).unwrap());
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{}; sleep 5",
                l.local_addr().unwrap().port()
            ))
            .spawn()
            .unwrap();
        let (accepted, peer) = l.accept().unwrap();
        let theirs = peer_is_this_process(peer, accepted.local_addr().unwrap()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!theirs, "a shell's connection was taken for this process's");
    }
}

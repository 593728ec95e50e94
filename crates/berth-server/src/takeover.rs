//! Upgrading berth without dropping a request: `berth server --takeover`.
//!
//! The running server listens on a unix socket in its data dir
//! ([`SOCKET_FILE`], mode 0600 in the 0700 data dir: only its own user
//! reaches it). A new server started with `--takeover` on the same data dir:
//!
//! 1. connects and says hello (its pid and the addresses its flags ask for);
//! 2. the old one checks the addresses, stops accepting API connections
//!    (they wait in the kernel's backlog of the same socket), lets its
//!    running pipelines end (bounded; what still runs then is interrupted as
//!    a crash would be) and replies with the listening sockets (API, HTTP,
//!    HTTPS) as file descriptors (`SCM_RIGHTS`). From then on the control
//!    plane is the new process's: it reconciles (adopting the running
//!    containers), serves the API and runs deployments;
//! 3. the new one serves the edge on the same sockets and says ready;
//! 4. the old one stops accepting on the edge, finishes its in-flight
//!    requests and exits. Both edges accept on the same sockets meanwhile, so
//!    no connection is refused or reset.
//!
//! A takeover that fails before step 3 (a refused address, the new process
//! dying) leaves the old server carrying on: it serves the API again and
//! reconciles. Nothing here is called for a plain start.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The hand-over socket, in the data dir.
pub const SOCKET_FILE: &str = "takeover.sock";

/// How long the old server lets its running pipelines end before it hands
/// the control plane over anyway.
pub const PIPELINE_GRACE: Duration = Duration::from_secs(60);

/// How long a new server waits for the sockets (the old one's pipelines may
/// take [`PIPELINE_GRACE`] to end).
const OFFER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the old server waits for the new one to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most sockets one offer carries.
const MAX_FDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("no running berth server answers on {path}: {error}")]
    NotRunning {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the running server refused the takeover: {0}")]
    Refused(String),
    #[error("hand-over protocol: {0}")]
    Protocol(String),
    #[error("hand-over socket: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = TakeoverError> = std::result::Result<T, E>;

/// The listening sockets of one server.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    /// The edge's plain HTTP sockets: one `SO_REUSEPORT` socket per worker
    /// thread, all on one address.
    pub http: Vec<TcpListener>,
    /// The edge's HTTPS sockets, likewise (empty without `--https-listen`).
    pub https: Vec<TcpListener>,
}

impl Listeners {
    /// Duplicates of every socket (the same sockets, new descriptors).
    pub fn try_clone(&self) -> std::io::Result<Listeners> {
        Ok(Listeners {
            api: self.api.try_clone()?,
            http: self
                .http
                .iter()
                .map(TcpListener::try_clone)
                .collect::<std::io::Result<_>>()?,
            https: self
                .https
                .iter()
                .map(TcpListener::try_clone)
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// Binds fresh sockets: `edge_threads` `SO_REUSEPORT` sockets for each
    /// of the edge's listeners (after checking nobody listens there yet) and
    /// the API's. Must run inside a tokio runtime.
    pub fn bind(
        api: SocketAddr,
        http: SocketAddr,
        https: Option<SocketAddr>,
        edge_threads: usize,
    ) -> anyhow::Result<Listeners> {
        use anyhow::Context;
        let api_l = TcpListener::bind(api)
            .with_context(|| format!("cannot listen on --api-listen {api}"))?;
        let http_ls = reuseport_group(http, edge_threads)
            .with_context(|| format!("cannot listen on --http-listen {http}"))?;
        let https_ls = match https {
            Some(a) => reuseport_group(a, edge_threads)
                .with_context(|| format!("cannot listen on --https-listen {a}"))?,
            None => Vec::new(),
        };
        Ok(Listeners {
            api: api_l,
            http: http_ls,
            https: https_ls,
        })
    }

    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.api.as_raw_fd()];
        fds.extend(self.https.iter().map(|l| l.as_raw_fd()));
        fds.extend(self.http.iter().map(|l| l.as_raw_fd()));
        fds
    }

    fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            api: self.api.local_addr()?,
            http: match self.http.first() {
                Some(l) => l.local_addr()?,
                None => return Err(std::io::Error::other("no HTTP listener")),
            },
            https: self.https.first().map(|l| l.local_addr()).transpose()?,
        })
    }
}

/// `n` `SO_REUSEPORT` sockets on one address (port 0: one port chosen for
/// all), after checking that nobody listens there yet: `SO_REUSEPORT` would
/// let a second berth share the port silently.
fn reuseport_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        drop(TcpListener::bind(addr)?);
    }
    let mut group = Vec::new();
    let mut bind_to = addr;
    for _ in 0..n.max(1) {
        let l = reuseport_listener(bind_to)?;
        bind_to = l.local_addr()?;
        group.push(l);
    }
    Ok(group)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Listening addresses: asked for (a port 0 matches any) or offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Addrs {
    pub api: SocketAddr,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
}

impl Addrs {
    /// Why the sockets `offered` cannot serve what `self` asks for.
    fn mismatch(&self, offered: &Addrs) -> Option<String> {
        let same = |want: SocketAddr, have: SocketAddr| {
            want.port() == 0 && want.ip() == have.ip() || want == have
        };
        if !same(self.api, offered.api) {
            return Some(format!(
                "--api-listen {} differs from the running server's {}",
                self.api, offered.api
            ));
        }
        if !same(self.http, offered.http) {
            return Some(format!(
                "--http-listen {} differs from the running server's {}",
                self.http, offered.http
            ));
        }
        match (self.https, offered.https) {
            (None, None) => None,
            (Some(w), Some(h)) if same(w, h) => None,
            (w, h) => Some(format!(
                "--https-listen {} differs from the running server's {}",
                w.map_or("(none)".into(), |a| a.to_string()),
                h.map_or("(none)".into(), |a| a.to_string()),
            )),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    pid: u32,
    version: String,
    wants: Addrs,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Offer {
    pid: u32,
    /// Order of the descriptors: API, the HTTPS ones (if any), then the
    /// HTTP ones.
    addrs: Option<Addrs>,
    http_sockets: usize,
    /// Absent from servers that had one HTTPS socket.
    #[serde(default)]
    https_sockets: Option<usize>,
    error: Option<String>,
}

// ---------------------------------------------------------------- new side

/// What a new server received: the sockets, and the line back to the old
/// server.
pub struct Received {
    pub listeners: Listeners,
    /// The old server's pid.
    pub from_pid: u32,
    conn: UnixStream,
}

/// Asks the server running on `data_dir` for its sockets (blocking: call it
/// before anything else listens). Returns once the old server has handed
/// the control plane over.
pub fn request(data_dir: &Path, wants: Addrs) -> Result<Received> {
    let path = data_dir.join(SOCKET_FILE);
    let conn = UnixStream::connect(&path).map_err(|error| TakeoverError::NotRunning {
        path: path.clone(),
        error,
    })?;
    conn.set_read_timeout(Some(OFFER_TIMEOUT))?;
    let hello = Hello {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        wants: wants.clone(),
    };
    write_line(&conn, &hello)?;
    let (line, fds) = read_line_with_fds(&conn)?;
    let offer: Offer = serde_json::from_str(&line)
        .map_err(|e| TakeoverError::Protocol(format!("bad offer {line:?}: {e}")))?;
    if let Some(e) = offer.error {
        return Err(TakeoverError::Refused(e));
    }
    let addrs = offer
        .addrs
        .ok_or_else(|| TakeoverError::Protocol("offer without addresses".into()))?;
    let https_sockets = match addrs.https {
        Some(_) => offer.https_sockets.unwrap_or(1),
        None => 0,
    };
    let want_fds = 1 + https_sockets + offer.http_sockets;
    if fds.len() != want_fds
        || offer.http_sockets == 0
        || (addrs.https.is_some() && https_sockets == 0)
    {
        return Err(TakeoverError::Protocol(format!(
            "expected {want_fds} sockets, received {}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter().map(TcpListener::from);
    let api = fds.next().expect("counted");
    let https: Vec<TcpListener> = fds.by_ref().take(https_sockets).collect();
    let http: Vec<TcpListener> = fds.collect();
    let listeners = Listeners { api, http, https };
    let got = listeners.addrs()?;
    if got != addrs {
        return Err(TakeoverError::Protocol(format!(
            "the sockets listen on {got:?}, the offer said {addrs:?}"
        )));
    }
    Ok(Received {
        listeners,
        from_pid: offer.pid,
        conn,
    })
}

impl Received {
    /// Tells the old server this one serves; it then stops accepting and
    /// exits once its in-flight requests are done.
    pub fn ready(self) -> Result<()> {
        (&self.conn).write_all(b"ready\n")?;
        Ok(())
    }
}

// ---------------------------------------------------------------- old side

/// A new server asking for the sockets.
pub struct Request {
    conn: UnixStream,
    pub pid: u32,
    pub version: String,
    wants: Addrs,
}

impl Request {
    /// Why this server's sockets cannot serve the request, if they cannot.
    pub fn refusal(&self, mine: &Listeners) -> Option<String> {
        match mine.addrs() {
            Ok(have) => self.wants.mismatch(&have),
            Err(e) => Some(format!("cannot read the listening addresses: {e}")),
        }
    }

    /// Answers with an error; the new server exits, this one carries on.
    pub fn refuse(self, why: &str) {
        let offer = Offer {
            pid: std::process::id(),
            addrs: None,
            http_sockets: 0,
            https_sockets: None,
            error: Some(why.to_string()),
        };
        let _ = write_line(&self.conn, &offer);
    }

    /// Hands the sockets over and waits (blocking, bounded) until the new
    /// server says it serves. An error: it did not (this server must carry
    /// on).
    pub fn hand_over(self, mine: &Listeners) -> Result<()> {
        let offer = Offer {
            pid: std::process::id(),
            addrs: Some(mine.addrs()?),
            http_sockets: mine.http.len(),
            https_sockets: Some(mine.https.len()),
            error: None,
        };
        let mut line =
            serde_json::to_vec(&offer).map_err(|e| TakeoverError::Protocol(e.to_string()))?;
        line.push(b'\n');
        send_with_fds(&self.conn, &line, &mine.fds())?;
        self.conn.set_read_timeout(Some(READY_TIMEOUT))?;
        let mut reply = String::new();
        BufReader::new(&self.conn).read_line(&mut reply)?;
        match reply.trim() {
            "ready" => Ok(()),
            "" => Err(TakeoverError::Protocol(
                "the new server closed the connection before serving".into(),
            )),
            other => Err(TakeoverError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}

/// Listens for takeover requests on `<data_dir>/takeover.sock` (a stale
/// file is replaced). Requests arrive on the returned channel, one at a
/// time; a connection that does not say hello within 10 s is dropped.
pub fn listen(data_dir: &Path) -> anyhow::Result<tokio::sync::mpsc::Receiver<Request>> {
    use anyhow::Context;
    let path = data_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::thread::Builder::new()
        .name("berth-takeover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                match read_hello(&conn) {
                    Ok(hello) => {
                        let req = Request {
                            conn,
                            pid: hello.pid,
                            version: hello.version,
                            wants: hello.wants,
                        };
                        if tx.blocking_send(req).is_err() {
                            return; // the server stopped
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignored a takeover connection"),
                }
            }
        })
        .context("cannot start the takeover listener")?;
    Ok(rx)
}

fn read_hello(conn: &UnixStream) -> Result<Hello> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(conn.take(64 * 1024)).read_line(&mut line)?;
    serde_json::from_str(&line)
        .map_err(|e| TakeoverError::Protocol(format!("bad hello {:?}: {e}", line.trim())))
}

fn write_line<T: Serialize>(mut conn: &UnixStream, v: &T) -> Result<()> {
    let mut line = serde_json::to_vec(v).map_err(|e| TakeoverError::Protocol(e.to_string()))?;
    line.push(b'\n');
    conn.write_all(&line)?;
    Ok(())
}

// ------------------------------------------------------- descriptor passing

/// Writes `data` with `fds` attached (`SCM_RIGHTS`, on its first byte).
fn send_with_fds(conn: &UnixStream, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!(
            "{} sockets to pass, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    // u64s keep the control buffer aligned for cmsghdr
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below points
    // into buffers that outlive the sendmsg call, with their true lengths.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload);
        libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut w = conn;
    w.write_all(&data[sent as usize..])?;
    Ok(())
}

/// Reads one line and the descriptors that came with it.
fn read_line_with_fds(conn: &UnixStream) -> Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in `send_with_fds`; the descriptors the kernel installed
    // are owned by us from here on (MSG_CMSG_CLOEXEC keeps them from
    // leaking into children).
    let (n, truncated) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        (n as usize, msg.msg_flags & libc::MSG_CTRUNC != 0)
    };
    if truncated {
        return Err(TakeoverError::Protocol("too many sockets offered".into()));
    }
    if n == 0 {
        return Err(TakeoverError::Protocol(
            "the running server closed the connection".into(),
        ));
    }
    let mut line = buf[..n].to_vec();
    let mut reader = BufReader::new(conn);
    if !line.ends_with(b"\n") {
        reader.read_until(b'\n', &mut line)?;
    }
    let line = String::from_utf8(line)
        .map_err(|_| TakeoverError::Protocol("offer is not UTF-8".into()))?;
    Ok((line.trim().to_string(), fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn addresses_match_exactly_or_by_port_zero() {
        let have = Addrs {
            api: local(7070),
            http: local(8080),
            https: None,
        };
        assert_eq!(have.mismatch(&have), None);
        let any = Addrs {
            api: local(0),
            http: local(0),
            https: None,
        };
        assert_eq!(any.mismatch(&have), None);
        let other = Addrs {
            http: local(8081),
            ..have.clone()
        };
        let why = other.mismatch(&have).unwrap();
        assert!(why.contains("--http-listen 127.0.0.1:8081"), "{why}");
        let tls = Addrs {
            https: Some(local(8443)),
            ..have.clone()
        };
        assert!(tls.mismatch(&have).unwrap().contains("--https-listen"));
    }

    /// The real thing over a real unix socket: the new side gets the same
    /// listening sockets (a connection made to the old address is accepted
    /// on the received descriptor).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sockets_pass_over_the_unix_socket_and_keep_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mine = Listeners::bind(local(0), local(0), Some(local(0)), 3).unwrap();
        let have = mine.addrs().unwrap();
        let mut requests = listen(dir.path()).unwrap();
        let old = tokio::spawn(async move {
            let req = requests.recv().await.unwrap();
            assert_eq!(req.pid, std::process::id());
            assert!(req.refusal(&mine).is_none());
            tokio::task::spawn_blocking(move || req.hand_over(&mine))
                .await
                .unwrap()
        });
        // a client queued on the old socket before the hand-over
        let early = std::net::TcpStream::connect(have.http).unwrap();
        let dirp = dir.path().to_path_buf();
        let wants = Addrs {
            api: local(0),
            http: have.http,
            https: Some(local(0)),
        };
        let got = tokio::task::spawn_blocking(move || request(&dirp, wants))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.listeners.addrs().unwrap(), have);
        assert_eq!(got.listeners.http.len(), 3);
        assert_eq!(got.listeners.https.len(), 3);
        got.listeners.api.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(have.api).unwrap();
        assert!(got.listeners.api.accept().is_ok());
        // the early connection is in one of the HTTP sockets' queues
        let mut accepted = false;
        for l in &got.listeners.http {
            l.set_nonblocking(true).unwrap();
            accepted |= l.accept().is_ok();
        }
        assert!(accepted, "the queued connection was not handed over");
        drop(early);
        let Received { conn, .. } = got;
        (&conn).write_all(b"ready\n").unwrap();
        old.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_takeover_says_why_and_a_missing_server_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(
            dir.path(),
            Addrs {
                api: local(0),
                http: local(0),
                https: None,
            },
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("no running berth server answers on"),
            "{e}"
        );

        let mine = Listeners::bind(local(0), local(0), None, 1).unwrap();
        let mut requests = listen(dir.path()).unwrap();
        let old = tokio::spawn(async move {
            let req = requests.recv().await.unwrap();
            let why = req.refusal(&mine).unwrap();
            req.refuse(&why);
        });
        let dirp = dir.path().to_path_buf();
        let e = tokio::task::spawn_blocking(move || {
            request(
                &dirp,
                Addrs {
                    api: local(0),
                    http: local(0),
                    https: Some(local(8443)),
                },
            )
        })
        .await
        .unwrap()
        .err()
        .unwrap();
        assert!(e.to_string().contains("refused the takeover"), "{e}");
        assert!(e.to_string().contains("--https-listen"), "{e}");
        old.await.unwrap();
    }
}

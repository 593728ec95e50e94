//! TXT lookups for custom domain verification, through hickory-resolver:
//! EDNS0, a retry over TCP when a UDP answer is truncated, and every
//! nameserver of /etc/resolv.conf (or those given with `--dns-server`, each
//! asked over UDP and TCP): a nameserver that does not answer costs a
//! timeout at most, the others answer (hickory asks two at once and keeps
//! the fastest first). NXDOMAIN and a server failure are told apart.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, Resolver, TokioResolver};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS resolver configured (set --dns-server or /etc/resolv.conf): {0}")]
    NoResolver(String),
    #[error("{0} does not exist (NXDOMAIN)")]
    NxDomain(String),
    #[error("DNS server failed to answer for {name} ({code})")]
    ServerFailure { name: String, code: String },
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
}

fn resolver(configured: &[SocketAddr]) -> Result<TokioResolver, DnsError> {
    let mut builder = if configured.is_empty() {
        Resolver::builder_tokio().map_err(|e| DnsError::NoResolver(e.to_string()))?
    } else {
        let mut config = ResolverConfig::new();
        for &addr in configured {
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        Resolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let opts = builder.options_mut();
    opts.edns0 = true;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Verification must see a record as soon as it is published.
    opts.cache_size = 0;
    opts.negative_max_ttl = Some(Duration::ZERO);
    Ok(builder.build())
}

fn classify(name: &str, e: ResolveError) -> Result<Vec<String>, DnsError> {
    if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) = e.proto().map(|p| p.kind())
    {
        return match *response_code {
            ResponseCode::NoError => Ok(Vec::new()),
            ResponseCode::NXDomain => Err(DnsError::NxDomain(name.to_string())),
            code => Err(DnsError::ServerFailure {
                name: name.to_string(),
                code: format!("{code:?}").to_uppercase(),
            }),
        };
    }
    Err(DnsError::Lookup {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The TXT strings of `name` (each record's chunks joined), asked of
/// the `configured` nameservers or, with none, of the system's.
pub async fn lookup_txt(configured: &[SocketAddr], name: &str) -> Result<Vec<String>, DnsError> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match resolver(configured)?.txt_lookup(fqdn).await {
        Ok(found) => Ok(found
            .iter()
            .map(|t| {
                let bytes: Vec<u8> = t.iter().flat_map(|c| c.iter().copied()).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect()),
        Err(e) => classify(name, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The answer to `query` (its question kept, additional records
    /// dropped) with `rcode`, the TC bit if `truncated`, and one TXT record
    /// in two chunks when `txt`.
    fn answer(query: &[u8], rcode: u8, truncated: bool, txt: bool) -> Vec<u8> {
        let mut i = 12;
        while query[i] != 0 {
            i += 1 + query[i] as usize;
        }
        let mut a = query[..i + 5].to_vec();
        a[2] = 0x84 | if truncated { 0x02 } else { 0 } | (query[2] & 0x01);
        a[3] = rcode;
        a[6] = 0;
        a[7] = u8::from(txt);
        a[8..12].fill(0);
        if txt {
            a.extend_from_slice(&[
                0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 8, 3, b'a', b'b', b'c', 3, b'd', b'e', b'f',
            ]);
        }
        a
    }

    /// A DNS server on 127.0.0.1 answering every UDP query with `udp` and
    /// every TCP query with the full TXT answer; counts TCP queries.
    /// A UDP socket and a TCP listener on the same free port. The kernel
    /// picks the UDP port; the same TCP port may already be taken by another
    /// process, so a taken one is given up and another tried.
    async fn udp_and_tcp_on_one_port(
    ) -> (SocketAddr, tokio::net::UdpSocket, tokio::net::TcpListener) {
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                return (addr, udp, tcp);
            }
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1 in 50 tries");
    }

    async fn server(
        rcode: u8,
        truncated: bool,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let (addr, udp, tcp) = udp_and_tcp_on_one_port().await;
        let tcp_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..50 {
                let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                let txt = rcode == 0 && !truncated;
                let _ = udp
                    .send_to(&answer(&buf[..n], rcode, truncated, txt), peer)
                    .await;
            }
        });
        let count = tcp_count.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let (mut s, _) = tcp.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let len = s.read_u16().await.unwrap() as usize;
                let mut q = vec![0u8; len];
                s.read_exact(&mut q).await.unwrap();
                let a = answer(&q, 0, false, true);
                s.write_u16(a.len() as u16).await.unwrap();
                s.write_all(&a).await.unwrap();
            }
        });
        (addr, tcp_count)
    }

    /// A nameserver that is down: its UDP socket and TCP listener take
    /// queries and never answer (held for the test's life).
    async fn silent() -> (SocketAddr, tokio::net::UdpSocket, tokio::net::TcpListener) {
        udp_and_tcp_on_one_port().await
    }

    #[tokio::test]
    async fn with_several_nameservers_one_down_the_next_answers() {
        let (good, _) = server(0, false).await;
        let (dead, _udp, _tcp) = silent().await;
        // Nothing listens on this one at all.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        for servers in [[dead, good], [good, dead], [closed, good]] {
            let t = std::time::Instant::now();
            let found = lookup_txt(&servers, "t.example").await;
            assert_eq!(found.unwrap(), vec!["abcdef"], "{servers:?}");
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        }
        // All down: a one-line reason, not a hang.
        let e = lookup_txt(&[dead, closed], "t.example")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("DNS lookup of t.example failed: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[tokio::test]
    async fn reads_txt_over_udp() {
        let (addr, tcp) = server(0, false).await;
        let found = lookup_txt(&[addr], "t.example").await.unwrap();
        assert_eq!(found, vec!["abcdef"]);
        assert_eq!(tcp.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
        let (addr, tcp) = server(0, true).await;
        let found = lookup_txt(&[addr], "t.example").await.unwrap();
        assert_eq!(found, vec!["abcdef"]);
        assert!(tcp.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn nxdomain_and_servfail_are_told_apart() {
        let (nx, _) = server(3, false).await;
        let e = lookup_txt(&[nx], "_berth-challenge.shop.example")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "_berth-challenge.shop.example does not exist (NXDOMAIN)");
        let (fail, _) = server(2, false).await;
        let e = lookup_txt(&[fail], "_berth-challenge.shop.example")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "DNS server failed to answer for _berth-challenge.shop.example (SERVFAIL)"
        );
        assert!(!e.contains('\n'));
    }
}

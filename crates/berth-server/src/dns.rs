//! A minimal DNS client for one question: the TXT records of a name, over
//! UDP, from one resolver (`--dns-server`, else the first `nameserver` of
//! /etc/resolv.conf). Enough to verify custom domains; no recursion or
//! caching of its own.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS resolver configured (set --dns-server or /etc/resolv.conf)")]
    NoResolver,
    #[error("invalid name {0:?}")]
    BadName(String),
    #[error("DNS resolver {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("DNS query to {server} failed: {reason}")]
    Io { server: SocketAddr, reason: String },
    #[error("malformed DNS answer from {0}")]
    Malformed(SocketAddr),
}

/// The resolver to ask: the configured one, else /etc/resolv.conf's first.
pub fn resolver(configured: Option<SocketAddr>) -> Result<SocketAddr, DnsError> {
    if let Some(s) = configured {
        return Ok(s);
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or(DnsError::NoResolver)
}

/// Encode a query for the TXT records of `name`.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_string()));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 16, 0, 1]); // TXT, IN
    Ok(q)
}

fn skip_name(buf: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *buf.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

fn u16_at(buf: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]))
}

/// The TXT strings of an answer to query `id` (each record's chunks joined).
pub fn decode_txt(id: u16, buf: &[u8]) -> Option<Vec<String>> {
    if u16_at(buf, 0)? != id {
        return None;
    }
    let qd = u16_at(buf, 4)?;
    let an = u16_at(buf, 6)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(buf, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(buf, i)?;
        let rtype = u16_at(buf, i)?;
        let rdlen = u16_at(buf, i + 8)? as usize;
        let data = buf.get(i + 10..i + 10 + rdlen)?;
        if rtype == 16 {
            let mut s = Vec::new();
            let mut j = 0;
            while j < data.len() {
                let n = data[j] as usize;
                s.extend_from_slice(data.get(j + 1..j + 1 + n)?);
                j += 1 + n;
            }
            out.push(String::from_utf8_lossy(&s).into_owned());
        }
        i += 10 + rdlen;
    }
    Some(out)
}

/// Ask `server` for the TXT records of `name` (3 tries of 2 s).
pub async fn lookup_txt(server: SocketAddr, name: &str) -> Result<Vec<String>, DnsError> {
    let id: u16 = rand::random();
    let query = encode_query(id, name)?;
    let io = |e: std::io::Error| DnsError::Io {
        server,
        reason: e.to_string(),
    };
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        sock.send(&query).await.map_err(io)?;
        match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return decode_txt(id, &buf[..n]).ok_or(DnsError::Malformed(server)),
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => continue,
        }
    }
    Err(DnsError::Timeout(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made answer: the question echoed, one TXT record in two
    /// chunks behind a compression pointer, and an A record to skip.
    fn answer(id: u16, name: &str) -> Vec<u8> {
        let q = encode_query(id, name).unwrap();
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 2; // two answers
        a.extend_from_slice(&[
            0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 8, 3, b'a', b'b', b'c', 3, b'd', b'e', b'f',
        ]);
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
        a
    }

    #[test]
    fn encodes_and_decodes() {
        let q = encode_query(7, "_berth-challenge.shop.example.com").unwrap();
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(q[12] as usize, "_berth-challenge".len());
        assert!(encode_query(1, "a..b").is_err());
        assert_eq!(
            decode_txt(9, &answer(9, "x.example")).unwrap(),
            vec!["abcdef".to_string()]
        );
        assert_eq!(decode_txt(8, &answer(9, "x.example")), None, "wrong id");
        assert_eq!(
            decode_txt(9, &answer(9, "x.example")[..20]),
            None,
            "truncated"
        );
    }

    #[tokio::test]
    async fn asks_a_real_udp_server() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (_, peer) = server.recv_from(&mut buf).await.unwrap();
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            server
                .send_to(&answer(id, "t.example"), peer)
                .await
                .unwrap();
        });
        assert_eq!(lookup_txt(addr, "t.example").await.unwrap(), vec!["abcdef"]);
    }
}

//! The ACME DNS-01 challenge through RFC 2136 dynamic updates signed with
//! TSIG (RFC 8945), which BIND, Knot and PowerDNS all accept: berth adds
//! the `_acme-challenge.<name>` TXT record to the zone on the server given
//! by `--acme-dns-server`, and removes it once the order is over. Messages
//! are built and signed with `hickory-proto`; only the exchange (UDP, one
//! question, one answer, a bounded number of tries) is ours.
//!
//! The zone is found by asking the same server for the SOA of the record's
//! name (its answer or its authority section names the zone), so a base
//! domain inside a larger zone works as well as a zone of its own.
//!
//! Invariant: the TSIG secret is never printed — [`TsigKey`]'s `Debug`
//! hides it, and errors name the key, never its secret.

use base64::Engine;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one try waits for the server's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// Tries per message (UDP may lose one).
const TRIES: u32 = 3;
/// TTL of the challenge record: short, so a retry's value is seen soon.
const TXT_TTL: u32 = 60;
/// Clock difference allowed between berth and the DNS server.
const FUDGE: u16 = 300;

#[derive(Debug, thiserror::Error)]
pub enum Dns01Error {
    #[error("--acme-dns-tsig: {0} (expected name:algorithm:secret, e.g. berth-acme:hmac-sha256:<base64>)")]
    BadKey(String),
    #[error("--acme-dns-server {server}: {reason}")]
    BadServer { server: String, reason: String },
    #[error("invalid DNS name {0:?}")]
    BadName(String),
    /// The server answered the update with an error code (a key it does
    /// not know or a bad signature: NOTAUTH; a zone it does not serve:
    /// NOTZONE or REFUSED).
    #[error("DNS update refused: {0}")]
    Refused(String),
    #[error("DNS server {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("DNS server {server}: {reason}")]
    Io { server: SocketAddr, reason: String },
    /// A success the server did not sign with the update's key (or whose
    /// signature does not verify): not trusted, the record may not be there.
    #[error("DNS server {server} answered the update without a valid TSIG signature of key {key}: {reason}")]
    Unsigned {
        server: SocketAddr,
        key: String,
        reason: String,
    },
    #[error("DNS server {server} is not authoritative for {name} (no SOA in its answer)")]
    NoZone { server: SocketAddr, name: String },
}

/// A TSIG key: `name:algorithm:secret` (the secret in base64, as BIND's
/// `tsig-keygen` prints it).
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<sealed>")
            .finish()
    }
}

impl TsigKey {
    /// Parses `name:algorithm:secret`; the algorithm may omit `hmac-`.
    pub fn parse(s: &str) -> Result<TsigKey, Dns01Error> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(alg), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Dns01Error::BadKey("not three parts".into()));
        };
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || Name::from_ascii(&name).is_err() {
            return Err(Dns01Error::BadKey(format!("bad key name {name:?}")));
        }
        let alg = alg.trim().to_ascii_lowercase();
        let alg = if alg.starts_with("hmac-") {
            alg
        } else {
            format!("hmac-{alg}")
        };
        if !matches!(alg.as_str(), "hmac-sha256" | "hmac-sha384" | "hmac-sha512") {
            return Err(Dns01Error::BadKey(format!(
                "algorithm {alg} is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            )));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| Dns01Error::BadKey("the secret is not base64".into()))?;
        if secret.is_empty() {
            return Err(Dns01Error::BadKey("the secret is empty".into()));
        }
        Ok(TsigKey {
            name,
            algorithm: alg,
            secret,
        })
    }

    /// The `name:algorithm:secret` form (what the store keeps, sealed).
    pub fn to_flag(&self) -> String {
        format!(
            "{}:{}:{}",
            self.name,
            self.algorithm,
            base64::engine::general_purpose::STANDARD.encode(&self.secret)
        )
    }

    fn signer(&self) -> Result<TSigner, Dns01Error> {
        let alg = match self.algorithm.as_str() {
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            _ => TsigAlgorithm::HmacSha256,
        };
        let name = Name::from_ascii(&self.name)
            .map_err(|e| Dns01Error::BadKey(format!("bad key name: {e}")))?;
        TSigner::new(self.secret.clone(), alg, name, FUDGE)
            .map_err(|e| Dns01Error::BadKey(e.to_string()))
    }
}

/// Sends signed updates to one DNS server.
#[derive(Clone, Debug)]
pub struct DnsUpdater {
    /// `host:port` as given.
    pub server: String,
    key: TsigKey,
}

/// The name of the DNS-01 record for an identifier (`*.` dropped: a
/// wildcard is validated on its base name).
pub fn challenge_name(identifier: &str) -> String {
    format!(
        "_acme-challenge.{}",
        identifier.trim_start_matches("*.").trim_end_matches('.')
    )
}

/// A short name for a response code: `NOTAUTH`, `REFUSED`, ...
pub fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::Unknown(n) => format!("RCODE{n}"),
        c => format!("{c:?}").to_ascii_uppercase(),
    }
}

impl DnsUpdater {
    pub fn new(server: &str, key: TsigKey) -> Result<DnsUpdater, Dns01Error> {
        let bad = |reason: &str| Dns01Error::BadServer {
            server: server.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = server
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("expected host:port"));
        }
        Ok(DnsUpdater {
            server: server.to_string(),
            key,
        })
    }

    /// Adds `value` to the TXT records of `name` (other values stay: the
    /// wildcard and the base name have one each under the same name).
    pub async fn add_txt(&self, name: &str, value: &str) -> Result<(), Dns01Error> {
        let addr = self.addr().await?;
        let (rrset, zone) = self.rrset(addr, name, value).await?;
        let msg = update_message::append(rrset, zone, false, false);
        self.update(addr, msg).await
    }

    /// Removes that value (nothing when it is not there).
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<(), Dns01Error> {
        let addr = self.addr().await?;
        let (rrset, zone) = self.rrset(addr, name, value).await?;
        let msg = update_message::delete_by_rdata(rrset, zone, false);
        self.update(addr, msg).await
    }

    /// Whether this server is authoritative for the zone holding `host`:
    /// its answer to a SOA question for `host` has the AA bit, no error,
    /// and the SOA of a zone `host` is in. A custom domain whose zone the
    /// server serves (delegated to it) can be validated by DNS-01; any
    /// other answer (REFUSED, a referral, no SOA) means it cannot.
    pub async fn serves_zone_of(&self, host: &str) -> Result<bool, Dns01Error> {
        let addr = self.addr().await?;
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let name = Name::from_ascii(&fqdn).map_err(|_| Dns01Error::BadName(host.to_string()))?;
        let (answer, _) = exchange(addr, &soa_query(&name)).await?;
        Ok(answer.authoritative()
            && matches!(
                answer.response_code(),
                ResponseCode::NoError | ResponseCode::NXDomain
            )
            && soa_zone(&answer, &name).is_some())
    }

    async fn addr(&self) -> Result<SocketAddr, Dns01Error> {
        let mut addrs =
            tokio::net::lookup_host(&self.server)
                .await
                .map_err(|e| Dns01Error::BadServer {
                    server: self.server.clone(),
                    reason: e.to_string(),
                })?;
        addrs.next().ok_or_else(|| Dns01Error::BadServer {
            server: self.server.clone(),
            reason: "no address".into(),
        })
    }

    async fn rrset(
        &self,
        addr: SocketAddr,
        name: &str,
        value: &str,
    ) -> Result<(RecordSet, Name), Dns01Error> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let owner = Name::from_ascii(&fqdn).map_err(|_| Dns01Error::BadName(name.to_string()))?;
        let zone = zone_of(addr, &owner).await?;
        let record = Record::from_rdata(
            owner,
            TXT_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        Ok((RecordSet::from(record), zone))
    }

    async fn update(&self, addr: SocketAddr, mut msg: Message) -> Result<(), Dns01Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or_default();
        let verifier = msg
            .finalize(&self.key.signer()?, now)
            .map_err(|e| Dns01Error::BadKey(e.to_string()))?;
        let (answer, bytes) = exchange(addr, &msg).await?;
        match answer.response_code() {
            // Only a success must prove it comes from the key's holder: a
            // refusal is a failure either way (and a server that does not
            // know the key cannot sign it).
            ResponseCode::NoError => {
                let checked = match (answer.signature().is_empty(), verifier) {
                    (true, _) => Err("it is not signed".to_string()),
                    (false, None) => Err("nothing to check it with".to_string()),
                    (false, Some(mut verify)) => verify(&bytes).map(|_| ()).map_err(|e| {
                        let e = e.to_string();
                        e.strip_prefix("tsig validation error: ")
                            .unwrap_or(&e)
                            .to_string()
                    }),
                };
                checked.map_err(|reason| Dns01Error::Unsigned {
                    server: addr,
                    key: self.key.name.clone(),
                    reason,
                })
            }
            code => Err(Dns01Error::Refused(format!(
                "{} ({})",
                rcode_name(code),
                code.to_str()
            ))),
        }
    }
}

/// A SOA question for `name` (no recursion: the server answers from its
/// own zones).
fn soa_query(name: &Name) -> Message {
    let mut q = Message::new();
    q.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(false)
        .add_query(Query::query(name.clone(), RecordType::SOA));
    q
}

/// The owner of the SOA in `answer` (answer or authority section) whose
/// zone holds `name`.
fn soa_zone(answer: &Message, name: &Name) -> Option<Name> {
    answer
        .answers()
        .iter()
        .chain(answer.name_servers())
        .find(|r| r.record_type() == RecordType::SOA && r.name().zone_of(name))
        .map(|r| r.name().clone())
}

/// The zone holding `name` on the server at `addr`: the owner of the SOA
/// in its answer to a SOA question for `name`.
async fn zone_of(addr: SocketAddr, name: &Name) -> Result<Name, Dns01Error> {
    let (answer, _) = exchange(addr, &soa_query(name)).await?;
    soa_zone(&answer, name).ok_or_else(|| Dns01Error::NoZone {
        server: addr,
        name: name.to_string(),
    })
}

/// Sends `msg` over UDP and returns the answer with its id (and its bytes,
/// which a TSIG signature covers), trying [`TRIES`] times.
async fn exchange(addr: SocketAddr, msg: &Message) -> Result<(Message, Vec<u8>), Dns01Error> {
    let io = |e: std::io::Error| Dns01Error::Io {
        server: addr,
        reason: e.to_string(),
    };
    let bytes = msg.to_vec().map_err(|e| Dns01Error::Io {
        server: addr,
        reason: e.to_string(),
    })?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(addr).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..TRIES {
        sock.send(&bytes).await.map_err(io)?;
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(r) => r.map_err(io)?,
            };
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if answer.id() == msg.id() && answer.message_type() == MessageType::Response {
                return Ok((answer, buf[..n].to_vec()));
            }
        }
    }
    Err(Dns01Error::Timeout(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_name_algorithm_and_base64_secret_and_its_secret_is_never_shown() {
        let k = TsigKey::parse("berth-acme.:HMAC-SHA256:c2VjcmV0LWJ5dGVz").unwrap();
        assert_eq!(k.name, "berth-acme");
        assert_eq!(k.algorithm, "hmac-sha256");
        assert_eq!(k.to_flag(), "berth-acme:hmac-sha256:c2VjcmV0LWJ5dGVz");
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
        assert_eq!(
            TsigKey::parse("k:sha512:c2VjcmV0").unwrap().algorithm,
            "hmac-sha512"
        );
        for (bad, why) in [
            ("k:hmac-sha256", "not three parts"),
            ("k:hmac-md5:c2VjcmV0", "not supported"),
            ("k:hmac-sha256:%%%", "not base64"),
            (":hmac-sha256:c2VjcmV0", "bad key name"),
        ] {
            let e = TsigKey::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("--acme-dns-tsig: "), "{e}");
        }
    }

    #[test]
    fn the_challenge_name_drops_the_wildcard_label() {
        assert_eq!(
            challenge_name("*.apps.example.com"),
            "_acme-challenge.apps.example.com"
        );
        assert_eq!(
            challenge_name("apps.example.com"),
            "_acme-challenge.apps.example.com"
        );
    }

    #[test]
    fn a_server_is_host_and_port() {
        let k = TsigKey::parse("k:hmac-sha256:c2VjcmV0").unwrap();
        assert!(DnsUpdater::new("127.0.0.1:5353", k.clone()).is_ok());
        assert!(DnsUpdater::new("ns1.example.com:53", k.clone()).is_ok());
        let e = DnsUpdater::new("127.0.0.1", k).unwrap_err().to_string();
        assert_eq!(e, "--acme-dns-server 127.0.0.1: expected host:port");
        assert_eq!(rcode_name(ResponseCode::NotAuth), "NOTAUTH");
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
    }

    /// A DNS server on 127.0.0.1 that serves `apps.test` (SOA, AA) and
    /// answers every update with success: unsigned, or signed with `sign`
    /// as if it were a question (not covering the update's MAC), or
    /// signed right for the update (`sign` and `right`), as BIND does.
    async fn fake_primary(sign: Option<TsigKey>, right: bool) -> SocketAddr {
        use hickory_proto::dnssec::rdata::tsig::{make_tsig_record, message_tbs, TSIG};
        use hickory_proto::rr::rdata::SOA;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..20 {
                let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut a = Message::new();
                a.set_id(q.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(q.op_code())
                    .set_authoritative(true)
                    .add_queries(q.queries().to_vec());
                if q.op_code() == OpCode::Query {
                    let zone = Name::from_ascii("apps.test.").unwrap();
                    let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 600, 60);
                    a.add_answer(Record::from_rdata(zone, 60, RData::SOA(soa)));
                } else if let Some(k) = &sign {
                    let signer = k.signer().unwrap();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    if right {
                        // RFC 8945 4.3.1: the request's MAC first.
                        let req_mac = match q.signature()[0].data() {
                            RData::DNSSEC(hickory_proto::dnssec::rdata::DNSSECRData::TSIG(t)) => {
                                t.mac().to_vec()
                            }
                            _ => panic!("update not signed"),
                        };
                        let pre = TSIG::new(
                            signer.algorithm().clone(),
                            now,
                            FUDGE,
                            Vec::new(),
                            a.id(),
                            0,
                            Vec::new(),
                        );
                        let tbs =
                            message_tbs(Some(&req_mac), &a, &pre, signer.signer_name()).unwrap();
                        let mac = signer.sign(&tbs).unwrap();
                        let rec = make_tsig_record(signer.signer_name().clone(), pre.set_mac(mac));
                        let mut bytes = a.to_vec().unwrap();
                        // The TSIG record last in the additional section.
                        let arcount = u16::from_be_bytes([bytes[10], bytes[11]]) + 1;
                        bytes[10..12].copy_from_slice(&arcount.to_be_bytes());
                        let mut enc = Vec::new();
                        {
                            use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
                            let mut e = BinEncoder::new(&mut enc);
                            rec.emit(&mut e).unwrap();
                        }
                        bytes.extend_from_slice(&enc);
                        let _ = sock.send_to(&bytes, peer).await;
                        continue;
                    }
                    a.finalize(&signer, now as u32).unwrap();
                }
                let _ = sock.send_to(&a.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_update_answer_without_a_valid_signature_of_the_key_fails_the_update() {
        let key = TsigKey::parse("berth-acme:hmac-sha256:c2VjcmV0LWtleQ==").unwrap();
        let up = |addr: SocketAddr| DnsUpdater::new(&addr.to_string(), key.clone()).unwrap();
        let name = "_acme-challenge.apps.test";

        // Signed right by the key's holder: accepted.
        let addr = fake_primary(Some(key.clone()), true).await;
        up(addr).add_txt(name, "v").await.unwrap();

        // Unsigned success (anyone on the path could send it).
        let addr = fake_primary(None, false).await;
        let e = up(addr).add_txt(name, "v").await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("DNS server {addr} answered the update without a valid TSIG signature of key berth-acme: it is not signed")
        );

        // Signed by another key.
        let other = TsigKey::parse("someone-else:hmac-sha256:c2VjcmV0LWtleQ==").unwrap();
        let addr = fake_primary(Some(other), true).await;
        let e = up(addr)
            .remove_txt(name, "v")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without a valid TSIG signature of key berth-acme: "),
            "{e}"
        );

        // Signed with the right key but not over this exchange (the MAC
        // does not cover the update's): a replayed or forged answer.
        let addr = fake_primary(Some(key.clone()), false).await;
        let e = up(addr).add_txt(name, "v").await.unwrap_err().to_string();
        assert!(
            e.contains("without a valid TSIG signature of key berth-acme: "),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    /// A real BIND (`named -g`) on 127.0.0.1 serving `zone` and taking
    /// updates signed with `key`; `None` (after a notice) when named is
    /// missing outside CI.
    pub(crate) mod bind {
        use super::super::TsigKey;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};

        pub struct Bind {
            child: Child,
            pub port: u16,
            _dir: tempfile::TempDir,
        }

        impl Drop for Bind {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        fn named() -> Option<String> {
            ["/usr/sbin/named", "/usr/bin/named"]
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        }

        pub fn start(zone: &str, key: &TsigKey) -> Option<Bind> {
            let Some(named) = named() else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "named is missing and CI=true: apt-get install -y bind9"
                );
                eprintln!("SKIPPED: named is missing (apt-get install -y bind9)");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display().to_string();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                r#"options {{
    directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{d}";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{name}" {{ algorithm {alg}; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    update-policy {{ grant {name} zonesub TXT; }};
}};
"#,
                name = key.name,
                alg = key.algorithm,
                secret = key.to_flag().rsplit(':').next().unwrap(),
            );
            std::fs::write(dir.path().join("named.conf"), conf).unwrap();
            std::fs::write(
                dir.path().join("zone.db"),
                format!(
                    "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new(named);
            cmd.args(["-g", "-c"]).arg(dir.path().join("named.conf"));
            // As root, named drops to the `bind` user: it must be able to
            // write its journal in the directory.
            if unsafe { libc::geteuid() } == 0 {
                use std::os::unix::fs::PermissionsExt;
                for p in [dir.path().to_path_buf(), dir.path().join("zone.db")] {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
                }
                cmd.args(["-u", "bind"]);
            }
            let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
            let child = cmd
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start named");
            let mut b = Bind {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let logf = b._dir.path().join("named.log");
            loop {
                let log = std::fs::read_to_string(&logf).unwrap_or_default();
                // "running" alone on its line once every zone is loaded
                // (the first lines say "running on Linux ...").
                if log.lines().any(|l| l.trim_end().ends_with(" running")) {
                    return Some(b);
                }
                if b.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    panic!("named did not start:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The TXT values of `name` on the server at `addr`.
    async fn txt(addr: SocketAddr, name: &str) -> Vec<String> {
        let mut q = Message::new();
        q.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(
                Name::from_ascii(format!("{name}.")).unwrap(),
                RecordType::TXT,
            ));
        let (a, _) = exchange(addr, &q).await.unwrap();
        let mut v: Vec<String> = a
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn txt_records_are_added_and_removed_on_a_real_bind_and_a_wrong_key_is_refused() {
        let key =
            TsigKey::parse("berth-acme:hmac-sha256:c2VjcmV0LWtleS1mb3ItYmVydGgtdGVzdHM=").unwrap();
        let Some(b) = bind::start("apps.test", &key) else {
            return;
        };
        let server = format!("127.0.0.1:{}", b.port);
        let addr: SocketAddr = server.parse().unwrap();
        let up = DnsUpdater::new(&server, key).unwrap();
        let name = challenge_name("*.apps.test");
        // The wildcard and the base name: two values under one name.
        up.add_txt(&name, "value-one").await.unwrap();
        up.add_txt(&name, "value-two").await.unwrap();
        assert_eq!(txt(addr, &name).await, ["value-one", "value-two"]);
        up.remove_txt(&name, "value-one").await.unwrap();
        assert_eq!(txt(addr, &name).await, ["value-two"]);
        // Its answers are signed with the key and verified (else the
        // updates above failed); it is authoritative for names in its zone.
        assert!(up.serves_zone_of("www.apps.test").await.unwrap());
        assert!(up.serves_zone_of("apps.test").await.unwrap());
        assert!(!up.serves_zone_of("www.other.test").await.unwrap());

        // The same key name with another secret: BIND refuses, nothing changes.
        let wrong = TsigKey::parse("berth-acme:hmac-sha256:b3RoZXItc2VjcmV0").unwrap();
        let e = DnsUpdater::new(&server, wrong)
            .unwrap()
            .add_txt(&name, "forged")
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with("DNS update refused: NOTAUTH"),
            "{e}"
        );
        assert!(!e.to_string().contains("b3RoZXI"), "{e}");
        // A name outside the server's zones.
        let e = up
            .add_txt("_acme-challenge.other.test", "x")
            .await
            .unwrap_err();
        assert!(
            matches!(e, Dns01Error::NoZone { .. } | Dns01Error::Refused(_)),
            "{e}"
        );
        assert_eq!(txt(addr, &name).await, ["value-two"]);
    }
}

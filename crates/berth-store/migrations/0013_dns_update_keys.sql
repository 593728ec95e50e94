-- The TSIG key (`name:algorithm:secret`, sealed: AAD names the server) of
-- each DNS server berth sends RFC 2136 updates to for ACME DNS-01; given
-- once with `--acme-dns-tsig`, kept for later starts and other servers.
CREATE TABLE dns_update_keys (
    server     TEXT PRIMARY KEY,
    key_sealed TEXT NOT NULL,
    created_at TEXT NOT NULL
);

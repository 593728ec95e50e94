-- TLS certificates per hostname (ACME), and ACME accounts per directory.
-- Private keys are sealed with the store's cipher (AAD binds each to its
-- hostname or directory), never stored in the clear.
CREATE TABLE certificates (
    hostname        TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    chain_pem       TEXT,
    key_sealed      TEXT,
    not_after       TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    updated_at      TEXT NOT NULL
);
CREATE TABLE acme_accounts (
    directory         TEXT PRIMARY KEY,
    credentials_sealed TEXT NOT NULL,
    created_at        TEXT NOT NULL
);

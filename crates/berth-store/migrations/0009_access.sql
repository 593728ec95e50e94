-- API tokens (only their SHA-256 is kept), the audit log of changes, and
-- console sessions (only the SHA-256 of the session id is kept).
CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    project      TEXT,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    token     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    project   TEXT,
    source_ip TEXT NOT NULL
);
CREATE INDEX audit_log_project ON audit_log(project, seq);
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- API tokens (only their SHA-256 is kept), the audit log of changes, and
-- console sessions (only the SHA-256 of the session id is kept).
CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    project      TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE TABLE audit_log (
    seq       BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
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
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

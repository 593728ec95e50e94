-- Custom domains: verified by a TXT record, then routed to a service.
CREATE TABLE domains (
    hostname    TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    token       TEXT NOT NULL,
    target      TEXT NOT NULL,
    verified_at TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX domains_project ON domains(project);

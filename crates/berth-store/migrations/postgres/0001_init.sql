-- berth schema on PostgreSQL, version 1: the SQLite schema of migrations
-- 0001-0007 in PostgreSQL's types. Applied in one transaction under an
-- advisory lock (two servers may start at once).
CREATE TABLE projects (
    name             TEXT PRIMARY KEY,
    repo             TEXT NOT NULL,
    default_branch   TEXT NOT NULL,
    retain_images    INTEGER NOT NULL,
    webhook_secret   TEXT,            -- sealed (seal.rs), never clear
    created_at       TIMESTAMPTZ NOT NULL,
    repo_credentials TEXT,            -- sealed userinfo
    deploy_key       TEXT             -- sealed key text
);

CREATE TABLE environments (
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    branch      TEXT,
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE variables (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,        -- clear for plain values, sealed for secrets
    secret      BOOLEAN NOT NULL,
    build       BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, environment, key),
    FOREIGN KEY (project, environment) REFERENCES environments(project, name) ON DELETE CASCADE
);

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    status      TEXT NOT NULL,
    stage       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    data        TEXT NOT NULL,        -- the whole Deployment as JSON
    version     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deployments_slot ON deployments(project, environment, service, created_at);
CREATE INDEX deployments_status ON deployments(status);

CREATE TABLE slots (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    active      TEXT REFERENCES deployments(id),
    PRIMARY KEY (project, environment, service)
);

-- The log cursor: one counter row, bumped inside each append's transaction.
-- Its row lock is held until commit, so cursors are handed out in commit
-- order: a reader that sees line n already sees every line below n.
CREATE TABLE log_cursor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  BIGINT NOT NULL
);
INSERT INTO log_cursor (id, last) VALUES (1, 0);

CREATE TABLE logs (
    seq           BIGINT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    ts            TIMESTAMPTZ NOT NULL,
    stream        TEXT NOT NULL,
    step          TEXT,
    text          TEXT NOT NULL
);
CREATE INDEX logs_deployment ON logs(deployment_id, seq);

CREATE TABLE external_routes (
    hostname    TEXT PRIMARY KEY,
    upstream    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE manifests (
    image       TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE domains (
    hostname    TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    token       TEXT NOT NULL,
    target      TEXT NOT NULL,
    verified_at TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX domains_project ON domains(project);

CREATE TABLE certificates (
    hostname        TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    chain_pem       TEXT,
    key_sealed      TEXT,
    not_after       TIMESTAMPTZ,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE acme_accounts (
    directory          TEXT PRIMARY KEY,
    credentials_sealed TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL
);

-- A value sealed with the master key at first start: a server whose key
-- does not open it refuses to start.
CREATE TABLE key_check (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    sealed  TEXT NOT NULL
);

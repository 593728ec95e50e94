-- berth schema, version 1. Applied in one transaction at start.
CREATE TABLE projects (
    name            TEXT PRIMARY KEY,
    repo            TEXT NOT NULL,
    default_branch  TEXT NOT NULL,
    retain_images   INTEGER NOT NULL,
    webhook_secret  TEXT,            -- sealed (see crypto.rs), never clear
    created_at      TEXT NOT NULL
);

CREATE TABLE environments (
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    branch      TEXT,
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE variables (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,       -- clear for plain values, sealed for secrets
    secret      INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
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
    created_at  TEXT NOT NULL,
    data        TEXT NOT NULL        -- the whole Deployment as JSON
);
CREATE INDEX deployments_slot ON deployments(project, environment, service, created_at);
CREATE INDEX deployments_status ON deployments(status);

-- The active deployment of each service in each environment: flipping it is
-- one write (004's atomic publish).
CREATE TABLE slots (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    active      TEXT REFERENCES deployments(id),
    PRIMARY KEY (project, environment, service)
);

CREATE TABLE logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    ts            TEXT NOT NULL,
    stream        TEXT NOT NULL,
    step          TEXT,
    text          TEXT NOT NULL
);
CREATE INDEX logs_deployment ON logs(deployment_id, seq);

CREATE TABLE external_routes (
    hostname    TEXT PRIMARY KEY,
    upstream    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

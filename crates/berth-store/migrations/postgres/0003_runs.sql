-- One-off runs (`berth run`) and scheduled job runs. The record is the JSON
-- in `data`; the columns are what queries select on. A job has at most one
-- run per firing: the unique index is what makes a firing run once across
-- deploys, restarts of berth and several servers (NULLs are distinct, so
-- one-off runs never collide).
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    project       TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment   TEXT NOT NULL,
    service       TEXT NOT NULL,
    job           TEXT,
    scheduled_for TIMESTAMPTZ,
    status        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    data          TEXT NOT NULL
);
CREATE UNIQUE INDEX runs_firing ON runs(project, environment, job, scheduled_for);
CREATE INDEX runs_project ON runs(project, created_at);

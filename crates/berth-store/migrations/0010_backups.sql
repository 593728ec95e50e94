-- Volume backups (`berth volumes backup|backups|restore`). The record is the
-- JSON in `data`; the columns are what queries select on. A backup outlives
-- its environment (a torn-down preview's archives stay listed), not its
-- project.
CREATE TABLE backups (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment TEXT NOT NULL,
    volume      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX backups_volume ON backups(project, environment, volume, created_at);

-- `berth maintenance on`: a service (or, with service = '', every service)
-- of an environment answered by the edge with the maintenance page. Kept
-- here so it survives a restart and every server of a cluster applies it.
CREATE TABLE maintenance (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    since       TEXT NOT NULL,
    PRIMARY KEY (project, environment, service),
    FOREIGN KEY (project, environment) REFERENCES environments(project, name) ON DELETE CASCADE
);

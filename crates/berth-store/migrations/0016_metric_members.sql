-- The charts count every server's edge: each server writes its own rows,
-- keyed by its member id (the server's instance id), with the minute's
-- sparse latency histogram (JSON) so that readers can sum members and
-- take p95 of the sum. Rows written before keep an empty member and no
-- histogram. SQLite cannot change a primary key: the table is rebuilt.
CREATE TABLE metric_minutes_new (
    deployment_id TEXT NOT NULL,
    member TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    -- unix seconds of the minute's start
    minute INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    p95_ms REAL,
    latency TEXT,
    PRIMARY KEY (deployment_id, minute, member)
);
INSERT INTO metric_minutes_new (deployment_id, member, project, environment, service, minute,
    requests, errors, p95_ms, latency)
    SELECT deployment_id, '', project, environment, service, minute, requests, errors, p95_ms, NULL
    FROM metric_minutes;
DROP TABLE metric_minutes;
ALTER TABLE metric_minutes_new RENAME TO metric_minutes;
CREATE INDEX metric_minutes_by_service ON metric_minutes (project, environment, service, minute);
CREATE INDEX metric_minutes_by_minute ON metric_minutes (minute);

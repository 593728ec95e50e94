-- The console's charts: one row per deployment and minute of edge traffic,
-- written by the leader and pruned after about an hour.
CREATE TABLE metric_minutes (
    deployment_id TEXT NOT NULL,
    project TEXT NOT NULL,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    -- unix seconds of the minute's start
    minute INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    p95_ms REAL,
    PRIMARY KEY (deployment_id, minute)
);
CREATE INDEX metric_minutes_by_service ON metric_minutes (project, environment, service, minute);
CREATE INDEX metric_minutes_by_minute ON metric_minutes (minute);

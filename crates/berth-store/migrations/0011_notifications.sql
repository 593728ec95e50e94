-- Notification endpoints (`berth notify add`) and their outbox. The URL
-- (a Slack webhook's path is its secret) and the signing secret are sealed;
-- `data` is the record as shown (`scheme://host/…`, events). A delivery is
-- one event of one deployment for one endpoint: the unique index makes it
-- queued once, whoever notices the event first.
CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    project    TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX notifications_project ON notifications(project, created_at);
CREATE TABLE notification_deliveries (
    id              TEXT PRIMARY KEY,
    notification    TEXT NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
    deployment      TEXT NOT NULL,
    event           TEXT NOT NULL,
    status          TEXT NOT NULL,
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    data            TEXT NOT NULL
);
CREATE UNIQUE INDEX notification_deliveries_event ON notification_deliveries(notification, deployment, event);
CREATE INDEX notification_deliveries_due ON notification_deliveries(status, next_attempt_at);

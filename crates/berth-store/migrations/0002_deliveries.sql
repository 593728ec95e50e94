-- Webhook deliveries seen, so a redelivery makes no second deployment.
CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    received_at TEXT NOT NULL
);

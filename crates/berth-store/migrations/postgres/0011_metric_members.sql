-- The charts count every server's edge: each server writes its own rows,
-- keyed by its member id (the server's instance id), with the minute's
-- sparse latency histogram (JSON) so that readers can sum members and
-- take p95 of the sum. Rows written before keep an empty member and no
-- histogram.
ALTER TABLE metric_minutes ADD COLUMN member TEXT NOT NULL DEFAULT '';
ALTER TABLE metric_minutes ADD COLUMN latency TEXT;
ALTER TABLE metric_minutes DROP CONSTRAINT metric_minutes_pkey;
ALTER TABLE metric_minutes ADD PRIMARY KEY (deployment_id, minute, member);

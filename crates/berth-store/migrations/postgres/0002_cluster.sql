-- Several berth servers on one database: who is alive, and the one leader
-- lease with its fencing epoch (see cluster.rs).
CREATE TABLE cluster_members (
    id           TEXT PRIMARY KEY,    -- the server's instance id (its data dir)
    api_url      TEXT NOT NULL,
    epoch        BIGINT NOT NULL,     -- the lease epoch it saw last
    last_seen_at TIMESTAMPTZ NOT NULL
);

-- One row. `holder` leads while `expires_at` is in the future (database
-- clock); every take-over bumps `epoch`. `engine_id` is the identity the
-- servers share on the container engine (the first server's instance id).
CREATE TABLE cluster_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    engine_id  TEXT
);
INSERT INTO cluster_lease (id) VALUES (1);

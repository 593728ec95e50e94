-- A version per deployment record: a save names the version it read and is
-- refused when another writer saved in between (compare-and-set).
ALTER TABLE deployments ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

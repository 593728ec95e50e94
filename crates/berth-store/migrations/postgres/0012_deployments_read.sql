-- Reading deployment history (issue 10). Each record's JSON (`data`, 3-5 KB
-- with its steps' log tails) is over TOAST's 2 KB threshold, so every list
-- of deployments decompresses each row it returns: lz4 does that about 3x
-- faster than the default pglz for ~12% more bytes (measured in
-- bench/README.md, "Store"). Metadata only: rows keep the method they were
-- written with until the record is saved again; a server built without lz4
-- keeps pglz.
DO $$
BEGIN
    ALTER TABLE deployments ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END $$;

-- The newest deployments first (`berth status`, the console) without
-- scanning and sorting the whole history.
CREATE INDEX deployments_recent ON deployments (created_at DESC, id DESC);

-- Build output manifests (004): path, size and sha256 of each file, per image.
CREATE TABLE manifests (
    image       TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

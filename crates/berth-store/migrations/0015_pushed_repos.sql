-- Repositories pushed with `git push` to berth, one git bundle of every
-- ref per project, so that every server of a cluster serves, fetches and
-- clones the same pushed commits (each server keeps a working copy under
-- `<data-dir>/git/`, refreshed when `version` moved). `version` is a
-- compare-and-set counter: a push saved over a newer one is refused.
CREATE TABLE pushed_repos (
    project    TEXT PRIMARY KEY REFERENCES projects(name) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    bundle     BLOB NOT NULL,
    updated_at TEXT NOT NULL
);
-- A `berth cancel` of a running deployment asked of a server that does not
-- run it (a cluster's follower): the leader carries it out and clears it.
CREATE TABLE cancel_requests (
    deployment_id TEXT PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    requested_at  TEXT NOT NULL
);

-- Repository credentials and SSH deploy keys, sealed like secrets; the
-- repo column keeps the URL without credentials. Variables flagged for
-- builds.
ALTER TABLE projects ADD COLUMN repo_credentials TEXT;  -- sealed userinfo
ALTER TABLE projects ADD COLUMN deploy_key TEXT;        -- sealed key text
ALTER TABLE variables ADD COLUMN build INTEGER NOT NULL DEFAULT 0;

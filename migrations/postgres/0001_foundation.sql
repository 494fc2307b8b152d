-- Orgs, API keys, memories and their history (production mode).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id),
    name          TEXT NOT NULL,
    environment   TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'revoked')),
    expires_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    rotated_from  TEXT,
    rotated_to    TEXT
);
CREATE INDEX api_keys_org ON api_keys(org_id, created_at);

CREATE TABLE memories (
    id           UUID PRIMARY KEY,             -- UUID v7, time-ordered
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    environment  TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    text         TEXT NOT NULL,
    metadata     JSONB NOT NULL DEFAULT '{}',
    embedding    vector(384) NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX memories_org_env_id ON memories(org_id, environment, id);
CREATE INDEX memories_metadata ON memories USING gin (metadata jsonb_path_ops);
CREATE INDEX memories_embedding ON memories USING hnsw (embedding vector_cosine_ops);

CREATE TABLE memory_history (
    id            UUID PRIMARY KEY,
    memory_id     UUID NOT NULL,
    org_id        TEXT NOT NULL,
    environment   TEXT NOT NULL,
    event         TEXT NOT NULL CHECK (event IN ('ADD', 'UPDATE', 'DELETE')),
    old_text      TEXT,
    new_text      TEXT,
    old_metadata  JSONB,
    new_metadata  JSONB,
    request_id    TEXT,
    actor_key_id  TEXT,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX memory_history_memory ON memory_history(org_id, environment, memory_id, id);

-- Row-level security: tenant requests run as role memhost_tenant with
-- `memhost.org_id` set for the transaction, so a query that forgot its
-- org filter still sees only that org's rows. The connecting (owner) role
-- is used for operator tasks and bypasses the policies as owners do.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'memhost_tenant') THEN
        CREATE ROLE memhost_tenant NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database of this cluster created it concurrently
END
$$;
DO $$
BEGIN
    EXECUTE format('GRANT memhost_tenant TO %I', current_user);
EXCEPTION WHEN others THEN
    RAISE NOTICE 'could not grant memhost_tenant to %: %', current_user, SQLERRM;
END
$$;
GRANT SELECT ON orgs TO memhost_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE ON memories, memory_history TO memhost_tenant;

ALTER TABLE memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memories
    USING (org_id = current_setting('memhost.org_id', true))
    WITH CHECK (org_id = current_setting('memhost.org_id', true));
CREATE POLICY tenant_isolation ON memory_history
    USING (org_id = current_setting('memhost.org_id', true))
    WITH CHECK (org_id = current_setting('memhost.org_id', true));

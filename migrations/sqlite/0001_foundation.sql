-- Orgs, API keys, memories and their history (embedded mode).
-- Timestamps are RFC 3339 UTC text with microseconds, so they sort as text.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    created_at  TEXT NOT NULL
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
    expires_at    TEXT,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT,
    rotated_from  TEXT,
    rotated_to    TEXT
);
CREATE INDEX api_keys_org ON api_keys(org_id, created_at);

CREATE TABLE memories (
    id           TEXT PRIMARY KEY,            -- UUID v7, time-ordered
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    environment  TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',  -- JSON object
    embedding    BLOB NOT NULL,               -- little-endian f32
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX memories_org_env_id ON memories(org_id, environment, id);

CREATE TABLE memory_history (
    id            TEXT PRIMARY KEY,           -- UUID v7
    memory_id     TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    environment   TEXT NOT NULL,
    event         TEXT NOT NULL CHECK (event IN ('ADD', 'UPDATE', 'DELETE')),
    old_text      TEXT,
    new_text      TEXT,
    old_metadata  TEXT,
    new_metadata  TEXT,
    request_id    TEXT,
    actor_key_id  TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX memory_history_memory ON memory_history(org_id, environment, memory_id, id);

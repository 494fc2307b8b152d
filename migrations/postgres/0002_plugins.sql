-- Plugin registry and activations; operator orgs may use the admin API.
-- Not tenant data: no row-level security, and memhost_tenant gets no grants.
ALTER TABLE orgs ADD COLUMN operator BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE plugins (
    digest        TEXT PRIMARY KEY,      -- SHA-256 of the component, hex
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    wit_version   TEXT NOT NULL,
    sdk           TEXT,
    config_schema TEXT NOT NULL,
    limits        TEXT NOT NULL,         -- per-plugin limit overrides, JSON
    size_bytes    BIGINT NOT NULL,
    wasm          BYTEA NOT NULL,
    uploaded_by   TEXT NOT NULL,
    uploaded_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX plugins_kind ON plugins(kind, uploaded_at);

-- Every activation ever made; the current ones have no deactivated_at.
CREATE TABLE plugin_activations (
    id             TEXT PRIMARY KEY,     -- UUID v7
    kind           TEXT NOT NULL,
    target         TEXT NOT NULL,        -- global | plan:<plan> | org:<org id> | canary
    digest         TEXT NOT NULL REFERENCES plugins(digest),
    config         TEXT NOT NULL,        -- JSON, valid against the plugin's schema
    canary_percent INTEGER,
    activated_by   TEXT NOT NULL,
    activated_at   TIMESTAMPTZ NOT NULL,
    deactivated_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX plugin_activations_current ON plugin_activations(kind, target) WHERE deactivated_at IS NULL;
CREATE INDEX plugin_activations_history ON plugin_activations(kind, target, activated_at);

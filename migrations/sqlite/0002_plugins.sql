-- Plugin registry and activations; operator orgs may use the admin API.
ALTER TABLE orgs ADD COLUMN operator INTEGER NOT NULL DEFAULT 0;

CREATE TABLE plugins (
    digest        TEXT PRIMARY KEY,      -- SHA-256 of the component, hex
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    wit_version   TEXT NOT NULL,
    sdk           TEXT,
    config_schema TEXT NOT NULL,
    limits        TEXT NOT NULL,         -- per-plugin limit overrides, JSON
    size_bytes    INTEGER NOT NULL,
    wasm          BLOB NOT NULL,
    uploaded_by   TEXT NOT NULL,
    uploaded_at   TEXT NOT NULL
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
    activated_at   TEXT NOT NULL,
    deactivated_at TEXT
);
CREATE UNIQUE INDEX plugin_activations_current ON plugin_activations(kind, target) WHERE deactivated_at IS NULL;
CREATE INDEX plugin_activations_history ON plugin_activations(kind, target, activated_at);

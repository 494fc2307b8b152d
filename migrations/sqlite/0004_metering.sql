-- Usage metering (issue 17): raw usage events are the source of truth; the
-- period counters (usage_counters, from 0003), daily rollups and gauges are
-- updated in the same transaction as the events they sum. Idempotency keys,
-- the audit log and instance liveness live here too. (See the PostgreSQL
-- migration for the column notes.)

CREATE TABLE usage_events (
    id                    TEXT PRIMARY KEY,
    org_id                TEXT NOT NULL,
    environment           TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    key_id                TEXT NOT NULL,
    occurred_at           TEXT NOT NULL,
    method                TEXT NOT NULL,
    route                 TEXT NOT NULL,
    status                INTEGER NOT NULL,
    billable              INTEGER NOT NULL,
    tokens_in             INTEGER NOT NULL DEFAULT 0,
    tokens_out            INTEGER NOT NULL DEFAULT 0,
    memories_read         INTEGER NOT NULL DEFAULT 0,
    memories_created      INTEGER NOT NULL DEFAULT 0,
    memories_updated      INTEGER NOT NULL DEFAULT 0,
    memories_deleted      INTEGER NOT NULL DEFAULT 0,
    memories_stored       INTEGER NOT NULL DEFAULT 0,
    embeddings_generated  INTEGER NOT NULL DEFAULT 0,
    model_calls           INTEGER NOT NULL DEFAULT 0,
    cost_micros           INTEGER NOT NULL DEFAULT 0,
    model                 TEXT,
    request_id            TEXT NOT NULL,
    processing_us         INTEGER NOT NULL,
    tags                  TEXT NOT NULL DEFAULT '{}',
    quantities            TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX usage_events_org_time ON usage_events(org_id, environment, occurred_at);
CREATE INDEX usage_events_time ON usage_events(occurred_at);

CREATE TABLE usage_daily_rollup (
    org_id       TEXT NOT NULL,
    environment  TEXT NOT NULL,
    day          TEXT NOT NULL,
    metric       TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, day, metric)
);

CREATE TABLE usage_gauges (
    org_id       TEXT NOT NULL,
    environment  TEXT NOT NULL,
    name         TEXT NOT NULL,
    value        INTEGER NOT NULL,
    PRIMARY KEY (org_id, environment, name)
);
INSERT INTO usage_gauges (org_id, environment, name, value)
    SELECT org_id, environment, 'memories_stored', COUNT(*) FROM memories GROUP BY org_id, environment;

CREATE TABLE usage_distinct (
    org_id       TEXT NOT NULL,
    environment  TEXT NOT NULL,
    bucket       TEXT NOT NULL,
    metric       TEXT NOT NULL,
    value        TEXT NOT NULL,
    PRIMARY KEY (org_id, environment, bucket, metric, value)
);

CREATE TABLE idempotency_keys (
    org_id           TEXT NOT NULL,
    environment      TEXT NOT NULL,
    key              TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('running', 'done')),
    owner            TEXT NOT NULL,
    response_status  INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (org_id, environment, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);

CREATE TABLE instances (
    boot_id     TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);

CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY,
    occurred_at    TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('api_call', 'operator', 'system')),
    org_id         TEXT,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT,
    request_id     TEXT,
    ip             TEXT,
    user_agent     TEXT,
    status         INTEGER,
    processing_us  INTEGER,
    tokens         INTEGER,
    before         TEXT,
    after          TEXT,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_log_org ON audit_log(org_id, seq);
CREATE INDEX audit_log_time ON audit_log(occurred_at);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_prune_unlock (id INTEGER PRIMARY KEY);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    WHEN NOT EXISTS (SELECT 1 FROM audit_prune_unlock)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

-- Batch jobs (issue 15): a durable queue in the database. Workers in any
-- host claim a queued job (FOR UPDATE SKIP LOCKED) and hold it with a lease
-- they renew; a job whose lease ran out (its worker died) is claimed again.
-- Read and written by the service only (every statement names the org).
CREATE TABLE batch_jobs (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES orgs(id),
    environment       TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    kind              TEXT NOT NULL,          -- extract | memories | embeddings
    status            TEXT NOT NULL,          -- queued | running | completed | failed | canceled
    priority          BIGINT  NOT NULL DEFAULT 0,  -- 1: the priority lane
    context           TEXT NOT NULL,          -- JSON: what the items run with
    total_items       BIGINT  NOT NULL,
    done_items        BIGINT  NOT NULL DEFAULT 0,
    failed_items      BIGINT  NOT NULL DEFAULT 0,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    cursor            TEXT,                   -- embeddings: the last memory done
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    run_after         TIMESTAMPTZ NOT NULL,   -- backoff after a failed attempt
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    error             TEXT,                   -- JSON {code, message}
    created_at        TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ
);
CREATE INDEX batch_jobs_claimable ON batch_jobs (priority DESC, created_at) WHERE status IN ('queued', 'running');
CREATE INDEX batch_jobs_org ON batch_jobs (org_id, environment, created_at DESC);

-- One item of a job: a dialogue to extract from, a memory to create.
-- `plan` is the extractor's answer, stored before any of it is applied, so
-- a retried item applies the same operations (each once: see op_key).
CREATE TABLE batch_job_items (
    job_id     TEXT NOT NULL REFERENCES batch_jobs(id) ON DELETE CASCADE,
    idx        BIGINT  NOT NULL,
    status     TEXT NOT NULL,                 -- pending | done | failed
    input      TEXT NOT NULL,
    plan       TEXT,
    result     TEXT,
    error      TEXT,
    attempts   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);

-- A change made by a job carries the key of the operation that made it
-- (job, item, operation); the unique index makes applying it twice
-- impossible: a retried item's second write fails and is recognised.
ALTER TABLE memory_history ADD COLUMN op_key TEXT;
CREATE UNIQUE INDEX memory_history_op_key ON memory_history (org_id, op_key) WHERE op_key IS NOT NULL;

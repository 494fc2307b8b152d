-- Rate limits and quotas: per-org overrides (Enterprise limits and prices)
-- and period usage counters the quota check reads.
ALTER TABLE orgs ADD COLUMN overrides TEXT NOT NULL DEFAULT '{}';  -- JSON object

-- Usage per org, environment, billing period and metric. The meter adds
-- to these in batches; the quota check reads them.
CREATE TABLE usage_counters (
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    environment  TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    period       TEXT NOT NULL,          -- billing period, `YYYY-MM` (UTC calendar month)
    metric       TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    PRIMARY KEY (org_id, environment, period, metric)
);

-- Written by the meter (the service's own role), read for one org at a time;
-- as tenant data it gets the same isolation policy as memories.
GRANT SELECT ON usage_counters TO memhost_tenant;
ALTER TABLE usage_counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_counters
    USING (org_id = current_setting('memhost.org_id', true));

-- Billing (issue 13): the customer's pricing context (plan history, region,
-- grandfathered plan snapshot, add-ons, credits, promotions), the pricing
-- configs invoices were priced with, finalized invoices (immutable), the
-- usage each period has invoiced (late events go to the next invoice), and
-- an outbox of billing events for alert channels to deliver.

-- Which plan an org was on from when: the spans of a period (proration).
CREATE TABLE plan_changes (
    org_id        TEXT NOT NULL REFERENCES orgs(id),
    effective_at  TIMESTAMPTZ NOT NULL,
    plan          TEXT NOT NULL,
    PRIMARY KEY (org_id, effective_at)
);
INSERT INTO plan_changes (org_id, effective_at, plan) SELECT id, created_at, plan FROM orgs;

-- Seed 000's customer_pricing beyond the overrides on `orgs`: region, and
-- the plan version the customer is held to (grandfathering, A/B tests).
CREATE TABLE customer_pricing (
    org_id               TEXT PRIMARY KEY REFERENCES orgs(id),
    region               TEXT,
    snapshot_plan        TEXT,            -- the plan the snapshot is of
    plan_snapshot        TEXT,            -- JSON of the plan definition
    snapshot_version     TEXT,            -- the pricing_version it was taken from
    grandfathered_until  TIMESTAMPTZ,     -- none: until moved
    stripe_customer_id   TEXT,            -- for the Stripe meter-event export
    updated_at           TIMESTAMPTZ NOT NULL
);

CREATE TABLE customer_addons (
    org_id          TEXT NOT NULL REFERENCES orgs(id),
    addon_id        TEXT NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    price_override  BIGINT,               -- micro-units per unit
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, addon_id)
);

-- Plans closed to new customers (existing ones keep them).
CREATE TABLE deprecated_plans (
    plan           TEXT PRIMARY KEY,
    deprecated_at  TIMESTAMPTZ NOT NULL,
    deprecated_by  TEXT NOT NULL
);

-- A credit ledger: `remaining` is drawn down by finalized invoices only.
CREATE TABLE customer_credits (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    source      TEXT NOT NULL CHECK (source IN ('promotion', 'refund', 'manual', 'prepaid')),
    amount      BIGINT NOT NULL CHECK (amount > 0),
    remaining   BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    expires_at  TIMESTAMPTZ,
    reference   TEXT,                     -- e.g. the promotion id
    note        TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX customer_credits_org ON customer_credits(org_id, expires_at);

-- Percentage promotions a customer holds (credit promotions become credits).
CREATE TABLE customer_promotions (
    org_id         TEXT NOT NULL REFERENCES orgs(id),
    promotion_id   TEXT NOT NULL,
    condition_met  BOOLEAN NOT NULL,
    applied_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, promotion_id)
);

-- Each pricing config invoices were priced with, stored once by digest.
CREATE TABLE pricing_configs (
    digest           TEXT PRIMARY KEY,    -- SHA-256 of the config JSON text
    pricing_version  TEXT,
    config           TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);

-- The pricing policy file as last applied (by its path): an unchanged file
-- is not applied again at start, over changes made since through the API.
CREATE TABLE policy_files (
    path        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE invoices (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES orgs(id),
    period           TEXT NOT NULL,        -- YYYY-MM
    status           TEXT NOT NULL CHECK (status IN ('finalized', 'paid', 'payment_failed', 'void')),
    plan             TEXT NOT NULL,
    currency         TEXT NOT NULL,
    subtotal         BIGINT NOT NULL,      -- micro-units: base, usage and add-on lines
    discounts        BIGINT NOT NULL,      -- ≤ 0
    credits_applied  BIGINT NOT NULL,      -- ≤ 0
    total            BIGINT NOT NULL,
    amount_paid      BIGINT NOT NULL DEFAULT 0,
    lines            TEXT NOT NULL,        -- JSON array
    usage            TEXT NOT NULL,        -- JSON: this period's units per metric
    late_usage       TEXT NOT NULL,        -- JSON array: earlier periods' units counted after they closed
    rating_input     TEXT NOT NULL,        -- JSON: exactly what the plugin was given (replay)
    plugin_digest    TEXT NOT NULL,
    activation_id    TEXT NOT NULL,
    config_digest    TEXT NOT NULL REFERENCES pricing_configs(digest),
    created_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (org_id, period)
);
CREATE INDEX invoices_period ON invoices(period);

-- Units of a period that invoices have covered, per metric.
CREATE TABLE invoiced_usage (
    org_id    TEXT NOT NULL,
    period    TEXT NOT NULL,
    metric    TEXT NOT NULL,
    quantity  BIGINT NOT NULL,
    PRIMARY KEY (org_id, period, metric)
);

-- Payments recorded against invoices (by an operator, or from Stripe).
CREATE TABLE invoice_payments (
    id              TEXT PRIMARY KEY,
    invoice_id      TEXT NOT NULL REFERENCES invoices(id),
    status          TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    amount          BIGINT NOT NULL,
    reference       TEXT,
    failure_reason  TEXT,
    source          TEXT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX invoice_payments_invoice ON invoice_payments(invoice_id, occurred_at);

-- Stripe webhook events already handled (a redelivery is not handled twice).
CREATE TABLE stripe_webhook_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL
);

-- Outbox: recorded in the transaction of what they report.
CREATE TABLE billing_events (
    seq           BIGSERIAL PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    type          TEXT NOT NULL,
    org_id        TEXT,
    payload       TEXT NOT NULL,
    occurred_at   TIMESTAMPTZ NOT NULL,
    delivered_at  TIMESTAMPTZ
);

GRANT SELECT ON invoices TO memhost_tenant;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices
    USING (org_id = current_setting('memhost.org_id', true));

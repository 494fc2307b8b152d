-- API calls are audited by their usage event (issue 17): the event row
-- carries the call's client address and user agent, and each metering batch
-- appends one `usage.sealed` entry to the audit chain whose digest covers
-- every event of the batch (`audit_seq` names it). One row per request
-- instead of two; tampering with an event breaks its seal's digest.
ALTER TABLE usage_events
    ADD COLUMN ip TEXT,
    ADD COLUMN user_agent TEXT,
    ADD COLUMN audit_seq BIGINT;                -- the audit entry that seals this event
CREATE INDEX usage_events_audit ON usage_events(audit_seq);

-- Events are audit records now: append-only like the audit log, by the
-- audit log's own guard (retention pruning unlocks deletes inside its own
-- transaction only), which now names the table it refuses.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_prune_unlock) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

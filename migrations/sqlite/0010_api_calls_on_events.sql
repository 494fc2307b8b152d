-- API calls are audited by their usage event (issue 17): the event row
-- carries the call's client address and user agent, and each metering batch
-- appends one `usage.sealed` entry to the audit chain whose digest covers
-- every event of the batch (`audit_seq` names it). One row per request
-- instead of two; tampering with an event breaks its seal's digest.
ALTER TABLE usage_events ADD COLUMN ip TEXT;
ALTER TABLE usage_events ADD COLUMN user_agent TEXT;
ALTER TABLE usage_events ADD COLUMN audit_seq INTEGER;
CREATE INDEX usage_events_audit ON usage_events(audit_seq);

-- Events are audit records now: append-only like the audit log.
CREATE TRIGGER usage_events_no_update BEFORE UPDATE ON usage_events
BEGIN
    SELECT RAISE(ABORT, 'usage_events is append-only: UPDATE refused');
END;
CREATE TRIGGER usage_events_no_delete BEFORE DELETE ON usage_events
    WHEN NOT EXISTS (SELECT 1 FROM audit_prune_unlock)
BEGIN
    SELECT RAISE(ABORT, 'usage_events is append-only: DELETE refused');
END;

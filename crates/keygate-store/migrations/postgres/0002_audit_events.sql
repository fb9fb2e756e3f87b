-- The audit trail: append-only. Events are written in the same transaction as the change
-- they describe; the trigger refuses any UPDATE or DELETE.
CREATE TABLE audit_events (
    seq        BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    key_id     TEXT,
    request_id TEXT,
    details    TEXT   NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_key ON audit_events (key_id, seq);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE FUNCTION keygate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION keygate_audit_append_only();

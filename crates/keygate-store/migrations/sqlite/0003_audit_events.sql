-- The audit trail: append-only. Events are written in the same transaction as the change
-- they describe; the triggers refuse any UPDATE or DELETE.
CREATE TABLE audit_events (
    seq        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    key_id     TEXT,
    request_id TEXT,
    details    TEXT    NOT NULL DEFAULT '{}'
) STRICT;

CREATE INDEX audit_events_key ON audit_events (key_id, seq);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

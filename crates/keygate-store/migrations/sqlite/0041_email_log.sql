-- The email log's filters: each email names its event's type, the key and the key's owner
-- (when the event happened), so that it can be listed by owner, recipient and state. Rows
-- written before this take them from their event.
ALTER TABLE email_deliveries ADD COLUMN event TEXT NOT NULL DEFAULT '';
ALTER TABLE email_deliveries ADD COLUMN key_id TEXT;
ALTER TABLE email_deliveries ADD COLUMN owner TEXT;
UPDATE email_deliveries SET
    event = COALESCE((SELECT a.kind FROM audit_events a WHERE a.seq = email_deliveries.event_seq), ''),
    key_id = (SELECT a.key_id FROM audit_events a WHERE a.seq = email_deliveries.event_seq),
    owner = (SELECT k.owner FROM audit_events a JOIN keys k ON k.id = a.key_id
             WHERE a.seq = email_deliveries.event_seq);
CREATE INDEX email_deliveries_recipient ON email_deliveries (LOWER(recipient), id);
CREATE INDEX email_deliveries_owner ON email_deliveries (owner, id);

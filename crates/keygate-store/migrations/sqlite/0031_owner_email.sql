-- Key owners' contact addresses (JSON array), for email notices, on the owners' own record
-- (0013, which holds their shared rate limits).
ALTER TABLE owners ADD COLUMN emails TEXT NOT NULL DEFAULT '[]';

-- The email outbox: one row per notice and recipient, written in the same transaction as the
-- event it tells of (like webhook deliveries), rendered then (never a key in it).
CREATE TABLE email_deliveries (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body_text       TEXT NOT NULL,
    body_html       TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    sent_at         INTEGER
) STRICT;

CREATE INDEX email_deliveries_due ON email_deliveries (status, next_attempt_at);

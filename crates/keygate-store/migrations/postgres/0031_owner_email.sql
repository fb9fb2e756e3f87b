-- Key owners' own record: their contact addresses (JSON array), for email notices.
CREATE TABLE owners (
    owner      TEXT NOT NULL PRIMARY KEY,
    emails     TEXT NOT NULL DEFAULT '[]',
    updated_at BIGINT NOT NULL
);

-- The email outbox: one row per notice and recipient, written in the same transaction as the
-- event it tells of (like webhook deliveries), rendered then (never a key in it).
CREATE TABLE email_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_seq       BIGINT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body_text       TEXT NOT NULL,
    body_html       TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    sent_at         BIGINT
);

CREATE INDEX email_deliveries_due ON email_deliveries (status, next_attempt_at);

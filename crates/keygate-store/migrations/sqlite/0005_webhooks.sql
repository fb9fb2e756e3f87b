-- Webhook endpoints and the durable outbox of deliveries. A delivery row is written in the
-- same transaction as the audit event it carries, so a restart loses no notification.
CREATE TABLE webhook_endpoints (
    id         TEXT    NOT NULL PRIMARY KEY,
    url        TEXT    NOT NULL,
    events     TEXT    NOT NULL DEFAULT '["*"]',
    secret     TEXT    NOT NULL,
    slack      INTEGER NOT NULL DEFAULT 0,
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE webhook_deliveries (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (id),
    event_seq       INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER
) STRICT;

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

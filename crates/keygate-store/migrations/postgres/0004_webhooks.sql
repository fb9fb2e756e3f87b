-- Webhook endpoints and the durable outbox of deliveries. A delivery row is written in the
-- same transaction as the audit event it carries, so a restart loses no notification.
CREATE TABLE webhook_endpoints (
    id         TEXT    NOT NULL PRIMARY KEY,
    url        TEXT    NOT NULL,
    events     TEXT    NOT NULL DEFAULT '["*"]',
    secret     TEXT    NOT NULL,
    slack      BOOLEAN NOT NULL DEFAULT FALSE,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT  NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     TEXT   NOT NULL REFERENCES webhook_endpoints (id),
    event_seq       BIGINT NOT NULL,
    payload         TEXT   NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

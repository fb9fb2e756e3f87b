-- Usage by hour: one row per (key, hour), the hour's start in milliseconds since the Unix epoch
-- (UTC), counters of the requests that named the key by outcome (VALID is `verified`). The
-- key's owner is kept on the row, so an owner's usage is a sum over the owner's rows. Rows are
-- added to in batches (one upsert per flush) and purged after the retention period.
CREATE TABLE key_usage (
    key_id             TEXT NOT NULL,
    hour               INTEGER NOT NULL,
    owner              TEXT,
    verified           INTEGER NOT NULL DEFAULT 0,
    revoked            INTEGER NOT NULL DEFAULT 0,
    expired            INTEGER NOT NULL DEFAULT 0,
    disabled           INTEGER NOT NULL DEFAULT 0,
    insufficient_scope INTEGER NOT NULL DEFAULT 0,
    usage_exceeded     INTEGER NOT NULL DEFAULT 0,
    ip_not_allowed     INTEGER NOT NULL DEFAULT 0,
    rate_limited       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour)
) WITHOUT ROWID;
CREATE INDEX key_usage_owner ON key_usage (owner, hour) WHERE owner IS NOT NULL;
CREATE INDEX key_usage_hour ON key_usage (hour);

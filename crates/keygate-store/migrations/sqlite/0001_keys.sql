-- API keys. Only the SHA-256 of a key is stored (`hash`), never the key itself.
-- Times are whole milliseconds since the Unix epoch (UTC).
CREATE TABLE keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL,
    start          TEXT    NOT NULL,
    hash           BLOB    NOT NULL,
    owner          TEXT,
    scopes         TEXT    NOT NULL DEFAULT '[]',
    metadata       TEXT    NOT NULL DEFAULT '{}',
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    enabled        INTEGER NOT NULL DEFAULT 1,
    last_used_at   INTEGER
) STRICT;

CREATE UNIQUE INDEX keys_hash ON keys (hash);
CREATE INDEX keys_owner ON keys (owner, id);

-- API keys. Only the SHA-256 of a key is stored (`hash`), never the key itself.
-- Times are whole milliseconds since the Unix epoch (UTC). Scopes and metadata are JSON text,
-- kept byte-for-byte as keygate wrote them.
CREATE TABLE keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL,
    start          TEXT    NOT NULL,
    hash           BYTEA   NOT NULL,
    owner          TEXT,
    scopes         TEXT    NOT NULL DEFAULT '[]',
    metadata       TEXT    NOT NULL DEFAULT '{}',
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    revoked_reason TEXT,
    enabled        BOOLEAN NOT NULL DEFAULT TRUE,
    last_used_at   BIGINT
);

CREATE UNIQUE INDEX keys_hash ON keys (hash);
CREATE INDEX keys_owner ON keys (owner, id);

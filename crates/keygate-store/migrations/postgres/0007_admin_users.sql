-- People who sign in to the admin web UI with a password (argon2id hash, never the password).
CREATE TABLE admin_users (
    username      TEXT    NOT NULL PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    read_only     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- Admin-UI sessions, shared by every node. `id` is the SHA-256 of the cookie's token (the
-- token itself is never stored).
CREATE TABLE admin_sessions (
    id           BYTEA   NOT NULL PRIMARY KEY,
    principal    TEXT    NOT NULL,
    csrf         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL
);

-- One-time messages for a session's next page, sealed under a key derived from the session's
-- token (which only the browser holds): a new key waiting to be shown is never readable here.
CREATE TABLE admin_flashes (
    id         BIGSERIAL NOT NULL PRIMARY KEY,
    session_id BYTEA     NOT NULL REFERENCES admin_sessions (id) ON DELETE CASCADE,
    sealed     TEXT      NOT NULL
);

CREATE INDEX admin_flashes_session ON admin_flashes (session_id);

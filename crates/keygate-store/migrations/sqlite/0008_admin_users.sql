-- People who sign in to the admin web UI with a password (argon2id hash, never the password).
CREATE TABLE admin_users (
    username      TEXT    NOT NULL PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    read_only     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- Admin-UI sessions, shared by every node. `id` is the SHA-256 of the cookie's token (the
-- token itself is never stored).
CREATE TABLE admin_sessions (
    id           BLOB    NOT NULL PRIMARY KEY,
    principal    TEXT    NOT NULL,
    csrf         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
) STRICT;

-- One-time messages for a session's next page, sealed under a key derived from the session's
-- token (which only the browser holds): a new key waiting to be shown is never readable here.
CREATE TABLE admin_flashes (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_id BLOB    NOT NULL REFERENCES admin_sessions (id) ON DELETE CASCADE,
    sealed     TEXT    NOT NULL
) STRICT;

CREATE INDEX admin_flashes_session ON admin_flashes (session_id);

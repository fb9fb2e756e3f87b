-- Admin-UI sign-in attempts per subject (`address:<ip>` or `user:<name>`), shared by every
-- node: failures in a row and the lock-out they impose, and the attempts being checked right
-- now (admitted before a password is checked, so a burst cannot outrun the lock-out).
CREATE TABLE sign_in_attempts (
    subject      TEXT    NOT NULL PRIMARY KEY,
    failures     INTEGER NOT NULL,
    last_at      INTEGER,
    locked_until INTEGER,
    pending      INTEGER NOT NULL DEFAULT 0,
    pending_since INTEGER
) STRICT;

-- Keys that keygate makes for itself and every node must share (e.g. the one that signs the
-- sign-in form's token), made once by whichever node needs one first.
CREATE TABLE server_secrets (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

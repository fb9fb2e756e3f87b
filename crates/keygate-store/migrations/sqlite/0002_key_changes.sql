-- Every change to a key (create, update, revoke) adds a row here, in the same transaction,
-- by whichever process made it. A running server polls it to drop stale cache entries, so a
-- key revoked from the CLI stops verifying on the server within the poll interval.
CREATE TABLE key_changes (
    seq        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    hash       BLOB    NOT NULL,
    changed_at INTEGER NOT NULL
) STRICT;

CREATE INDEX key_changes_changed_at ON key_changes (changed_at);

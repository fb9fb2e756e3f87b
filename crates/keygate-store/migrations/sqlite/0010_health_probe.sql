-- One row that `/readyz` rewrites to prove the database takes writes (a full disk or a
-- read-only file shows here before a real change fails).
CREATE TABLE health_probe (
    id INTEGER NOT NULL PRIMARY KEY,
    at INTEGER NOT NULL
) STRICT;

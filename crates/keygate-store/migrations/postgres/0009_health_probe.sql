-- One row that `/readyz` rewrites to prove the database takes writes.
CREATE TABLE health_probe (
    id INTEGER NOT NULL PRIMARY KEY,
    at BIGINT  NOT NULL
);

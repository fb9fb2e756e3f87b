-- An owner's own record: the rate limits (JSON array) that all of its keys share. Keys name
-- their owner in keys.owner; an owner with no row has no shared limits.
CREATE TABLE owners (
    owner TEXT NOT NULL PRIMARY KEY,
    rate_limits TEXT NOT NULL DEFAULT '[]',
    updated_at BIGINT NOT NULL
);

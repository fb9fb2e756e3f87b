-- The change feed, in the database: the channel this deployment's nodes listen on (named after
-- the schema keygate lives in, so two deployments in two schemas do not hear each other), and
-- the signal every change to a key sends on it (delivered when its transaction commits).
CREATE FUNCTION keygate_channel() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT left(lower(regexp_replace('keygate_changes_' || current_schema(), '[^a-zA-Z0-9_]', '_', 'g')), 63)
$$;

CREATE FUNCTION keygate_key_changed(hash BYTEA) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify(keygate_channel(), encode(hash, 'hex'))
$$;

-- The switch-over after a rotation: a key's first use (the successor's shows the holder
-- switched), its uses since it was rotated (both written in batches, like last_used_at), and
-- the quiet period after which a rotated key is retired once its successor is in use.
ALTER TABLE keys ADD COLUMN first_used_at INTEGER;
ALTER TABLE keys ADD COLUMN uses_since_rotation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN retire_when_switched_ms INTEGER;
-- The scheduler reads keys in their grace period.
CREATE INDEX keys_in_grace ON keys (expires_at) WHERE rotated_at IS NOT NULL AND revoked_at IS NULL;

-- Listing by status without reading the whole table: revoked, disabled and expiring keys are
-- usually few, so each gets a partial index (newest first by id, or by expiry time).
CREATE INDEX keys_revoked ON keys (id) WHERE revoked_at IS NOT NULL;
CREATE INDEX keys_disabled ON keys (id) WHERE enabled = FALSE;
CREATE INDEX keys_expiring ON keys (expires_at) WHERE revoked_at IS NULL AND expires_at IS NOT NULL;

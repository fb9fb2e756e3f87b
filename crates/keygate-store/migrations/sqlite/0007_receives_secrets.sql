-- Endpoints that may receive new plaintext keys (sealed at rest) from the rotation policy.
ALTER TABLE webhook_endpoints ADD COLUMN receives_secrets INTEGER NOT NULL DEFAULT 0;

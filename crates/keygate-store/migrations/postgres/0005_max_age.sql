-- A key's own maximum age (milliseconds), overriding the deployment's policy.
ALTER TABLE keys ADD COLUMN max_age_ms BIGINT;

-- Rotation links a key to its successor; its grace period runs from rotated_at to expires_at.
ALTER TABLE keys ADD COLUMN rotated_from TEXT;
ALTER TABLE keys ADD COLUMN rotated_to TEXT;
ALTER TABLE keys ADD COLUMN rotated_at INTEGER;

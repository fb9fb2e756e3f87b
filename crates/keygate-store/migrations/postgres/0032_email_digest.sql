-- An owner may take its notices as one email a day per address; such rows wait for the next
-- 00:00 UTC and are sent together (digest = 1).
ALTER TABLE owners ADD COLUMN digest BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE email_deliveries ADD COLUMN digest BOOLEAN NOT NULL DEFAULT FALSE;

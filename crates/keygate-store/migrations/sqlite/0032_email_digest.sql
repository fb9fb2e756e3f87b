-- An owner may take its notices as one email a day per address; such rows wait for the next
-- 00:00 UTC and are sent together (digest = 1).
ALTER TABLE owners ADD COLUMN digest INTEGER NOT NULL DEFAULT 0;
ALTER TABLE email_deliveries ADD COLUMN digest INTEGER NOT NULL DEFAULT 0;

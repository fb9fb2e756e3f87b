-- Usage controls on a key: rate limits (JSON array), an IP allowlist (JSON array of networks,
-- NULL: anywhere), and credits: the balance (spent by a conditional decrement), its refill
-- (JSON), when it was last set and when the next refill is due (for the scheduler). After a
-- rotation the successor holds the credits and the old key names it in quota_holder.
ALTER TABLE keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keys ADD COLUMN allowed_ips TEXT;
ALTER TABLE keys ADD COLUMN quota_remaining INTEGER;
ALTER TABLE keys ADD COLUMN quota_refill TEXT;
ALTER TABLE keys ADD COLUMN quota_refilled_at INTEGER;
ALTER TABLE keys ADD COLUMN quota_holder TEXT;
ALTER TABLE keys ADD COLUMN quota_refill_due_at INTEGER;
CREATE INDEX keys_quota_holder ON keys (quota_holder) WHERE quota_holder IS NOT NULL;
CREATE INDEX keys_quota_refill_due ON keys (quota_refill_due_at) WHERE quota_refill_due_at IS NOT NULL;

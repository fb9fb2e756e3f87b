-- Keys imported from another system (`keygate import`). `import_origin` names where a key came
-- from (e.g. `drf-api-key:<table>:<prefix>`, `jsonl:<id>`): unique, so importing twice imports
-- nothing twice. A key whose plaintext keygate never saw (drf-api-key) keeps its system's
-- prefix (`legacy_prefix`, indexed: a presented key is found by it) and stored hash
-- (`legacy_hash`) until its first successful check; its `hash` is meanwhile a random
-- placeholder no key hashes to, and the check replaces it with the key's SHA-256 (and clears
-- `legacy_hash`): the lazy rehash.
ALTER TABLE keys ADD COLUMN import_origin TEXT;
ALTER TABLE keys ADD COLUMN legacy_prefix TEXT;
ALTER TABLE keys ADD COLUMN legacy_hash TEXT;
CREATE UNIQUE INDEX keys_import_origin ON keys (import_origin) WHERE import_origin IS NOT NULL;
CREATE INDEX keys_legacy_prefix ON keys (legacy_prefix) WHERE legacy_prefix IS NOT NULL;

-- Switchyard on PostgreSQL, schema version 5: what a what-if replay needs of each
-- request, the same columns as the SQLite schema's version 8 (migrations/sqlite/0008).
-- Never edit once released: add 0006_*.sql.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS needs TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS max_tokens BIGINT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS allowed_regions TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS required_tags TEXT;

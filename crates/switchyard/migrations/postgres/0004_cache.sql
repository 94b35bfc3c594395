-- Switchyard on PostgreSQL, schema version 4: the response cache, the same column as
-- the SQLite schema's version 7 (migrations/sqlite/0007). Never edit once released:
-- add 0005_*.sql.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS cache_hit BIGINT NOT NULL DEFAULT 0;

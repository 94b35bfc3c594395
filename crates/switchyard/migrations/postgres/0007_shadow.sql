-- Switchyard on PostgreSQL, schema version 7: shadow evaluation, the same columns as
-- the SQLite schema's version 10 (migrations/sqlite/0010). Never edit once released:
-- add 0008_*.sql.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS kind TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS shadow_of TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS agreement DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS requests_shadow ON requests (logical_model, started_at_ms) WHERE kind = 'shadow';

-- Switchyard on PostgreSQL, schema version 3: channel profiles, the same columns as
-- the SQLite schema's version 6 (migrations/sqlite/0006). Never edit once released:
-- add 0004_*.sql.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS channel TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS turn_start BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS requests_channel_time ON requests (channel, started_at_ms)
    WHERE channel IS NOT NULL;

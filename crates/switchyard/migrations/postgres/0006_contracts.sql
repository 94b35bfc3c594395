-- Switchyard on PostgreSQL, schema version 6: list-price cost beside the effective
-- (contracted) cost, as the SQLite schema's version 9 (migrations/sqlite/0009).
-- Never edit once released: add 0007_*.sql.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS list_cost_nano_usd BIGINT;
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS list_cost_nano_usd BIGINT;
CREATE INDEX IF NOT EXISTS attempts_deployment_started ON attempts (deployment, started_at_ms);

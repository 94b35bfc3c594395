-- Switchyard on PostgreSQL, schema version 8: the index dropped by the SQLite schema's
-- version 11 (migrations/sqlite/0011), for the same reason: every query that filters on
-- `logical_model` also bounds or orders by `started_at_ms`, or is a shadow report served
-- by `requests_shadow`. Never edit once released: add 0009_*.sql.
DROP INDEX IF EXISTS requests_logical_model;

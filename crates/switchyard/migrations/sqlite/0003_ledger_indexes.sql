-- requests_key_started (key_id, started_at_ms) serves every lookup requests_key_id did;
-- keeping both cost an extra B-tree insert per request row.
DROP INDEX IF EXISTS requests_key_id;

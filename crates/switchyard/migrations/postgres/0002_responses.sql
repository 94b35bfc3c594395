-- Switchyard on PostgreSQL, schema version 2: stored responses of the Responses API,
-- the same table as the SQLite schema's version 5 (migrations/sqlite/0005). Never
-- edit once released: add 0003_*.sql.
CREATE TABLE IF NOT EXISTS responses (
    id              TEXT   PRIMARY KEY NOT NULL,
    key_id          TEXT   NOT NULL,
    team            TEXT,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    items           TEXT   NOT NULL,
    response        TEXT   NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires_at_ms);

-- Switchyard on PostgreSQL, schema version 1: the ledger and the key store in one
-- database, with the tables, columns and meanings of the SQLite schema as of its
-- version 4 (migrations/sqlite/0001..0004), so that the same queries serve both.
--
-- Applied by sqlx's migrator (table _sqlx_migrations) under an advisory lock, so
-- replicas starting together migrate once. Never edit once released: add 0002_*.sql.
--
-- Every integer is BIGINT, like SQLite's 64-bit INTEGER: money in nano-USD (1e-9
-- USD), instants in unix milliseconds (UTC), durations in microseconds, and the
-- booleans as 0/1.

CREATE TABLE IF NOT EXISTS requests (
    request_id          TEXT   PRIMARY KEY NOT NULL,
    started_at_ms       BIGINT NOT NULL,
    key_id              TEXT,
    endpoint            TEXT   NOT NULL,
    logical_model       TEXT,
    deployment          TEXT,
    provider            TEXT,
    upstream_model      TEXT,
    status              BIGINT NOT NULL,
    error_code          TEXT,
    streamed            BIGINT NOT NULL,
    client_disconnected BIGINT NOT NULL,
    prompt_tokens       BIGINT NOT NULL,
    completion_tokens   BIGINT NOT NULL,
    cached_tokens       BIGINT NOT NULL,
    usage_estimated     BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    latency_us          BIGINT NOT NULL,
    ttft_us             BIGINT,
    attempt_count       BIGINT NOT NULL,
    team_id             TEXT,
    policy_decision     TEXT,
    redactions          TEXT,
    reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
    key_name            TEXT
);

-- Time-range filters (`switchyard spend --since`, retention), spend by model, by key
-- and by team.
CREATE INDEX IF NOT EXISTS requests_started_at_ms ON requests (started_at_ms);
CREATE INDEX IF NOT EXISTS requests_logical_model ON requests (logical_model);
CREATE INDEX IF NOT EXISTS requests_team_id ON requests (team_id, started_at_ms);
CREATE INDEX IF NOT EXISTS requests_key_started ON requests (key_id, started_at_ms);

-- One row per upstream call; the primary key doubles as the lookup by request (and
-- serves the cascade when retention deletes a request).
CREATE TABLE IF NOT EXISTS attempts (
    request_id         TEXT   NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    attempt            BIGINT NOT NULL,
    started_at_ms      BIGINT NOT NULL,
    deployment         TEXT   NOT NULL,
    provider           TEXT   NOT NULL,
    upstream_model     TEXT   NOT NULL,
    status             BIGINT,
    error_class        TEXT,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    usage_estimated    BIGINT NOT NULL,
    cost_nano_usd      BIGINT NOT NULL,
    latency_us         BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, attempt)
);

-- Prompt and response content, only for requests whose policy allows logging it.
CREATE TABLE IF NOT EXISTS request_content (
    request_id TEXT PRIMARY KEY NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    prompt     TEXT,
    response   TEXT
);

-- Teams. Policies and budgets are JSON documents (see config/policy.rs), kept as
-- text like on SQLite so that both engines read them back byte for byte.
CREATE TABLE IF NOT EXISTS teams (
    name          TEXT   PRIMARY KEY NOT NULL,
    policy        TEXT   NOT NULL DEFAULT '{}',
    budgets       TEXT   NOT NULL DEFAULT '[]',
    created_at_ms BIGINT NOT NULL
);

-- Virtual keys: only the SHA-256 of the secret is kept. Names are unique for ever.
CREATE TABLE IF NOT EXISTS virtual_keys (
    id            TEXT   PRIMARY KEY NOT NULL,
    name          TEXT   NOT NULL UNIQUE,
    team          TEXT   REFERENCES teams (name),
    key_hash      BYTEA  NOT NULL UNIQUE,
    prefix        TEXT   NOT NULL,
    policy        TEXT   NOT NULL DEFAULT '{}',
    budgets       TEXT   NOT NULL DEFAULT '[]',
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
CREATE INDEX IF NOT EXISTS virtual_keys_team ON virtual_keys (team);

-- Bumped by every change to teams or keys, in the transaction that also sends the
-- `switchyard_keys` notification: a replica that missed notifications (its listener
-- reconnected) compares it to what it loaded.
CREATE TABLE IF NOT EXISTS governance_version (
    id      BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO governance_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Who changed what through the admin API or the CLI.
CREATE TABLE IF NOT EXISTS admin_events (
    at_ms  BIGINT NOT NULL,
    actor  TEXT   NOT NULL,
    action TEXT   NOT NULL,
    target TEXT   NOT NULL,
    detail TEXT
);

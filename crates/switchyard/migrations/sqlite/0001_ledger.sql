-- Switchyard usage ledger, schema version 1.
--
-- Applied by crates/switchyard/src/ledger/mod.rs inside one BEGIN IMMEDIATE
-- transaction, after which PRAGMA user_version is set to 1. Never edit this
-- file once released: add 0002_*.sql instead.
--
-- Money is integer nano-USD (1e-9 USD); times are UTC (unix milliseconds for
-- wall-clock instants, microseconds for durations). Booleans are 0/1.

-- One row per client request that reached the gateway, including requests
-- refused before any upstream call (those have attempt_count = 0).
CREATE TABLE IF NOT EXISTS requests (
    request_id          TEXT    PRIMARY KEY NOT NULL,
    started_at_ms       INTEGER NOT NULL,
    key_id              TEXT,
    endpoint            TEXT    NOT NULL,
    logical_model       TEXT,
    deployment          TEXT,
    provider            TEXT,
    upstream_model      TEXT,
    status              INTEGER NOT NULL,
    error_code          TEXT,
    streamed            INTEGER NOT NULL,
    client_disconnected INTEGER NOT NULL,
    prompt_tokens       INTEGER NOT NULL,
    completion_tokens   INTEGER NOT NULL,
    cached_tokens       INTEGER NOT NULL,
    usage_estimated     INTEGER NOT NULL,
    cost_nano_usd       INTEGER NOT NULL,
    latency_us          INTEGER NOT NULL,
    ttft_us             INTEGER,
    attempt_count       INTEGER NOT NULL
);

-- Time-range filters (`switchyard spend --since`, retention pruning).
CREATE INDEX IF NOT EXISTS requests_started_at_ms ON requests (started_at_ms);
-- Spend grouped by model / by key.
CREATE INDEX IF NOT EXISTS requests_logical_model ON requests (logical_model);
CREATE INDEX IF NOT EXISTS requests_key_id ON requests (key_id);

-- One row per upstream call made for a request (retries and fallbacks each
-- add a row). The primary key doubles as the lookup index by request.
CREATE TABLE IF NOT EXISTS attempts (
    request_id        TEXT    NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    deployment        TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    upstream_model    TEXT    NOT NULL,
    status            INTEGER,
    error_class       TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    usage_estimated   INTEGER NOT NULL,
    cost_nano_usd     INTEGER NOT NULL,
    latency_us        INTEGER NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

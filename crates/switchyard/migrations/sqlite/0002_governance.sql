-- Switchyard schema version 2: governance (teams, virtual keys) and the audit columns
-- of the ledger.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 2. Never edit once released: add 0003_*.sql instead.

-- Audit: who (team), what the policy decided, what the PII guardrail found, and the
-- finer token counts some providers bill separately.
ALTER TABLE requests ADD COLUMN team_id TEXT;
-- `allowed`, or `denied:<reason>` (model_not_allowed, max_tokens, pii_blocked,
-- rate_limited:<window>, budget:<scope>:<name>:<period>).
ALTER TABLE requests ADD COLUMN policy_decision TEXT;
-- What the PII guardrail found and did, e.g. `redact:EMAIL=2,PHONE=1`; types and counts
-- only, never the values.
ALTER TABLE requests ADD COLUMN redactions TEXT;
ALTER TABLE requests ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS requests_team_id ON requests (team_id, started_at_ms);
CREATE INDEX IF NOT EXISTS requests_key_started ON requests (key_id, started_at_ms);

-- Prompt and response content, only for requests whose policy allows logging it (and
-- only when governance.log_content is on). Kept apart so the requests table stays lean.
CREATE TABLE IF NOT EXISTS request_content (
    request_id TEXT PRIMARY KEY NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
    prompt     TEXT,
    response   TEXT
);

-- Teams. Policies and budgets are JSON documents (see governance/policy.rs).
CREATE TABLE IF NOT EXISTS teams (
    name          TEXT    PRIMARY KEY NOT NULL,
    policy        TEXT    NOT NULL DEFAULT '{}',
    budgets       TEXT    NOT NULL DEFAULT '[]',
    created_at_ms INTEGER NOT NULL
);

-- Virtual keys: only the SHA-256 of the secret is kept. Names are unique for ever
-- (revoked keys keep theirs), since the ledger records spend by key name.
CREATE TABLE IF NOT EXISTS virtual_keys (
    id            TEXT    PRIMARY KEY NOT NULL,
    name          TEXT    NOT NULL UNIQUE,
    team          TEXT    REFERENCES teams (name),
    key_hash      BLOB    NOT NULL UNIQUE,
    prefix        TEXT    NOT NULL,
    policy        TEXT    NOT NULL DEFAULT '{}',
    budgets       TEXT    NOT NULL DEFAULT '[]',
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS virtual_keys_team ON virtual_keys (team);

-- Bumped by every change to teams or keys; running gateways poll it to reload.
CREATE TABLE IF NOT EXISTS governance_version (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO governance_version (id, version) VALUES (1, 0);

-- Who changed what through the admin API or the CLI.
CREATE TABLE IF NOT EXISTS admin_events (
    at_ms  INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT
);

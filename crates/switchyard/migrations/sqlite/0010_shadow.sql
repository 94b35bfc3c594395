-- Switchyard schema version 10: shadow evaluation.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 10. Never edit once released: add 0011_*.sql instead.
--
-- `kind`: NULL for a client's request, 'shadow' for a model's request mirrored to its
-- shadow candidate (`[models.NAME.shadow]`); shadow rows count in no budget.
-- `shadow_of`: the client's request a shadow row mirrors.
-- `agreement`: how far the candidate's answer agreed with the client's, 0 to 1 (1 or 0
-- for tool calls and JSON; token-set overlap for text); NULL when not compared.
ALTER TABLE requests ADD COLUMN kind TEXT;
ALTER TABLE requests ADD COLUMN shadow_of TEXT;
ALTER TABLE requests ADD COLUMN agreement REAL;
CREATE INDEX IF NOT EXISTS requests_shadow ON requests (logical_model, started_at_ms) WHERE kind = 'shadow';

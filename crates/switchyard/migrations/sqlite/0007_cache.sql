-- Switchyard schema version 7: the response cache.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 7. Never edit once released: add 0008_*.sql instead.
--
-- `cache_hit` is 1 when the gateway answered from its response cache: no upstream
-- call (no attempts rows), no deployment, usage and cost 0.
ALTER TABLE requests ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;

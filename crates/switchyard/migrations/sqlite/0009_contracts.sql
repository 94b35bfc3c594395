-- Switchyard schema version 9: list-price cost beside the effective (contracted) cost.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 9. Never edit once released: add 0010_*.sql instead.
--
-- `cost_nano_usd` stays what was paid: the contracted price where a contract
-- (`[contracts.NAME]`) sets one, else the list price. `list_cost_nano_usd` is the
-- same usage at the deployment's list price (NULL on rows written before version 9,
-- when the two were the same).
ALTER TABLE requests ADD COLUMN list_cost_nano_usd INTEGER;
ALTER TABLE attempts ADD COLUMN list_cost_nano_usd INTEGER;
-- Contract burn sums attempts by deployment and time.
CREATE INDEX IF NOT EXISTS attempts_deployment_started ON attempts (deployment, started_at_ms);

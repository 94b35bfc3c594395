-- Switchyard schema version 8: what a what-if replay needs of each request, without
-- its content.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 8. Never edit once released: add 0009_*.sql instead.
--
-- `needs`: the capabilities routing required, comma-separated from `tools`, `vision`,
-- `json_schema` ('' for none; NULL when the request never reached routing).
-- `max_tokens`: the output bound the request was routed with (NULL: none).
-- `allowed_regions` / `required_tags`: the caller's data policy as JSON arrays
-- (`allowed_regions` NULL: any region).
ALTER TABLE requests ADD COLUMN needs TEXT;
ALTER TABLE requests ADD COLUMN max_tokens INTEGER;
ALTER TABLE requests ADD COLUMN allowed_regions TEXT;
ALTER TABLE requests ADD COLUMN required_tags TEXT;

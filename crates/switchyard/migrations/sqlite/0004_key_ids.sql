-- Switchyard schema version 4: requests are attributed to a key's stable id, and keep
-- its name only for display.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 4. Never edit once released: add 0005_*.sql instead.
--
-- Until now `key_id` held the key's *name*, so a key of the config file and a virtual
-- key of the same name shared their spend. From now on `key_id` is the id: `vk_…` for
-- virtual keys, `cfg:<name>` for keys of the config file; `key_name` is what reports
-- show.
ALTER TABLE requests ADD COLUMN key_name TEXT;
UPDATE requests SET key_name = key_id WHERE key_id IS NOT NULL;
-- Earlier rows name their key. A name found among this file's virtual keys (the key
-- store lives in the ledger's file by default) becomes that key's id; any other name
-- was a key of the config file (or of a key store kept in another file, which the
-- config file cannot then reuse: the gateway refuses to start with such a collision).
UPDATE requests
SET key_id = COALESCE(
    (SELECT v.id FROM virtual_keys v WHERE v.name = requests.key_id),
    'cfg:' || key_id
)
WHERE key_id IS NOT NULL;

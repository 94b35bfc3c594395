-- Switchyard schema version 6: channel profiles (`[channels.NAME]`).
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 6. Never edit once released: add 0007_*.sql instead.
--
-- `channel` is the profile a request ran under (NULL: none). `turn_start` is 1 when
-- the request began a conversation turn (its last message was the user's; tool
-- results continue a turn): the channel report's cost per turn divides by these.
ALTER TABLE requests ADD COLUMN channel TEXT;
ALTER TABLE requests ADD COLUMN turn_start INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS requests_channel_time ON requests (channel, started_at_ms)
    WHERE channel IS NOT NULL;

-- Switchyard schema version 5: stored responses of the Responses API
-- (`POST /v1/responses` with `store`), for `previous_response_id` and
-- `GET`/`DELETE /v1/responses/{id}`.
--
-- Applied like 0001, inside one BEGIN IMMEDIATE transaction, after which
-- PRAGMA user_version is set to 5. Never edit once released: add 0006_*.sql instead.
--
-- `items` is the JSON array of the conversation's input items up to this response
-- (a previous response's items and output, then this request's input); `response`
-- is the response object as the client got it. Only the key that created a row
-- (`key_id`), or a key of its team (`team`), may read or delete it; a row past
-- `expires_at_ms` is as good as gone and is deleted when new rows are written.
CREATE TABLE IF NOT EXISTS responses (
    id              TEXT    PRIMARY KEY NOT NULL,
    key_id          TEXT    NOT NULL,
    team            TEXT,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    items           TEXT    NOT NULL,
    response        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires_at_ms);

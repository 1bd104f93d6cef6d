-- The HTTP send API (issue 12, item 1; src/api).
--
-- API keys: only a SHA-256 of each key's 256-bit random secret is kept
-- (a random key needs no slow hash: there is nothing to guess from). A
-- revoked key keeps its row, for the audit trail, and gives up its name.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,        -- JSON array: send, read, admin
    allowed_from TEXT NOT NULL,  -- JSON array of addresses and @domains
    accounts TEXT NOT NULL,      -- JSON array of account names
    rate_count INTEGER,          -- at most rate_count requests ...
    rate_period INTEGER,         -- ... per rate_period seconds; NULL: no limit
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;

-- Tags of messages sent through the API, for `GET /v1/messages?tag=`:
-- one row per (key, tag, message), listed newest first by the primary key,
-- so a page is a range search whatever the number of tagged messages.
-- Written before the message is queued (under its chosen id), so a 202
-- never names a message whose tags are lost; a row whose message never
-- arrived or was removed is dropped by the join that lists them.
CREATE TABLE api_message_tags (
    key_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    tagged_at INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (key_id, tag, tagged_at, message_id)
) WITHOUT ROWID;
CREATE INDEX api_message_tags_by_message ON api_message_tags (message_id);

-- A key that may read only its own messages lists them by submitter.
CREATE INDEX messages_listing_by_submitter ON messages (submitted_by, created_at, id);

-- Idempotency-Key: the first request's answer, per API key. The row is
-- inserted before any message is queued (the primary key makes a
-- concurrent duplicate find it), with the ids its messages will have, so
-- that after a crash a retry can tell what was queued; `status` and
-- `response` are filled in once the answer is known.
CREATE TABLE api_idempotency (
    key_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    reserved_ids TEXT NOT NULL,  -- JSON array of message ids
    status INTEGER,
    response TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX api_idempotency_expiry ON api_idempotency (expires_at);

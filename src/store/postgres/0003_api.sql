-- The HTTP send API (issue 12, item 1), as SQLite's migration 0011: API
-- keys (only a SHA-256 of each secret), message tags, idempotency keys.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    allowed_from TEXT NOT NULL,
    accounts TEXT NOT NULL,
    rate_count BIGINT,
    rate_period BIGINT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE api_message_tags (
    key_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    tagged_at BIGINT NOT NULL,
    message_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key_id, tag, tagged_at, message_id)
);
CREATE INDEX api_message_tags_by_message ON api_message_tags (message_id);

CREATE INDEX messages_listing_by_submitter ON messages (submitted_by, created_at, id);

CREATE TABLE api_idempotency (
    key_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    reserved_ids TEXT NOT NULL,
    status BIGINT,
    response TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX api_idempotency_expiry ON api_idempotency (expires_at);

-- The PostgreSQL schema, as SQLite's migrations 0001-0010 left theirs: the
-- same tables, columns and partial indexes, in PostgreSQL's types (BIGINT
-- for SQLite's INTEGER times and counts, BYTEA for BLOB, BOOLEAN for the
-- 0/1 flag). This backend numbers its migrations on its own; SQLite's
-- history (bodies moved out of `messages`, an index replaced) has no
-- PostgreSQL past to migrate from.

CREATE TABLE account_tokens (
    account TEXT PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT,
    refresh_token BYTEA,
    access_token BYTEA,
    access_expires_at BIGINT,
    access_refresh_at BIGINT,
    granted_scope TEXT,
    consented_at BIGINT,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    credential_epoch BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    account TEXT,
    detail TEXT NOT NULL,
    message_id TEXT COLLATE "C"
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_by_message ON events (message_id, id) WHERE message_id IS NOT NULL;

-- Ids compare byte by byte ("C"), as in SQLite: the listing cursor
-- (created_at, id) must order the same whatever the database's collation.
CREATE TABLE messages (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    account TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    size BIGINT NOT NULL,
    submitted_by TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    -- The instance (the owner up to its first '/') whose heartbeat keeps a claim.
    lease_instance TEXT,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    -- False once retention removed the body of a message in a final state.
    body_kept BOOLEAN NOT NULL DEFAULT TRUE
);

-- Bodies apart from the rows every claim, outcome and release rewrites
-- (PostgreSQL writes a new row version for each update; a body there
-- would be copied each time unless TOASTed, and scans would walk it).
CREATE TABLE message_bodies (
    message_id TEXT COLLATE "C" PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    body BYTEA NOT NULL
);

CREATE TABLE recipients (
    message_id TEXT COLLATE "C" NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    reply TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, idx)
);

-- The claim's arms and next_due (queue.rs), expiry by age, retention:
-- partial indexes that hold only the rows they serve, as on SQLite.
CREATE INDEX messages_waiting ON messages (next_attempt_at) WHERE state IN ('queued', 'deferred');
CREATE INDEX messages_lease_expiry ON messages (lease_expires_at) WHERE state = 'in_flight';
CREATE INDEX messages_in_flight_by_instance ON messages (lease_instance) WHERE state = 'in_flight';
CREATE INDEX messages_waiting_since ON messages (created_at) WHERE state IN ('queued', 'deferred');
CREATE INDEX messages_final_with_body ON messages (updated_at) WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept;
CREATE INDEX messages_final ON messages (updated_at) WHERE state IN ('delivered', 'bounced', 'expired');
-- `queue list` and the bulk operations page newest first by (created_at, id).
CREATE INDEX messages_listing ON messages (created_at, id);
CREATE INDEX messages_listing_by_state ON messages (state, created_at, id);
CREATE INDEX messages_listing_by_account ON messages (account, created_at, id);
CREATE INDEX messages_listing_by_account_state ON messages (account, state, created_at, id);

CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    allowed_from TEXT NOT NULL,
    account TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE control (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE account_secrets (
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account, kind)
);

-- One refresh per account across instances: the holder asks the token
-- endpoint, commits, deletes its row. A crashed holder's row expires.
CREATE TABLE refresh_leases (
    account TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    holder_pid BIGINT NOT NULL,
    holder_locality TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Running delivery engines and their heartbeat: a claim stays valid while
-- its instance's heartbeat does (and no longer than the message's lease).
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    pid BIGINT NOT NULL,
    locality TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_until BIGINT NOT NULL
);

-- The audit log's anchor. One row; it only moves forward.
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

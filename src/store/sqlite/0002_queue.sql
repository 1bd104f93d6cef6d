CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    account TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    submitted_by TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);

CREATE INDEX messages_due ON messages (state, next_attempt_at);

CREATE TABLE recipients (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    reply TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, idx)
);

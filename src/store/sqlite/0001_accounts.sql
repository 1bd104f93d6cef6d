CREATE TABLE account_tokens (
    account TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT,
    refresh_token BLOB,
    access_token BLOB,
    access_expires_at INTEGER,
    access_refresh_at INTEGER,
    granted_scope TEXT,
    consented_at INTEGER,
    last_success_at INTEGER,
    last_failure_at INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    account TEXT,
    detail TEXT NOT NULL
);

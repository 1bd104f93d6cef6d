CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    allowed_from TEXT NOT NULL,
    account TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

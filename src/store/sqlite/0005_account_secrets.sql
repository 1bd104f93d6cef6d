CREATE TABLE account_secrets (
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    sealed BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (account, kind)
);

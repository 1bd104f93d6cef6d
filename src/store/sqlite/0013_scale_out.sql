-- Issue 13, item 4: each account's sending quotas, counted for every
-- process on this file (`delivery::limits`, `Store::admit_delivery`): the
-- level of each token bucket as of `updated_at` (Unix seconds with a
-- fraction; NULL: full), and the provider's back-off in force.
CREATE TABLE account_quotas (
    account TEXT PRIMARY KEY NOT NULL,
    updated_at REAL NOT NULL,
    minute_messages REAL,
    day_messages REAL,
    day_recipients REAL,
    backed_off_until REAL
);

-- Each audit log's anchor (`crate::audit`): every instance writes its own
-- chained log, named by its host and path (`audit::chain_id`), and keeps
-- its own anchor here. The one anchor of before is kept under the chain ''
-- until the first log to find its line adopts it (`Store::advance_audit_anchor`).
CREATE TABLE audit_anchors (
    chain TEXT PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO audit_anchors (chain, seq, hash, updated_at)
    SELECT '', seq, hash, updated_at FROM audit_anchor;
DROP TABLE audit_anchor;

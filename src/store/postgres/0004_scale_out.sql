-- Issue 13, item 4: each account's sending quotas, counted for every
-- instance on this schema (`delivery::limits`, `Store::admit_delivery`):
-- the level of each token bucket as of `updated_at` (Unix seconds with a
-- fraction; NULL: full), and the provider's back-off in force. One small
-- row per account, locked for the length of one charge.
CREATE TABLE account_quotas (
    account TEXT PRIMARY KEY,
    updated_at DOUBLE PRECISION NOT NULL,
    minute_messages DOUBLE PRECISION,
    day_messages DOUBLE PRECISION,
    day_recipients DOUBLE PRECISION,
    backed_off_until DOUBLE PRECISION
);

-- Each audit log's anchor (`crate::audit`): every instance writes its own
-- chained log, named by its host and path (`audit::chain_id`), and keeps
-- its own anchor here. The one anchor of before is kept under the chain ''
-- until the first log to find its line adopts it (`Store::advance_audit_anchor`).
CREATE TABLE audit_anchors (
    chain TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO audit_anchors (chain, seq, hash, updated_at)
    SELECT '', seq, hash, updated_at FROM audit_anchor;
DROP TABLE audit_anchor;

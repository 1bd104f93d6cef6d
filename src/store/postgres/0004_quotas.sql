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

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

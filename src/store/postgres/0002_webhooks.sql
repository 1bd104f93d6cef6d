-- Webhook cursors and notification marks, as SQLite's migration 0012
-- (issue 12, items 2 and 3): where each endpoint is in the event log and
-- which relay process delivers to it; when each open condition was last
-- told to the operator.
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY NOT NULL,
    cursor BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error TEXT,
    delivered BIGINT NOT NULL DEFAULT 0,
    last_delivered_at BIGINT,
    holder_id TEXT,
    holder_pid BIGINT,
    holder_locality TEXT,
    held_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE notify_marks (
    condition TEXT PRIMARY KEY NOT NULL,
    first_at BIGINT NOT NULL,
    last_notified_at BIGINT NOT NULL,
    times BIGINT NOT NULL DEFAULT 1
);

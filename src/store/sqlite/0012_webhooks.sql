-- Issue 12, items 2 and 3: where each webhook endpoint is in the event log,
-- and when each condition was last notified.
--
-- `cursor` is the id of the last event the endpoint received (or passed
-- over: not its kind, not its API key); the dispatcher POSTs the events
-- after it, in id order, and moves it only after a 2xx. `attempts`,
-- `next_attempt_at` and `last_error` describe the failures at the event
-- after the cursor. `holder_*` and `held_until`: the one relay process that
-- delivers to the endpoint, so that two relays on one store do not both
-- send every event.
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY NOT NULL,
    cursor INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    last_delivered_at INTEGER,
    holder_id TEXT,
    holder_pid INTEGER,
    holder_locality TEXT,
    held_until INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A condition (an account that needs consent, the lockdown) while it lasts:
-- when the operator was last told, so that a restart does not tell again
-- before `[notify] repeat_every` has passed. The row goes when the
-- condition ends.
CREATE TABLE notify_marks (
    condition TEXT PRIMARY KEY NOT NULL,
    first_at INTEGER NOT NULL,
    last_notified_at INTEGER NOT NULL,
    times INTEGER NOT NULL DEFAULT 1
);

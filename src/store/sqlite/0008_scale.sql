-- Issue 10: claims that cost the same at any backlog, and retention.

-- Bodies apart from the rows the delivery side updates: every claim,
-- outcome and release rewrites a message's whole row (SQLite rewrites a
-- record with its overflow pages), and a 5 KB body in that row made each
-- of those writes cost pages of body, and every scan of the table walk
-- past them.
CREATE TABLE message_bodies (
    message_id TEXT PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    body BLOB NOT NULL
);
INSERT INTO message_bodies (message_id, body) SELECT id, body FROM messages;
ALTER TABLE messages DROP COLUMN body;

-- 1 while the body is kept; retention sets 0 when it removes the body of a
-- message in a final state (the metadata stays until `keep_events`).
ALTER TABLE messages ADD COLUMN body_kept INTEGER NOT NULL DEFAULT 1;

-- The claim's and next_due's paths, each ordered by what they take first,
-- so neither sorts nor walks past rows of other states. Partial: the
-- indexes hold only the rows they serve (a delivered message leaves them).
-- They replace `messages_due` (state, next_attempt_at): with it there the
-- planner took it for the due arm and sorted its two state ranges in a
-- temporary B-tree, and every state change paid for one more index.
DROP INDEX messages_due;
CREATE INDEX messages_waiting ON messages (next_attempt_at) WHERE state IN ('queued', 'deferred');
CREATE INDEX messages_lease_expiry ON messages (lease_expires_at) WHERE state = 'in_flight';
-- Expiry by age (`Store::expire`) of what still waits.
CREATE INDEX messages_waiting_since ON messages (created_at) WHERE state IN ('queued', 'deferred');
-- Retention: final messages, oldest first; the first only those whose body is still there.
CREATE INDEX messages_final_with_body ON messages (updated_at) WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept = 1;
CREATE INDEX messages_final ON messages (updated_at) WHERE state IN ('delivered', 'bounced', 'expired');
CREATE INDEX events_at ON events (at);

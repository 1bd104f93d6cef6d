-- Issue 12: a message's history (`GET /v1/messages/{id}`, the console) and
-- webhooks read events by the message they are about. Account and relay
-- events have none, and stay out of the index.
ALTER TABLE events ADD COLUMN message_id TEXT;
CREATE INDEX events_by_message ON events (message_id, id) WHERE message_id IS NOT NULL;

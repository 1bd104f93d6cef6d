-- Moves whenever an account's credentials change in a way every running
-- process must act on at once (revocation, lockdown, unlock, a new consent,
-- a new key); running relays poll it. A refresh does not move it.
ALTER TABLE account_tokens ADD COLUMN credential_epoch INTEGER NOT NULL DEFAULT 0;

-- One refresh per account across processes: the holder asks the token
-- endpoint, commits, deletes its row. A crashed holder's row expires.
CREATE TABLE refresh_leases (
    account TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    holder_pid INTEGER NOT NULL,
    holder_locality TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Running delivery engines and their heartbeat: a claim stays valid while
-- its instance's heartbeat does (and no longer than the message's lease).
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    pid INTEGER NOT NULL,
    locality TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_until INTEGER NOT NULL
);

-- The instance (the owner up to its first '/') whose heartbeat keeps a claim.
ALTER TABLE messages ADD COLUMN lease_instance TEXT;
CREATE INDEX messages_in_flight_by_instance ON messages (lease_instance) WHERE state = 'in_flight';

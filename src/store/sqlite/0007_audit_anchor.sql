-- The audit log's anchor: the sequence number and line hash of the newest
-- audit line known to be on disk, kept apart from the log so that lines
-- deleted from its end are evident. One row; it only moves forward.
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

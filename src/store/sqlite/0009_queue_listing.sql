-- `queue list` and the bulk operations (`queue retry|delete|hold|release`)
-- page through messages newest first by (created_at, id): a key that is
-- unique and that new mail never lands behind (ids are random), so a cursor
-- stays valid while mail arrives. One index per filter the CLI offers, so
-- that no filter makes SQLite scan the table or sort in a temporary B-tree
-- (admin.rs's query-plan tests check each one). The two that lead with
-- `state` are rewritten on every state change; the others only on insert
-- and delete.
CREATE INDEX messages_listing ON messages (created_at, id);
CREATE INDEX messages_listing_by_state ON messages (state, created_at, id);
CREATE INDEX messages_listing_by_account ON messages (account, created_at, id);
CREATE INDEX messages_listing_by_account_state ON messages (account, state, created_at, id);

#!/usr/bin/env bash
# The query plan of the claim before and after issue 10, from the schema's
# own migration files (sqlite3 CLI): before = migrations 0001-0007 and the
# claim with its OR; after = 0001-0008 and the claim of three indexed arms
# (src/store/sqlite/queue.rs claim_sql; the plan tests there hold it).
# Usage: bench/claim-plans.sh   (prints both plans)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { echo "SKIPPED: sqlite3 is missing" >&2; exit 0; }
MIGRATIONS=src/store/sqlite
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

BEFORE="UPDATE messages SET state = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, updated_at = ?3, lease_instance = ?5
 WHERE id IN (SELECT id FROM messages
     WHERE (state IN ('queued', 'deferred') AND next_attempt_at <= ?3)
        OR (state = 'in_flight' AND (lease_expires_at < ?3
            OR (lease_instance IS NOT NULL AND lease_instance NOT IN
                (SELECT id FROM instances WHERE heartbeat_until >= ?3))))
     ORDER BY next_attempt_at LIMIT ?4)"
AFTER="UPDATE messages SET state = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, updated_at = ?3, lease_instance = ?5
 WHERE id IN (
     SELECT id FROM (SELECT id FROM messages
         WHERE state = 'in_flight' AND lease_expires_at < ?3 LIMIT ?4)
     UNION ALL
     SELECT id FROM (SELECT id FROM messages
         WHERE state = 'in_flight' AND lease_instance IS NOT NULL AND lease_instance NOT IN
             (SELECT id FROM instances WHERE heartbeat_until >= ?3) LIMIT ?4)
     UNION ALL
     SELECT id FROM (SELECT id FROM messages
         WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?3
         ORDER BY next_attempt_at LIMIT ?4)
     LIMIT ?4)"

plan() { # label last-migration sql
    local db="$WORK/$1.db"
    for file in "$MIGRATIONS"/000[1-"$2"]_*.sql; do sqlite3 "$db" <"$file"; done
    echo "== claim $1 (migrations 0001-000$2)"
    sqlite3 "$db" "EXPLAIN QUERY PLAN $3"
}
plan before 7 "$BEFORE"
plan after 8 "$AFTER"

#!/usr/bin/env bash
# The scale run (issue 10), on loopback only, in one invocation so that the
# ratios compare runs on the same machine at the same moment:
#
#  A. empty queue: M messages through a fresh relay that delivers as they
#     come (accepted/s, p99, delivered/s);
#  B. fill: a fresh store, delivery paused (`oxirelay lockdown`), MESSAGES
#     submitted in ten chunks; accepted/s, p50/p99 and the store's size
#     after each chunk;
#  C. drain: `oxirelay unlock`; delivered/s sampled every SAMPLE seconds
#     until the backlog is gone (bounded by DRAIN_LIMIT seconds);
#  D. retention: the relay restarted with keep_delivered = keep_events =
#     "0s", so its first retention pass removes everything final, while a
#     chunk of new submissions runs beside it; the store's size before and
#     after (pages, and the file once the relay has stopped);
#  E. the claim's query plan before and after (bench/claim-plans.sh).
#
# The load is the project's load generator (`oxirelay-loadgen`, sessions
# reused, no AUTH) into an allow-listed listener mapped by a [[network]]
# (as bench/peers.sh C/D); the upstream is the sandbox SMTP server in
# --count-only mode (a fast XOAUTH2 sink). Tools: jq, bc, sqlite3 (E only).
#
# Usage: bench/scale.sh [MESSAGES]   (default 100000; the issue asks 200000)
# Env:   SESSIONS=10  SIZE=5120  EMPTY=10000 (phase A)  SAMPLE=10 (s)
#        DRAIN_LIMIT=1800 (s)  TIMEOUT=600 (s, per load run)  WORKERS=8
#        OUT=dir  SKIP_BUILD=1  PROFILE=debug (a quick check of the script)
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-100000}"
SESSIONS="${SESSIONS:-10}"
SIZE="${SIZE:-5120}"
EMPTY="${EMPTY:-10000}"
SAMPLE="${SAMPLE:-10}"
DRAIN_LIMIT="${DRAIN_LIMIT:-1800}"
TIMEOUT="${TIMEOUT:-600}"
WORKERS="${WORKERS:-8}"
OUT="${OUT:-target/bench/scale-$(date -u +%Y%m%dT%H%M%SZ)}"
RELAY_PORT="${RELAY_PORT:-19937}"
HTTP_PORT="${HTTP_PORT:-19938}"
SMTP_PORT="${SMTP_PORT:-19939}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"
CHUNK=$((MESSAGES / 10))

for tool in jq bc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing" >&2; exit 0; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen
fi
PROFILE="${PROFILE:-release}"
OXIRELAY="$PWD/target/$PROFILE/oxirelay"
LOADGEN="$PWD/target/$PROFILE/examples/oxirelay-loadgen"

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start scale
# The store's files (database + WAL), in bytes.
store_bytes() { du -cb "$WORK"/relay.db* 2>/dev/null | tail -1 | cut -f1; }
# With the relay stopped: the WAL copied back and cut (sqlite3 CLI), so the
# size is the database's own, as it would be after any checkpoint.
settle_store() { if command -v sqlite3 >/dev/null; then sqlite3 "$WORK/relay.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null; fi; }
wait_sandbox_count() { # TARGET SECONDS: until the sandbox counted TARGET, bounded
    local tries=$(($2 * 20))
    for ((i = 0; i < tries; i++)); do
        if (($(sandbox_count) >= $1)); then return 0; fi
        sleep 0.05
    done
    return 1
}

echo "== machine"
{
    echo "nproc: $(nproc)"
    free -h | sed -n 1,2p
    rustc --version
    uname -srm
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
    echo "messages: $MESSAGES (chunks of $CHUNK), empty-queue run: $EMPTY, size: $SIZE, sessions: $SESSIONS, workers: $WORKERS"
} | tee "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
record() { echo "$1" | tee -a "$RESULTS"; }

SANDBOX_DIR="$WORK/sandbox"
"$OXIRELAY" sandbox --dir "$SANDBOX_DIR" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
SANDBOX_PID=$!
wait_for "$WORK/sandbox.out" '^Then:' 30
sandbox_count() { cat "$SANDBOX_DIR/inbox/count" 2>/dev/null || echo 0; }

export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
CONFIG="$WORK/oxirelay.toml"
write_config() { # keep_delivered keep_events
    bench_relay_config "keep_delivered = \"$1\"" "keep_events = \"$2\"" >"$CONFIG"
}
# The load phases keep everything (retention would run beside them); D
# rewrites the config with "0s".
write_config 7d 30d

start_relay() { # label
    # Retention: a pass at start, then hourly (not again during a phase).
    OXIRELAY_LOG="oxirelay::store::retention=info,warn" \
        "$OXIRELAY" -c "$CONFIG" serve --workers "$WORKERS" --retention-every 1h \
        >"$WORK/serve-$1.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_for "$WORK/serve-$1.log" 'delivering with' 30
}
stop_relay() { # label
    kill -TERM "$RELAY_PID"
    wait_for "$WORK/serve-$1.log" "oxirelay: stopped" 120 || true
    wait "$RELAY_PID" || true
    cp "$WORK/serve-$1.log" "$OUT/"
}
load() { # label messages: the load generator; prints its JSON summary
    "$LOADGEN" --label "$1" --target "127.0.0.1:$RELAY_PORT" --auth none \
        --from "$SENDER" --to "$RECIPIENT" --sessions "$SESSIONS" --messages "$2" \
        --size "$SIZE" --timeout "${TIMEOUT}s" >"$OUT/$1.json" || true
    jq -c '{sent: .messages_sent, errors: .errors, accepted_per_s: .messages_per_s, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, timed_out: .timed_out}' "$OUT/$1.json"
}

echo "== A. empty queue: $EMPTY messages, delivered as they come"
"$OXIRELAY" -c "$CONFIG" token sandbox >/dev/null
start_relay empty
start=$(now)
summary=$(load empty "$EMPTY")
wait_sandbox_count "$EMPTY" "$TIMEOUT" || true
end=$(now)
got=$(sandbox_count)
record "{\"phase\":\"empty\",\"load\":$summary,\"delivered\":$got,\"delivered_per_s\":$(rate "$got" "$end - $start")}"
stop_relay empty
rm -f "$WORK"/relay.db*

echo "== B. fill: $MESSAGES messages while delivery is paused"
"$OXIRELAY" -c "$CONFIG" token sandbox >/dev/null
start_relay scale
"$OXIRELAY" -c "$CONFIG" lockdown --reason "scale benchmark" >"$WORK/lockdown.out" 2>&1
wait_for "$WORK/serve-scale.log" "LOCKDOWN" 30
for ((i = 1; i <= 10; i++)); do
    summary=$(load "fill-$i" "$CHUNK")
    record "{\"phase\":\"fill\",\"stored\":$((i * CHUNK)),\"load\":$summary,\"store_bytes\":$(store_bytes)}"
done

echo "== C. drain: unlock, delivered/s every ${SAMPLE}s"
before=$(sandbox_count)
relay_cpu=$(cpu_s "$RELAY_PID")
sandbox_cpu=$(cpu_s "$SANDBOX_PID")
"$OXIRELAY" -c "$CONFIG" unlock >"$WORK/unlock.out" 2>&1
start=$(now)
last=$before
last_t=$start
for ((t = 0; t < DRAIN_LIMIT; t += SAMPLE)); do
    sleep "$SAMPLE"
    count=$(sandbox_count)
    at=$(now)
    record "{\"phase\":\"drain\",\"t_s\":$(echo "$at - $start" | bc -l | cut -c1-6),\"delivered\":$((count - before)),\"backlog\":$((MESSAGES - count + before)),\"delivered_per_s\":$(rate "$((count - last))" "$at - $last_t")}"
    last=$count
    last_t=$at
    if ((count - before >= MESSAGES)); then break; fi
done
end=$(now)
delivered=$(($(sandbox_count) - before))
record "{\"phase\":\"drain total\",\"delivered\":$delivered,\"seconds\":$(echo "$end - $start" | bc -l | cut -c1-7),\"delivered_per_s\":$(rate "$delivered" "$end - $start"),\"relay_cpu_s\":$(echo "$(cpu_s "$RELAY_PID") - $relay_cpu" | bc -l),\"sandbox_cpu_s\":$(echo "$(cpu_s "$SANDBOX_PID") - $sandbox_cpu" | bc -l)}"
"$OXIRELAY" -c "$CONFIG" doctor --json >"$OUT/doctor-before.json" 2>/dev/null || true
stop_relay scale

echo "== D. retention: keep_delivered = keep_events = 0s"
settle_store
bytes_before=$(store_bytes)
write_config 0s 0s
start=$(now)
start_relay retention
# A chunk of new mail beside the pass: acceptance must not wait for it.
summary=$(load retention-beside "$CHUNK")
wait_for "$WORK/serve-retention.log" "retention removed" 600 || true
end=$(now)
removed=$(grep "retention removed" "$WORK/serve-retention.log" | head -1 || true)
"$OXIRELAY" -c "$CONFIG" doctor --json >"$OUT/doctor-after.json" 2>/dev/null || true
wait_sandbox_count "$((before + MESSAGES + CHUNK))" "$TIMEOUT" || true
stop_relay retention
settle_store
bytes_after=$(store_bytes)
pages() { jq -r '.[] | select(.check == "store size") | .message' "$1" 2>/dev/null || echo "?"; }
record "{\"phase\":\"retention\",\"store_bytes_before\":$bytes_before,\"store_bytes_after\":$bytes_after,\"pass_and_load_s\":$(echo "$end - $start" | bc -l | cut -c1-6),\"load_beside\":$summary,\"doctor_before\":$(pages "$OUT/doctor-before.json" | jq -R .),\"doctor_after\":$(pages "$OUT/doctor-after.json" | jq -R .),\"log\":$(echo "$removed" | jq -R .)}"

echo "== E. the claim's query plan"
bench/claim-plans.sh | tee "$OUT/claim-plans.txt"
echo "== results: $RESULTS"

#!/usr/bin/env bash
# What one accepted message costs the relay as its store grows (issue 10:
# "accepted/s at 200,000 stored ≥ 0.9 × at 0"), for two builds in one
# invocation. Throughput on this shared 2-core machine moves with the
# neighbours' load more than with the store; the cost per message does
# not: bytes the relay's process writes (/proc/PID/io write_bytes: WAL
# frames and checkpoints) and CPU seconds it uses, per accepted message,
# in each chunk of a fill with delivery paused (lockdown), as phase B of
# bench/scale.sh. Rounds alternate the builds (A B A B ...).
#
# Usage: OXIRELAY_A=path OXIRELAY_B=path bench/fill-cost.sh [MESSAGES]
#        (default 100000, in 10 chunks)
# Env:   ROUNDS=1 (per build)  SESSIONS=10  SIZE=5120  TIMEOUT=600 (s)
#        LOADGEN=target/release/examples/oxirelay-loadgen  OUT=dir
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-100000}"
ROUNDS="${ROUNDS:-1}"
SESSIONS="${SESSIONS:-10}"
SIZE="${SIZE:-5120}"
TIMEOUT="${TIMEOUT:-600}"
OUT="${OUT:-target/bench/fill-cost-$(date -u +%Y%m%dT%H%M%SZ)}"
LOADGEN="${LOADGEN:-$PWD/target/release/examples/oxirelay-loadgen}"
RELAY_PORT="${RELAY_PORT:-19947}"
HTTP_PORT="${HTTP_PORT:-19948}"
SMTP_PORT="${SMTP_PORT:-19949}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"
CHUNK=$((MESSAGES / 10))
: "${OXIRELAY_A:?set OXIRELAY_A to the first build}" "${OXIRELAY_B:?set OXIRELAY_B to the second build}"
for tool in jq bc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing" >&2; exit 0; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start fill
write_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }

{
    echo "nproc: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
    uname -srm
    echo "A: $OXIRELAY_A ($("$OXIRELAY_A" --version 2>/dev/null || echo ?))"
    echo "B: $OXIRELAY_B ($("$OXIRELAY_B" --version 2>/dev/null || echo ?))"
    echo "messages: $MESSAGES (chunks of $CHUNK), size: $SIZE, sessions: $SESSIONS, rounds: $ROUNDS"
} | tee "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

"$OXIRELAY_A" sandbox --dir "$WORK/sandbox" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/sandbox.out" '^Then:' 30
export OXIRELAY_MASTER_KEY="$("$OXIRELAY_A" keygen)"
CONFIG="$WORK/oxirelay.toml"
bench_relay_config >"$CONFIG"

fill() { # label binary
    local label="$1" bin="$2"
    rm -f "$WORK"/relay.db* "$WORK"/audit.jsonl*
    "$bin" -c "$CONFIG" token sandbox >/dev/null
    "$bin" -c "$CONFIG" serve --workers 8 --retention-every 1h >"$WORK/serve-$label.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_for "$WORK/serve-$label.log" 'delivering with' 30
    "$bin" -c "$CONFIG" lockdown --reason "fill benchmark" >/dev/null 2>&1
    wait_for "$WORK/serve-$label.log" "LOCKDOWN" 30
    for ((i = 1; i <= 10; i++)); do
        local bytes0 cpu0 summary
        bytes0=$(write_bytes "$pid")
        cpu0=$(cpu_s "$pid")
        "$LOADGEN" --label "$label-$i" --target "127.0.0.1:$RELAY_PORT" --auth none \
            --from "$SENDER" --to "$RECIPIENT" --sessions "$SESSIONS" --messages "$CHUNK" \
            --size "$SIZE" --timeout "${TIMEOUT}s" >"$OUT/$label-$i.json" || true
        summary=$(jq -c '{sent: .messages_sent, errors: .errors, accepted_per_s: .messages_per_s, p99_ms: .latency_ms.p99}' "$OUT/$label-$i.json")
        local sent
        sent=$(jq '.messages_sent' "$OUT/$label-$i.json")
        local written cpu
        written=$(awk -v a="$bytes0" -v b="$(write_bytes "$pid")" -v n="$sent" 'BEGIN {printf "%.2f", (b - a) / 1024 / n}')
        cpu=$(awk -v a="$cpu0" -v b="$(cpu_s "$pid")" -v n="$sent" 'BEGIN {printf "%.3f", (b - a) * 1000 / n}')
        echo "{\"build\":\"$label\",\"stored\":$((i * CHUNK)),\"load\":$summary,\"written_kb_per_msg\":$written,\"cpu_ms_per_msg\":$cpu,\"load_avg\":\"$(cut -d' ' -f1 /proc/loadavg)\"}" | tee -a "$RESULTS"
    done
    kill -TERM "$pid"
    wait "$pid" || true
}

for ((r = 1; r <= ROUNDS; r++)); do
    fill "A$r" "$OXIRELAY_A"
    fill "B$r" "$OXIRELAY_B"
done
echo "results: $RESULTS"

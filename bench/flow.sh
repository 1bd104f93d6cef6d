#!/usr/bin/env bash
# Delivery flow per upstream connection (issue 10, item 5), on loopback.
#
# Delivery alone, without acceptance beside it: MESSAGES are submitted while
# delivery is paused (`oxirelay lockdown`), then `oxirelay unlock` and the
# time until the sandbox (--count-only, a fast XOAUTH2 sink, `generic`
# account) has counted them all. Repeated RUNS times on fresh stores, so a
# before/after comparison on this noisy machine can be made from runs of
# one invocation each. With PERF=1 the relay is sampled by `perf record`
# during the first drain (report in $OUT/perf.txt), with PERF=fill during
# the first fill instead (acceptance alone); with STRACE=1 its system
# calls are counted (`strace -c -f`, $OUT/strace.txt). ONE_PER_SESSION=1
# fills with a new connection per message, as smtp-source does.
#
# Usage: bench/flow.sh [MESSAGES]   (default 20000)
# Env:   RUNS=3  WORKERS=8  SESSIONS=10  SIZE=5120  DRAIN_LIMIT=300 (s)
#        OUT=dir  SKIP_BUILD=1  PERF=1|fill  STRACE=1  ONE_PER_SESSION=1
#        OXIRELAY=path (another build of oxirelay, for before/after)
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-20000}"
RUNS="${RUNS:-3}"
WORKERS="${WORKERS:-8}"
SESSIONS="${SESSIONS:-10}"
SIZE="${SIZE:-5120}"
DRAIN_LIMIT="${DRAIN_LIMIT:-300}"
OUT="${OUT:-target/bench/flow-$(date -u +%Y%m%dT%H%M%SZ)}"
RELAY_PORT="${RELAY_PORT:-19947}"
HTTP_PORT="${HTTP_PORT:-19948}"
SMTP_PORT="${SMTP_PORT:-19949}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"

for tool in jq bc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing" >&2; exit 0; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen
fi
OXIRELAY="${OXIRELAY:-$PWD/target/release/oxirelay}"
LOADGEN="$PWD/target/release/examples/oxirelay-loadgen"

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start flow

{
    echo "nproc: $(nproc)"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
    echo "messages: $MESSAGES, runs: $RUNS, workers: $WORKERS, size: $SIZE"
} | tee "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

SANDBOX_DIR="$WORK/sandbox"
"$OXIRELAY" sandbox --dir "$SANDBOX_DIR" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
SANDBOX_PID=$!
wait_for "$WORK/sandbox.out" '^Then:' 30
sandbox_count() { cat "$SANDBOX_DIR/inbox/count" 2>/dev/null || echo 0; }

export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
CONFIG="$WORK/oxirelay.toml"
bench_relay_config >"$CONFIG"

for ((run = 1; run <= RUNS; run++)); do
    rm -f "$WORK"/relay.db* "$WORK"/audit.jsonl*
    "$OXIRELAY" -c "$CONFIG" token sandbox >/dev/null
    OXIRELAY_LOG=warn "$OXIRELAY" -c "$CONFIG" serve --workers "$WORKERS" --retention-every 1h \
        --max-sessions-per-address 100 \
        >"$WORK/serve.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_for "$WORK/serve.log" 'delivering with' 30
    "$OXIRELAY" -c "$CONFIG" lockdown --reason "flow benchmark" >/dev/null 2>&1
    wait_for "$WORK/serve.log" "LOCKDOWN" 30
    PROBE=()
    if [[ $run == 1 && ${PERF:-} == fill ]]; then
        perf record -F 499 -g -p "$RELAY_PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
        PROBE+=($!)
    fi
    "$LOADGEN" --label "fill-$run" --target "127.0.0.1:$RELAY_PORT" --auth none \
        --from "$SENDER" --to "$RECIPIENT" --sessions "$SESSIONS" --messages "$MESSAGES" \
        ${ONE_PER_SESSION:+--one-per-session} --size "$SIZE" --timeout 600s >"$OUT/fill-$run.json" || true
    for pid in "${PROBE[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    fill=$(jq -c '{per_s: .messages_per_s, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, errors}' "$OUT/fill-$run.json")
    before=$(sandbox_count)
    relay_cpu=$(cpu_s "$RELAY_PID")
    sandbox_cpu=$(cpu_s "$SANDBOX_PID")
    PROBE=()
    if [[ $run == 1 && -n "${PERF:-}" && $PERF != fill ]]; then
        perf record -F 499 -g -p "$RELAY_PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
        PROBE+=($!)
    fi
    if [[ $run == 1 && -n "${STRACE:-}" ]]; then
        strace -c -f -p "$RELAY_PID" -o "$OUT/strace.txt" 2>/dev/null &
        PROBE+=($!)
    fi
    "$OXIRELAY" -c "$CONFIG" unlock >/dev/null 2>&1
    start=$(now)
    for ((i = 0; i < DRAIN_LIMIT * 20; i++)); do
        if (($(sandbox_count) - before >= MESSAGES)); then break; fi
        sleep 0.05
    done
    end=$(now)
    delivered=$(($(sandbox_count) - before))
    relay_cpu=$(echo "$(cpu_s "$RELAY_PID") - $relay_cpu" | bc -l)
    sandbox_cpu=$(echo "$(cpu_s "$SANDBOX_PID") - $sandbox_cpu" | bc -l)
    for pid in "${PROBE[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    kill -TERM "$RELAY_PID"
    wait_for "$WORK/serve.log" "oxirelay: stopped" 120 || true
    wait "$RELAY_PID" || true
    summary=$(grep -o 'upstream: .*per AUTH)' "$WORK/serve.log" | head -1 || true)
    cp "$WORK/serve.log" "$OUT/serve-$run.log"
    echo "{\"run\":$run,\"fill\":$fill,\"delivered\":$delivered,\"seconds\":$(echo "$end - $start" | bc -l | cut -c1-6),\"delivered_per_s\":$(rate "$delivered" "$end - $start"),\"relay_cpu_s\":$relay_cpu,\"sandbox_cpu_s\":$sandbox_cpu,\"upstream\":$(echo "$summary" | jq -R .)}" | tee -a "$RESULTS"
done
if [[ -f "$WORK/perf.data" ]]; then
    perf report -i "$WORK/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null | grep -v '^$' | head -150 >"$OUT/perf.txt" || true
    perf report -i "$WORK/perf.data" --no-children --sort comm,dso -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20 >"$OUT/perf-threads.txt" || true
    perf report -i "$WORK/perf.data" --no-children --sort sym -g none --percent-limit 0.7 --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/perf-symbols.txt" || true
fi
echo "== results: $RESULTS"

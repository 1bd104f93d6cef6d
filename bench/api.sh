#!/usr/bin/env bash
# The send API's acceptance rate beside SMTP submission's (issue 12,
# Benchmark), on loopback, in one invocation on one relay.
#
# The relay (`serve`, release build) has the bench's plain listener for a
# mapped network (no TLS, no AUTH: bench_relay_config) and `[http]` on
# loopback (plain HTTP, an API key). Delivery is paused (`oxirelay
# lockdown`), so both measure acceptance alone: the checks and the durable
# commit before the 250 or the 202. For each N in SESSIONS: M messages of
# SIZE bytes over N SMTP sessions (oxirelay-loadgen), then M over N HTTP
# keep-alive clients (oxirelay-apigen), each reporting accepted/s and the
# p50/p99 of the acknowledgement. At the end the relay is killed with
# SIGKILL and the queue counted: every acknowledged message must be there.
#
# Usage: bench/api.sh [MESSAGES]   (default 2000)
# Env:   SESSIONS="1 10 50"  SIZE=5120  OUT=dir  SKIP_BUILD=1
#        WARMUP=500: messages over each side (10 sessions) before the
#        measured runs and not reported, so that the first run does not
#        meet an empty store (its index pages only appended to) alone
#        ROUNDS=1: SMTP and API runs per N, alternating which goes first;
#        each round's API ÷ SMTP and their median go to $OUT/ratios.jsonl
#        PERF=1: sample the relay with `perf record` during both runs at
#        N = PERF_N (10; reports in $OUT/perf-smtp.txt, perf-api.txt and
#        their -inclusive.txt); PERF=dwarf for call graphs through DWARF
#        (the release build has no frame pointers)
#        STAT=1: count the relay's context switches and CPU time during
#        each run (`perf stat`, $OUT/stat-LABEL.txt)
#        CALLGRIND=1: run the relay under valgrind's callgrind, counting
#        instructions only during each load run ($OUT/callgrind.LABEL,
#        the top functions in $OUT/callgrind-LABEL.txt, the per-message
#        total in results.jsonl as instructions_per_msg): repeatable where
#        timings on a shared machine are not; use small counts (300) and
#        SESSIONS=1, the relay runs some fifty times slower
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-2000}"
SESSIONS="${SESSIONS:-1 10 50}"
ROUNDS="${ROUNDS:-1}"
SIZE="${SIZE:-5120}"
OUT="${OUT:-target/bench/api-$(date -u +%Y%m%dT%H%M%SZ)}"
RELAY_PORT="${RELAY_PORT:-19957}"
HTTP_PORT="${HTTP_PORT:-19958}"
SMTP_PORT="${SMTP_PORT:-19959}"
API_PORT="${API_PORT:-19960}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"

for tool in jq bc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing" >&2; exit 0; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen --example oxirelay-apigen
fi
OXIRELAY="${OXIRELAY:-$PWD/target/release/oxirelay}"
LOADGEN="$PWD/target/release/examples/oxirelay-loadgen"
APIGEN="$PWD/target/release/examples/oxirelay-apigen"

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start api

{
    bench_machine
    echo "messages per run: $MESSAGES, size: $SIZE"
} | tee "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

SANDBOX_DIR="$WORK/sandbox"
"$OXIRELAY" sandbox --dir "$SANDBOX_DIR" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/sandbox.out" '^Then:' 30

export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
CONFIG="$WORK/oxirelay.toml"
{
    bench_relay_config
    echo
    echo "[http]"
    echo "addr = \"127.0.0.1:$API_PORT\""
} >"$CONFIG"
"$OXIRELAY" -c "$CONFIG" apikey create bench --scope send --allowed-from "$SENDER" \
    --account sandbox 2>/dev/null >"$WORK/api.key"
chmod 600 "$WORK/api.key"

UNDER=()
STARTUP_S=30
if [[ -n "${CALLGRIND:-}" ]]; then
    command -v valgrind >/dev/null || { echo "SKIPPED: CALLGRIND=1 needs valgrind" >&2; exit 0; }
    UNDER=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$OUT/callgrind.out")
    STARTUP_S=300
fi
OXIRELAY_LOG=warn "${UNDER[@]}" "$OXIRELAY" -c "$CONFIG" serve --max-sessions-per-address 100 \
    --retention-every 1h >"$WORK/serve.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_for "$WORK/serve.log" 'delivering with' "$STARTUP_S"
"$OXIRELAY" -c "$CONFIG" lockdown --reason "api benchmark: acceptance only" >/dev/null 2>&1
wait_for "$WORK/serve.log" "LOCKDOWN" 30

# The load generator's own CPU (user + system seconds) from /usr/bin/time:
# both clients share the two cores with the relay, so a heavier client
# costs the side it drives.
client_cpu() { awk '{printf "%.3f", $1 + $2}' "$1" 2>/dev/null || echo 0; }
summary() { # label file relay-cpu-seconds client-cpu-seconds
    jq -c --arg name "$1" --argjson cpu "$3" --argjson client "$4" '{label: $name, relay_cpu_ms_per_msg: (if .messages_sent > 0 then ($cpu * 1000 / .messages_sent * 100 | round / 100) else null end), client_cpu_ms_per_msg: (if .messages_sent > 0 then ($client * 1000 / .messages_sent * 100 | round / 100) else null end), n: .sessions, accepted: .messages_sent, errors: .errors, s: .duration_s, per_s: .messages_per_s, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, timed_out: .timed_out}' "$2"
}
stat_start() { # label
    STAT_PID=""
    if [[ -n "${STAT:-}" ]]; then
        perf stat -e context-switches,cpu-migrations,task-clock -p "$RELAY_PID" -o "$OUT/stat-$1.txt" >/dev/null 2>&1 &
        STAT_PID=$!
    fi
}
stat_stop() { if [[ -n "$STAT_PID" ]]; then kill -INT "$STAT_PID" 2>/dev/null || true; wait "$STAT_PID" 2>/dev/null || true; fi; }
probe_start() { # n
    PROBE=""
    if [[ -n "${PERF:-}" && $1 == "${PERF_N:-10}" ]]; then
        perf record -F 999 $([[ $PERF == dwarf ]] && echo --call-graph=dwarf,16384 || echo -g) -p "$RELAY_PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
        PROBE=$!
    fi
}
# Instructions counted only while a load run lasts (CALLGRIND=1).
count_start() { if [[ -n "${CALLGRIND:-}" ]]; then callgrind_control -i on "$RELAY_PID" >/dev/null 2>&1; fi; }
count_stop() { # label: the run's counts dumped, and their total per message
    INSTRUCTIONS=null
    if [[ -z "${CALLGRIND:-}" ]]; then return; fi
    callgrind_control -i off "$RELAY_PID" >/dev/null 2>&1
    callgrind_control -d "$1" "$RELAY_PID" >/dev/null 2>&1
    local dump
    # The dump is written asynchronously; wait (bounded) for the file.
    for ((i = 0; i < 100; i++)); do
        dump=$(ls "$OUT"/callgrind.out.*[0-9] 2>/dev/null | head -1 || true)
        [[ -n "$dump" ]] && grep -q '^totals:' "$dump" 2>/dev/null && break
        sleep 0.1
    done
    [[ -n "$dump" ]] || { echo "no callgrind dump for $1" >&2; return; }
    mv "$dump" "$OUT/callgrind.$1"
    INSTRUCTIONS=$(awk '/^totals:/ {print $2}' "$OUT/callgrind.$1")
    callgrind_annotate "$OUT/callgrind.$1" 2>/dev/null | head -60 >"$OUT/callgrind-$1.txt" || true
}
probe_stop() { # side
    if [[ -z "$PROBE" ]]; then return; fi
    kill -INT "$PROBE" 2>/dev/null || true
    wait "$PROBE" 2>/dev/null || true
    perf report -i "$WORK/perf.data" --no-children --sort sym -g none --percent-limit 0.7 --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/perf-$1.txt" || true
    # Inclusive cost of the relay's own functions (the request's parts).
    perf report -i "$WORK/perf.data" --children --sort sym -g none --percent-limit 2 --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | grep -E 'oxirelay|axum|hyper|serde|mail_builder' | head -60 >"$OUT/perf-$1-inclusive.txt" || true
    # Kept for `perf report -i` beyond the top lines above.
    mv "$WORK/perf.data" "$OUT/perf-$1.data" 2>/dev/null || true
}
# One load run of one side (smtp or api) at N, recorded under its label.
run_side() { # side n label
    local side=$1 n=$2 label=$3 cpu
    cpu=$(cpu_s "$RELAY_PID")
    stat_start "$label"
    probe_start "$n"
    count_start
    if [[ $side == smtp ]]; then
        /usr/bin/time -f '%U %S' -o "$WORK/client.cpu" "$LOADGEN" --label "$label" --target "127.0.0.1:$RELAY_PORT" --auth none \
            --from "$SENDER" --to "$RECIPIENT" --sessions "$n" --messages "$MESSAGES" \
            --size "$SIZE" --timeout 300s >"$OUT/$label.json" || true
    else
        /usr/bin/time -f '%U %S' -o "$WORK/client.cpu" "$APIGEN" --label "$label" --url "http://127.0.0.1:$API_PORT" --key-file "$WORK/api.key" \
            --from "$SENDER" --to "$RECIPIENT" --clients "$n" --messages "$MESSAGES" \
            --size "$SIZE" --timeout-s 300 >"$OUT/$label.json" || true
    fi
    count_stop "$label"
    stat_stop
    probe_stop "$side"
    summary "$label" "$OUT/$label.json" "$(printf "%.3f" "$(echo "$(cpu_s "$RELAY_PID") - $cpu" | bc -l)")" \
        "$(client_cpu "$WORK/client.cpu")" | jq -c --arg side "$side" --argjson round "${4:-1}" --argjson instructions "$INSTRUCTIONS" \
        '. + {side: $side, round: $round} + (if $instructions == null then {} else {instructions_per_msg: (if .accepted > 0 then ($instructions / .accepted | round) else null end)} end)' | tee -a "$RESULTS"
    acknowledged=$((acknowledged + $(jq .messages_sent "$OUT/$label.json")))
}

acknowledged=0
WARMUP="${WARMUP:-500}"
if ((WARMUP > 0)); then
    for side in smtp api; do
        MESSAGES="$WARMUP" run_side "$side" 10 "warmup-$side" 0 >/dev/null
    done
fi
for n in $SESSIONS; do
    for ((round = 1; round <= ROUNDS; round++)); do
        suffix=""
        ((ROUNDS > 1)) && suffix="-r$round"
        # Rounds alternate which side goes first, so that a machine that
        # slows down or speeds up during the rounds favours neither.
        if ((round % 2 == 1)); then order="smtp api"; else order="api smtp"; fi
        for side in $order; do
            run_side "$side" "$n" "$side-n$n$suffix" "$round"
        done
    done
done

# Per N: each round's API ÷ SMTP (the two ran back to back), and the median
# over the rounds (the figure to read on a machine shared with others).
jq -s -c --argjson sessions "[$(echo "$SESSIONS" | tr ' ' ',')]" '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    map(select(.side != null and .round > 0)) as $runs
    | $sessions[] as $n
    | ($runs | map(select(.n == $n))) as $at
    | ($at | map(.round) | unique) as $rounds
    | [$rounds[] as $r | ($at | map(select(.round == $r))) as $pair
        | (($pair | map(select(.side == "api"))[0].per_s) / ($pair | map(select(.side == "smtp"))[0].per_s))] as $ratios
    | {n: $n, rounds: ($rounds | length),
       smtp_per_s_median: ($at | map(select(.side == "smtp").per_s) | median),
       api_per_s_median: ($at | map(select(.side == "api").per_s) | median),
       api_over_smtp: ($ratios | map(. * 100 | round / 100)),
       api_over_smtp_median: ($ratios | median | . * 100 | round / 100)}
' "$RESULTS" | tee -a "$OUT/ratios.jsonl"

# Durable: after SIGKILL, every acknowledged message is in the queue.
kill -KILL "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
queued=$("$OXIRELAY" -c "$CONFIG" queue list --state queued --json --all | wc -l)
echo "{\"acknowledged\":$acknowledged,\"queued_after_sigkill\":$queued}" | tee -a "$RESULTS"
if ((queued < acknowledged)); then
    echo "LOST: $((acknowledged - queued)) acknowledged messages are not in the queue" >&2
    exit 1
fi
echo "== results: $RESULTS"

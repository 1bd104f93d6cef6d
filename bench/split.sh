#!/usr/bin/env bash
# What acceptance and delivery each cost the relay, apart (issue 8): the
# relay's CPU per message and its context switches, first while it only
# accepts (delivery paused by `oxirelay lockdown`), then while it only
# delivers the queue that built up (`oxirelay unlock`), on loopback.
#
# In bench/peers.sh C the two run at once on the same two cores, so a
# figure there cannot say which side a change made cheaper; this can.
#
#   accept:  smtp-source (N sessions, a new connection per message, 5 KB)
#            -> oxirelay's unauthenticated allow-listed listener
#   deliver: oxirelay -> the sandbox SMTP server (--count-only, XOAUTH2)
#
# Usage: bench/split.sh [MESSAGES]   (default 5000)
# Env:   N=50  OUT=dir  SKIP_BUILD=1  OXIRELAY=path
#        STAT=1: context switches of the relay in each phase (`perf stat`)
# Tools: scripts/install-test-tools (postfix, for smtp-source), jq, bc.
# Bounded: a message count, smtp-source under `timeout`, and a bounded
# wait for the sink to count the queue.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-5000}"
N="${N:-50}"
OUT="${OUT:-target/bench/split-$(date -u +%Y%m%dT%H%M%SZ)}"
RELAY_PORT="${RELAY_PORT:-19937}"
HTTP_PORT="${HTTP_PORT:-19938}"
SMTP_PORT="${SMTP_PORT:-19939}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"

for tool in /usr/sbin/smtp-source jq bc; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing; run scripts/install-test-tools" >&2; exit 0; }
done
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay
fi
OXIRELAY="${OXIRELAY:-$PWD/target/release/oxirelay}"

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start split

{
    bench_machine
    echo "messages: $MESSAGES, sessions: $N"
} | tee "$OUT/machine.txt"

"$OXIRELAY" sandbox --dir "$WORK/sandbox" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
SANDBOX_PID=$!
PIDS+=("$SANDBOX_PID")
wait_for "$WORK/sandbox.out" '^Then:' 30
sandbox_count() { cat "$WORK/sandbox/inbox/count" 2>/dev/null || echo 0; }

export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
CONFIG="$WORK/oxirelay.toml"
bench_relay_config >"$CONFIG"
"$OXIRELAY" -c "$CONFIG" serve --max-sessions-per-address $((N + 10)) >"$WORK/serve.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
wait_for "$WORK/serve.log" 'delivering with' 30
"$OXIRELAY" -c "$CONFIG" lockdown --reason "split benchmark: acceptance first" >/dev/null 2>&1
wait_for "$WORK/serve.log" LOCKDOWN 30

# smtp-source's message (-F: LF-ended lines, which it sends CRLF-ended).
MESSAGE="$WORK/message.txt"
printf 'From: <%s>\nTo: <%s>\nSubject: oxirelay split benchmark\n\n' "$SENDER" "$RECIPIENT" >"$MESSAGE"
head -c 5000 /dev/zero | tr '\0' 'a' | fold -w 70 >>"$MESSAGE"

stat_start() { # phase
    STAT_PID=""
    if [[ -n "${STAT:-}" ]]; then
        perf stat -e context-switches,task-clock -p "$RELAY_PID" -o "$WORK/stat-$1.txt" >/dev/null 2>&1 &
        STAT_PID=$!
    fi
}
stat_stop() { # phase: prints the context switches counted, or null
    if [[ -n "$STAT_PID" ]]; then
        kill -INT "$STAT_PID" 2>/dev/null || true
        wait "$STAT_PID" 2>/dev/null || true
        awk '/context-switches/ {gsub(",", "", $1); print $1; found = 1} END {if (!found) print "null"}' "$WORK/stat-$1.txt"
    else
        echo null
    fi
}
# Milliseconds per message between two CPU-seconds readings (JSON: 0.123).
per_msg_ms() { awk -v a="$1" -v b="$2" -v m="$MESSAGES" 'BEGIN {printf "%.3f", (b - a) * 1000 / m}'; }

# Accept only.
cpu0=$(cpu_s "$RELAY_PID")
stat_start accept
t0=$(now)
timeout 300 /usr/sbin/smtp-source -s "$N" -m "$MESSAGES" -f "$SENDER" -t "$RECIPIENT" -F "$MESSAGE" \
    "127.0.0.1:$RELAY_PORT" >"$OUT/smtp-source.out" 2>&1
t1=$(now)
switches=$(stat_stop accept)
cpu1=$(cpu_s "$RELAY_PID")
echo "{\"phase\":\"accept\",\"n\":$N,\"messages\":$MESSAGES,\"per_s\":$(rate "$MESSAGES" "$t1 - $t0"),\"relay_cpu_ms_per_msg\":$(per_msg_ms "$cpu0" "$cpu1"),\"context_switches\":$switches}" \
    | tee "$OUT/results.jsonl"

# Deliver only: the queue the first phase left.
before=$(sandbox_count)
sandbox0=$(cpu_s "$SANDBOX_PID")
stat_start deliver
t0=$(now)
"$OXIRELAY" -c "$CONFIG" unlock >/dev/null 2>&1
wait_count sandbox_count $((before + MESSAGES)) 120 || true
t1=$(now)
switches=$(stat_stop deliver)
cpu2=$(cpu_s "$RELAY_PID")
sandbox1=$(cpu_s "$SANDBOX_PID")
got=$(($(sandbox_count) - before))
echo "{\"phase\":\"deliver\",\"messages\":$got,\"per_s\":$(rate "$got" "$t1 - $t0"),\"relay_cpu_ms_per_msg\":$(per_msg_ms "$cpu1" "$cpu2"),\"sandbox_cpu_ms_per_msg\":$(per_msg_ms "$sandbox0" "$sandbox1"),\"context_switches\":$switches}" \
    | tee -a "$OUT/results.jsonl"
if ((got < MESSAGES)); then
    echo "only $got of $MESSAGES messages reached the sink within 120 s" >&2
    exit 1
fi
echo "== results: $OUT/results.jsonl"

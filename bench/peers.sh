#!/usr/bin/env bash
# The oxirelay benchmark against its peers (issue 8), on loopback only, in
# one invocation so the ratios compare runs on the same machine at the same
# moment:
#
#  A. smtp-source -> smtp-sink               (the limit of load + sink)
#  B. smtp-source -> Postfix -> smtp-sink    (Postfix as a relay baseline)
#  C. smtp-source -> oxirelay -> sandbox     (the relay: an unauthenticated,
#     allow-listed listener mapped by a [[network]]; the sandbox SMTP server
#     in --count-only mode as a fast XOAUTH2 sink)
#  D. oxirelay-loadgen -> oxirelay -> sandbox (latency: smtp-source reports
#     none; the project's load generator, no AUTH, a new connection per
#     message like smtp-source)
#  E. 1,000 idle sessions from 8 loopback addresses: the relay's RSS.
#
# smtp-source is Postfix's C load generator: a new connection per message
# (no -d), 5 KB bodies (-l 5120, plus its few header lines), N = 10 and 50
# sessions. Accepted msg/s = messages / smtp-source's wall time; delivered
# msg/s = messages / time until the sink counted the last one.
#
# Postfix needs root to start its master (it then runs as the postfix
# user): run this as root. It uses a private config directory (main.cf and
# master.cf written here, queue and data directories in a temp dir,
# 127.0.0.1 and a high port only) and is stopped at the end; the system's
# /etc/postfix is not used and no system mail service is started.
# Tools: scripts/install-test-tools (postfix for smtp-source, smtp-sink and
# postfix itself), jq, bc.
#
# Every load run is bounded: a message count, smtp-source under `timeout`,
# the load generator's --timeout, and bounded waits for servers and sinks.
#
# Usage: bench/peers.sh [MESSAGES_PER_RUN]   (default 5000)
# Env:   SESSIONS="10 50"  SIZE=5120  TIMEOUT=120  OUT=dir  RUNS=1
#        WORKERS=8 (oxirelay serve --workers, its default)  IDLE=1000 (0: no E)
#        SKIP_BUILD=1 PROFILE=debug (a quick check of the script itself)
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-5000}"
SESSIONS="${SESSIONS:-10 50}"
SIZE="${SIZE:-5120}"
TIMEOUT="${TIMEOUT:-120}"
RUNS="${RUNS:-1}"
WORKERS="${WORKERS:-8}"
IDLE="${IDLE:-1000}"
OUT="${OUT:-target/bench/peers-$(date -u +%Y%m%dT%H%M%SZ)}"
SINK_PORT="${SINK_PORT:-19925}"
POSTFIX_PORT="${POSTFIX_PORT:-19926}"
RELAY_PORT="${RELAY_PORT:-19927}"
HTTP_PORT="${HTTP_PORT:-19928}"
SMTP_PORT="${SMTP_PORT:-19929}"
SENDER="alice@sandbox.test"
RECIPIENT="sink@example.net"

for tool in /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/sbin/postfix jq bc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIPPED: $tool is missing; run scripts/install-test-tools (and apt-get install jq bc)" >&2
        exit 0
    fi
done
if [[ "$(id -u)" -ne 0 ]]; then
    echo "bench/peers.sh: Postfix's master needs root to start; run as root" >&2
    exit 1
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen
fi
PROFILE="${PROFILE:-release}"
OXIRELAY="${OXIRELAY:-$PWD/target/$PROFILE/oxirelay}"
LOADGEN="$PWD/target/$PROFILE/examples/oxirelay-loadgen"
# 1,000 idle sessions and their peers need more descriptors than a shell's
# default 1,024.
ulimit -n 8192

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/oxirelay-peers.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
POSTFIX_CONF="$WORK/postfix/conf"
cleanup() {
    if [[ -f "$POSTFIX_CONF/main.cf" ]]; then
        /usr/sbin/postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
source bench/common.sh
# CPU seconds of Postfix's processes (those running now: smtpd processes
# that exited are not counted, so this is a lower bound).
postfix_cpu_s() { ps -u postfix -o cputimes= 2>/dev/null | awk '{s += $1} END {printf "%.2f", s}'; }
# The messages an smtp-sink counted so far (its -c counter line).
sink_count() { tr '\r' '\n' <"$1" 2>/dev/null | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }
wait_port() {
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# The message smtp-source sends (-F: its lines, CRLF-ended, dot-stuffed):
# the relay checks the header From against the network's allowed_from, and
# smtp-source's own headers would name the sender differently.
MESSAGE="$WORK/message.txt"
{
    printf 'From: <%s>\nTo: <%s>\nSubject: oxirelay peers benchmark\nDate: %s\n\n' \
        "$SENDER" "$RECIPIENT" "$(date -R)"
    # 72-octet lines on the wire (70 + CRLF), up to SIZE octets in all.
    for ((i = 0; i < SIZE / 72 - 2; i++)); do
        echo "The quick brown fox jumps over the lazy dog, for the benchmark's sake."
    done
} >"$MESSAGE"
echo "message: $(($(wc -c <"$MESSAGE") + $(wc -l <"$MESSAGE"))) octets on the wire (CRLF lines)" | tee -a "$OUT/machine.txt"

# source LABEL N PORT: smtp-source with N sessions, a connection per
# message; prints accepted msg/s and appends a JSON line to results.
source_run() {
    local label="$1" n="$2" port="$3" start end status=0
    start=$(now)
    timeout "$TIMEOUT" /usr/sbin/smtp-source -s "$n" -m "$MESSAGES" -F "$MESSAGE" \
        -f "$SENDER" -t "$RECIPIENT" -M bench.localhost "127.0.0.1:$port" \
        >"$OUT/$label.smtp-source.out" 2>&1 || status=$?
    end=$(now)
    SOURCE_START=$start
    SOURCE_SECONDS=$(echo "$end - $start" | bc -l)
    SOURCE_STATUS=$status
}

echo "== machine"
{
    echo "nproc: $(nproc)"
    free -h | sed -n 1,2p
    rustc --version
    uname -srm
    /usr/sbin/postconf -d mail_version 2>/dev/null || true
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
    echo "messages per run: $MESSAGES, sessions: $SESSIONS, relay workers: $WORKERS"
} | tee -a "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

# One smtp-sink for A and B: -c counts messages; it discards them.
"/usr/sbin/smtp-sink" -u nobody -c -m 1024 "127.0.0.1:$SINK_PORT" 1024 >"$WORK/sink.out" 2>&1 &
PIDS+=($!)
wait_port "$SINK_PORT"

echo "== Postfix (private instance, relayhost = the sink)"
mkdir -p "$POSTFIX_CONF" "$WORK/postfix/queue" "$WORK/postfix/data"
chown postfix "$WORK/postfix/data"
cat >"$POSTFIX_CONF/main.cf" <<EOF
# A relay as a user would set it up: defaults, except what confines it to
# this benchmark (loopback, a high port, a private queue) and the relayhost.
compatibility_level = 3.6
queue_directory = $WORK/postfix/queue
data_directory = $WORK/postfix/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.localhost
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file_prefixes = $WORK
maillog_file = $WORK/postfix/maillog
EOF
# Debian's services without chroot (the queue is not where a chroot expects
# it) and the SMTP listener on the benchmark's port.
cat >"$POSTFIX_CONF/master.cf" <<EOF
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
/usr/sbin/postfix -c "$POSTFIX_CONF" start
wait_port "$POSTFIX_PORT"

echo "== the sandbox (count-only: a fast XOAUTH2 sink)"
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
# A token now, so that the runs measure delivery, not the first grant.
"$OXIRELAY" -c "$CONFIG" token sandbox >/dev/null

start_relay() { # label extra-args...
    local label="$1"
    shift
    "$OXIRELAY" -c "$CONFIG" serve --workers "$WORKERS" "$@" >"$WORK/serve-$label.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_for "$WORK/serve-$label.log" 'delivering with' 30
}
stop_relay() { # label: SIGTERM, wait (bounded) for the summary it prints
    kill -TERM "$RELAY_PID"
    wait_for "$WORK/serve-$1.log" "oxirelay: stopped" 60 || true
    wait "$RELAY_PID" || true
    cp "$WORK/serve-$1.log" "$OUT/"
}
record() { # JSON object
    echo "$1" | tee -a "$RESULTS"
}

for run in $(seq "$RUNS"); do
    for n in $SESSIONS; do
        echo "== run $run, N = $n"
        # A: straight to the sink.
        before=$(sink_count "$WORK/sink.out")
        source_run "r$run-direct-n$n" "$n" "$SINK_PORT"
        wait_count "sink_count $WORK/sink.out" $((${before:-0} + MESSAGES)) 30 || true
        got=$(($(sink_count "$WORK/sink.out") - ${before:-0}))
        record "{\"run\":$run,\"path\":\"smtp-source->smtp-sink\",\"n\":$n,\"status\":$SOURCE_STATUS,\"accepted_per_s\":$(rate "$MESSAGES" "$SOURCE_SECONDS"),\"sink_counted\":$got}"

        # B: through Postfix.
        before=$(sink_count "$WORK/sink.out")
        postfix_cpu=$(postfix_cpu_s)
        source_run "r$run-postfix-n$n" "$n" "$POSTFIX_PORT"
        accepted=$(rate "$MESSAGES" "$SOURCE_SECONDS")
        wait_count "sink_count $WORK/sink.out" $((before + MESSAGES)) "$TIMEOUT" || true
        end=$(now)
        got=$(($(sink_count "$WORK/sink.out") - before))
        postfix_cpu=$(echo "$(postfix_cpu_s) - $postfix_cpu" | bc -l)
        record "{\"run\":$run,\"path\":\"smtp-source->postfix->smtp-sink\",\"n\":$n,\"status\":$SOURCE_STATUS,\"accepted_per_s\":$accepted,\"delivered\":$got,\"delivered_per_s\":$(rate "$got" "$end - $SOURCE_START"),\"wall_s\":$(echo "$end - $SOURCE_START" | bc -l),\"postfix_cpu_s\":$postfix_cpu}"

        # C: through oxirelay, a fresh relay (and queue) per N.
        rm -f "$WORK"/relay.db*
        "$OXIRELAY" -c "$CONFIG" token sandbox >/dev/null
        # One load address opens all N sessions: the per-address cap
        # (default 10, a defence against one client taking every slot) is
        # raised for the run, as for a fleet of devices behind one NAT.
        start_relay "r$run-n$n" --max-sessions-per-address $((n + 10))
        before=$(sandbox_count)
        relay_cpu=$(cpu_s "$RELAY_PID")
        sandbox_cpu=$(cpu_s "$SANDBOX_PID")
        if [[ -n "${PERF:-}" ]]; then
            # PERF=1: a CPU profile of the relay during this phase.
            perf record -e cpu-clock -F 499 -g -p "$RELAY_PID" -o "$OUT/r$run-relay-n$n.perf" \
                -- sleep "$PERF" >/dev/null 2>&1 &
        fi
        source_run "r$run-relay-n$n" "$n" "$RELAY_PORT"
        accepted=$(rate "$MESSAGES" "$SOURCE_SECONDS")
        wait_count sandbox_count $((before + MESSAGES)) "$TIMEOUT" || true
        end=$(now)
        got=$(($(sandbox_count) - before))
        delivered=$(rate "$got" "$end - $SOURCE_START")
        relay_cpu=$(echo "$(cpu_s "$RELAY_PID") - $relay_cpu" | bc -l)
        sandbox_cpu=$(echo "$(cpu_s "$SANDBOX_PID") - $sandbox_cpu" | bc -l)
        wall=$(echo "$end - $SOURCE_START" | bc -l)
        # D: latency from the load generator, same relay, connection per message.
        "$LOADGEN" --label "r$run-latency-n$n" --target "127.0.0.1:$RELAY_PORT" --auth none \
            --from "$SENDER" --to "$RECIPIENT" --sessions "$n" --messages "$MESSAGES" \
            --size "$SIZE" --one-per-session --timeout "${TIMEOUT}s" >"$OUT/r$run-latency-n$n.json" || true
        wait_count sandbox_count $((before + 2 * MESSAGES)) "$TIMEOUT" || true
        rss=$(peak_rss_kb "$RELAY_PID")
        stop_relay "r$run-n$n"
        summary=$(grep "oxirelay: stopped" "$WORK/serve-r$run-n$n.log" || true)
        per_auth=$(echo "$summary" | sed -n 's/.*(\([0-9.]*\) per AUTH).*/\1/p')
        tokens=$(echo "$summary" | sed -n 's/.* \([0-9]*\) access tokens obtained.*/\1/p')
        sessions=$(echo "$summary" | sed -n 's/.*upstream: \([0-9]*\) authenticated sessions.*/\1/p')
        lat=$(jq -c '{loadgen_per_s: .messages_per_s, loadgen_sent: .messages_sent, errors: .errors, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99}' "$OUT/r$run-latency-n$n.json" 2>/dev/null || echo '{}')
        record "{\"run\":$run,\"path\":\"smtp-source->oxirelay->sandbox\",\"n\":$n,\"status\":$SOURCE_STATUS,\"accepted_per_s\":$accepted,\"delivered\":$got,\"delivered_per_s\":$delivered,\"wall_s\":$wall,\"relay_cpu_s\":$relay_cpu,\"sandbox_cpu_s\":$sandbox_cpu,\"relay_peak_rss_kb\":$rss,\"upstream_sessions\":${sessions:-null},\"messages_per_auth\":${per_auth:-null},\"tokens_obtained\":${tokens:-null},\"loadgen\":$lat}"
    done
done

# IDLE=0 leaves E out (a quicker run of A to D).
if ((IDLE > 0)); then
    echo "== idle: $IDLE sessions from 127.0.0.1-8, the relay's RSS"
    rm -f "$WORK"/relay.db*
    start_relay idle --max-sessions-per-listener $((IDLE + 100)) \
        --max-sessions-per-address $((IDLE / 8 + 10))
    rss_before=$(rss_kb "$RELAY_PID")
    "$LOADGEN" --label idle --target "127.0.0.1:$RELAY_PORT" --auth none --sessions "$IDLE" \
        --source 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8 \
        --idle 10s --timeout 60s >"$OUT/idle.json" 2>"$WORK/idle.err" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    if wait_for "$WORK/idle.err" 'idle sessions are open' 50; then
        sleep 1
        rss_open=$(rss_kb "$RELAY_PID")
    else
        rss_open=null
    fi
    wait "$IDLE_PID" || true
    opened=$(jq .sessions_opened "$OUT/idle.json" 2>/dev/null || true)
    opened=${opened:-null}
    record "{\"path\":\"idle sessions\",\"requested\":$IDLE,\"opened\":$opened,\"relay_rss_kb_before\":$rss_before,\"relay_rss_kb_open\":$rss_open,\"relay_peak_rss_kb\":$(peak_rss_kb "$RELAY_PID")}"
    stop_relay idle
fi

echo "== results: $RESULTS"

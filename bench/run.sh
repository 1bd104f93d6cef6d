#!/usr/bin/env bash
# The oxirelay benchmark (issue 3, item 5), on loopback only.
#
#  1. builds oxirelay and the load generator in release;
#  2. starts the sandbox provider (`oxirelay sandbox`) in the background;
#  3. gets an access token for the sandbox mailbox (`oxirelay token`);
#  4. baseline: the load generator straight to the sandbox SMTP server
#     (STARTTLS + AUTH XOAUTH2), N = 1, 10, 50 sessions, 5 KB messages;
#  5. relay: if this build has `oxirelay serve`, the same load to the
#     relay's submission listener (STARTTLS + AUTH PLAIN), the relay
#     delivering to the sandbox; otherwise it says so and skips.
#
# Every run is bounded: a message count and --timeout per load run, and
# bounded waits for the servers. Reports (JSON, one per run) go to
# $OUT (default target/bench/<date>), and a summary to stdout.
#
# Usage: bench/run.sh [MESSAGES_PER_RUN]   (default 2000)
# Env:   SESSIONS="1 10 50"  SIZE=5120  TIMEOUT=120s  OUT=dir
#        SKIP_BUILD=1 PROFILE=debug (a quick check of the script itself)
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-2000}"
SESSIONS="${SESSIONS:-1 10 50}"
SIZE="${SIZE:-5120}"
TIMEOUT="${TIMEOUT:-120s}"
OUT="${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
# Ports away from the sandbox's defaults, so a sandbox someone runs by hand
# does not collide with the benchmark's.
HTTP_PORT="${HTTP_PORT:-19080}"
SMTP_PORT="${SMTP_PORT:-12587}"
RELAY_PORT="${RELAY_PORT:-11587}"

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen
fi
PROFILE="${PROFILE:-release}"
OXIRELAY="$PWD/target/$PROFILE/oxirelay"
LOADGEN="$PWD/target/$PROFILE/examples/oxirelay-loadgen"

# shellcheck source=bench/common.sh
source bench/common.sh
bench_start run

echo "== machine"
{
    echo "nproc: $(nproc)"
    free -h | sed -n 1,2p
    rustc --version
    uname -srm
} | tee "$OUT/machine.txt"

echo "== sandbox"
SANDBOX_DIR="$WORK/sandbox"
# --max-sessions: the sandbox's default cap (32, like a provider's
# connection limit) would turn N = 50 into 32 sessions and 421s.
"$OXIRELAY" sandbox --dir "$SANDBOX_DIR" --token-ttl 1h --max-sessions 200 \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
SANDBOX_PID=$!
wait_for "$WORK/sandbox.out" '^Then:' 30

# The sandbox prints a ready [[account]]; the config is that plus a store.
export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
CONFIG="$WORK/oxirelay.toml"
{
    echo "[store]"
    echo "url = \"sqlite://$WORK/relay.db\""
    echo
    echo "[secrets]"
    echo "master_key = \"env:OXIRELAY_MASTER_KEY\""
    echo
    sed -n '/^\[\[account\]\]/,/^insecure_loopback/p' "$WORK/sandbox.out"
} >"$CONFIG"
"$OXIRELAY" -c "$CONFIG" token sandbox >"$WORK/token.txt"
CA="$SANDBOX_DIR/sandbox-ca.pem"
USER_MAILBOX="alice@sandbox.test"

inbox_count() { find "$SANDBOX_DIR/inbox" -type f -path '*/new/*' 2>/dev/null | wc -l; }

run_load() { # label sessions extra-args...
    local label="$1" n="$2"
    shift 2
    "$LOADGEN" --label "$label" --sessions "$n" --messages "$MESSAGES" --size "$SIZE" \
        --timeout "$TIMEOUT" "$@" >"$OUT/$label.json" || true
    jq -c '{label: .label, n: .sessions, sent: .messages_sent, errors: .errors, s: .duration_s, per_s: .messages_per_s, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, timed_out: .timed_out}' \
        "$OUT/$label.json" 2>/dev/null || cat "$OUT/$label.json"
}

echo "== baseline: straight to the sandbox SMTP server (STARTTLS + XOAUTH2)"
for n in $SESSIONS; do
    run_load "baseline-n$n" "$n" --target "127.0.0.1:$SMTP_PORT" --ca-file "$CA" \
        --auth xoauth2 --user "$USER_MAILBOX" --token-file "$WORK/token.txt"
done
echo "sandbox inbox: $(inbox_count) messages; sandbox peak RSS $(peak_rss_kb "$SANDBOX_PID") kB"

echo "== relay: the submission listener of oxirelay serve (STARTTLS + PLAIN)"
if ! "$OXIRELAY" serve --help >/dev/null 2>&1; then
    echo "SKIPPED: this build has no \`oxirelay serve\` (issue 3, item 4, is being written);"
    echo "         rerun bench/run.sh once it has landed to measure the relay path."
    exit 0
fi
# A certificate for the relay's listener, signed by nobody: the load
# generator trusts it directly as its CA file.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/relay-key.pem" -out "$WORK/relay-cert.pem" 2>/dev/null
cat >>"$CONFIG" <<EOF

[[listener]]
addr = "127.0.0.1:$RELAY_PORT"
tls = "starttls"
cert = "$WORK/relay-cert.pem"
key = "$WORK/relay-key.pem"
EOF
export LOADGEN_PASSWORD="$("$OXIRELAY" -c "$CONFIG" user add bench --account sandbox --allowed-from "$USER_MAILBOX" 2>/dev/null)"
for n in $SESSIONS; do
    before=$(inbox_count)
    # Every load session comes from 127.0.0.1: lift the per-address cap
    # (10 by default) to the listener's own 100.
    "$OXIRELAY" -c "$CONFIG" serve --max-sessions-per-address 100 >"$WORK/serve-n$n.log" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    for ((i = 0; i < 300; i++)); do # up to 30 s for the listener
        if (exec 3<>"/dev/tcp/127.0.0.1/$RELAY_PORT") 2>/dev/null; then break; fi
        sleep 0.1
    done
    start=$(date +%s.%N)
    run_load "relay-n$n" "$n" --target "127.0.0.1:$RELAY_PORT" --ca-file "$WORK/relay-cert.pem" \
        --auth plain --user bench --from "$USER_MAILBOX"
    accepted=$(jq .messages_sent "$OUT/relay-n$n.json")
    # Delivered: wait (bounded by TIMEOUT's seconds) for the sandbox inbox to
    # hold every accepted message.
    limit=$(( ${TIMEOUT%s} * 10 ))
    for ((i = 0; i < limit; i++)); do
        if (($(inbox_count) - before >= accepted)); then break; fi
        sleep 0.1
    done
    end=$(date +%s.%N)
    delivered=$(($(inbox_count) - before))
    echo "relay-n$n: delivered $delivered of $accepted accepted; $(echo "$delivered / ($end - $start)" | bc -l | cut -c1-7) delivered/s;" \
        "relay peak RSS $(peak_rss_kb "$SERVE_PID") kB" | tee -a "$OUT/relay-n$n.txt"
    kill -TERM "$SERVE_PID"
    wait "$SERVE_PID" || true
    grep "oxirelay: stopped" "$WORK/serve-n$n.log" | tee -a "$OUT/relay-n$n.txt" || true
done

#!/usr/bin/env bash
# Scale-out on PostgreSQL (issue 13, item 6), on loopback only: 1, 2 and 3
# `oxirelay serve` instances on one PostgreSQL schema, under the relay
# benchmark's load (bench/run.sh: the project's load generator, STARTTLS +
# AUTH PLAIN, 5 KB messages, sessions reused), split evenly across the
# instances (one load generator per instance: a TCP balancer's even
# spread without a balancer in the way).
#
# For each instance count K: a fresh schema, migrated once (`oxirelay
# migrate`), K instances started (each its own listener port, one shared
# audit log), the load, then a bounded wait until the sandbox counted every
# accepted message. Reported: accepted/s (all messages over the slowest
# generator's time), delivered/s (from the first submission to the last
# arrival), p50/p99 submission latency, and the access tokens the
# instances obtained (`serve`'s summary on SIGTERM), which should stay 1
# however many instances share the account (issue 13, item 3).
#
# The upstream is the sandbox in --count-only mode (an XOAUTH2 sink that
# counts), as bench/scale.sh: what is measured is the relays and their
# store, not the sandbox's own fsyncs.
#
# Usage: bench/pg-scale.sh [MESSAGES_PER_RUN]   (default 6000)
# Env:   PG_URL (default postgres://postgres@127.0.0.1:5432/postgres; the
#        script creates the database oxirelay_pgscale_bench there, and a
#        schema per run that it drops)  INSTANCES="1 2 3"  SESSIONS=48
#        WORKERS=8  SIZE=5120  TIMEOUT=300 (s, per run)  OUT=dir
#        SKIP_BUILD=1  PROFILE=debug (a quick check of the script itself)
# Tools: psql, jq, bc, openssl.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES="${1:-6000}"
INSTANCES="${INSTANCES:-1 2 3}"
SESSIONS="${SESSIONS:-48}"
WORKERS="${WORKERS:-8}"
SIZE="${SIZE:-5120}"
TIMEOUT="${TIMEOUT:-300}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
OUT="${OUT:-target/bench/pg-scale-$(date -u +%Y%m%dT%H%M%SZ)}"
HTTP_PORT="${HTTP_PORT:-19180}"
SMTP_PORT="${SMTP_PORT:-12687}"
RELAY_PORT="${RELAY_PORT:-11687}" # instance i listens on RELAY_PORT + i
DATABASE=oxirelay_pgscale_bench

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin oxirelay --example oxirelay-loadgen
fi
PROFILE="${PROFILE:-release}"
OXIRELAY="$PWD/target/$PROFILE/oxirelay"
LOADGEN="$PWD/target/$PROFILE/examples/oxirelay-loadgen"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
PIDS=()
SCHEMA=""
DB_URL="${PG_URL%/*}/$DATABASE"
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$SCHEMA" ]]; then psql -q "$DB_URL" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
source bench/common.sh

if ! psql -qAt "$PG_URL" -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1; then
    psql -q "$PG_URL" -c "CREATE DATABASE $DATABASE"
fi

echo "== machine"
{
    echo "nproc: $(nproc)"
    free -h | sed -n 1,2p
    rustc --version
    uname -srm
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
    psql -qAt "$DB_URL" -c "SELECT version()"
    echo "postgres: max_connections $(psql -qAt "$DB_URL" -c 'SHOW max_connections'), synchronous_commit $(psql -qAt "$DB_URL" -c 'SHOW synchronous_commit'), shared_buffers $(psql -qAt "$DB_URL" -c 'SHOW shared_buffers')"
    echo "messages: $MESSAGES per run, sessions: $SESSIONS in all, workers: $WORKERS per instance, size: $SIZE"
} | tee "$OUT/machine.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

SANDBOX_DIR="$WORK/sandbox"
"$OXIRELAY" sandbox --dir "$SANDBOX_DIR" --token-ttl 1h --max-sessions 256 --count-only \
    --http "127.0.0.1:$HTTP_PORT" --smtp "127.0.0.1:$SMTP_PORT" >"$WORK/sandbox.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/sandbox.out" '^Then:' 30
sandbox_count() { cat "$SANDBOX_DIR/inbox/count" 2>/dev/null || echo 0; }
SANDBOX_PID=${PIDS[-1]}
# CPU seconds of the PostgreSQL server: the postmaster and its reaped
# backends (a backend's time counts once it exits, as the relays' pooled
# connections do when they stop). Other clients of the same server count
# too: run on a quiet database.
pg_cpu() {
    local postmaster
    postmaster=$(ps -C postgres -o pid=,ppid= | awk '$2 == 1 {print $1; exit}')
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15 + $16 + $17) / hz}' "/proc/$postmaster/stat" 2>/dev/null || echo 0
}
# CPU seconds the whole machine spent busy (every process, other users' too).
machine_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat; }
USER_MAILBOX="alice@sandbox.test"

export OXIRELAY_MASTER_KEY="$("$OXIRELAY" keygen)"
# A certificate for the listeners, signed by nobody: the load generator
# trusts it directly as its CA file (as bench/run.sh).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/relay-key.pem" -out "$WORK/relay-cert.pem" 2>/dev/null

config() { # URL PORT: one instance's config
    cat <<EOF
[store]
url = "$1"

[secrets]
master_key = "env:OXIRELAY_MASTER_KEY"

[audit]
path = "$WORK/audit.jsonl"

$(sed -n '/^\[\[account\]\]/,/^insecure_loopback/p' "$WORK/sandbox.out")

[[listener]]
addr = "127.0.0.1:$2"
tls = "starttls"
cert = "$WORK/relay-cert.pem"
key = "$WORK/relay-key.pem"
EOF
}

for k in $INSTANCES; do
    SCHEMA="oxr_bench_$$_$k"
    psql -q "$DB_URL" -c "CREATE SCHEMA $SCHEMA"
    url="$DB_URL?options[search_path]=$SCHEMA"
    for ((i = 0; i < k; i++)); do config "$url" $((RELAY_PORT + i)) >"$WORK/relay-$i.toml"; done
    "$OXIRELAY" -c "$WORK/relay-0.toml" migrate >/dev/null
    # One user for all: the instances share the store's users.
    export LOADGEN_PASSWORD="$("$OXIRELAY" -c "$WORK/relay-0.toml" user add bench --account sandbox --allowed-from "$USER_MAILBOX" 2>/dev/null)"
    serves=()
    for ((i = 0; i < k; i++)); do
        "$OXIRELAY" -c "$WORK/relay-$i.toml" serve --workers "$WORKERS" --max-sessions-per-address 100 \
            >"$WORK/serve-k$k-$i.log" 2>&1 &
        serves+=($!)
        PIDS+=($!)
    done
    for ((i = 0; i < k; i++)); do wait_for "$WORK/serve-k$k-$i.log" 'delivering with' 30; done
    before=$(sandbox_count)
    pg_before=$(pg_cpu)
    machine_before=$(machine_cpu)
    sandbox_before=$(cpu_s "$SANDBOX_PID")
    start=$(now)
    loads=()
    for ((i = 0; i < k; i++)); do
        "$LOADGEN" --label "k$k-$i" --target "127.0.0.1:$((RELAY_PORT + i))" --ca-file "$WORK/relay-cert.pem" \
            --auth plain --user bench --from "$USER_MAILBOX" \
            --sessions $((SESSIONS / k)) --messages $((MESSAGES / k)) --size "$SIZE" \
            --timeout "${TIMEOUT}s" >"$OUT/k$k-$i.json" &
        loads+=($!)
    done
    for pid in "${loads[@]}"; do wait "$pid" || true; done
    accepted=$(jq -s 'map(.messages_sent) | add' "$OUT"/k"$k"-*.json)
    slowest=$(jq -s 'map(.duration_s) | max' "$OUT"/k"$k"-*.json)
    for ((i = 0; i < TIMEOUT * 20; i++)); do # bounded: TIMEOUT seconds
        if (($(sandbox_count) - before >= accepted)); then break; fi
        sleep 0.05
    done
    end=$(now)
    delivered=$(($(sandbox_count) - before))
    relays_cpu=0
    for pid in "${serves[@]}"; do relays_cpu=$(echo "$relays_cpu + $(cpu_s "$pid")" | bc); done
    sandbox_cpu=$(echo "$(cpu_s "$SANDBOX_PID") - $sandbox_before" | bc)
    machine_busy=$(echo "$(machine_cpu) - $machine_before" | bc)
    for pid in "${serves[@]}"; do kill -TERM "$pid"; done
    for pid in "${serves[@]}"; do wait "$pid" || true; done
    pg_busy=$(echo "$(pg_cpu) - $pg_before" | bc)
    tokens=0
    for ((i = 0; i < k; i++)); do
        cp "$WORK/serve-k$k-$i.log" "$OUT/"
        n=$(sed -n 's/.* \([0-9]*\) access tokens obtained.*/\1/p' "$WORK/serve-k$k-$i.log" | tail -1)
        tokens=$((tokens + ${n:-0}))
    done
    p50=$(jq -s 'map(.latency_ms.p50) | max' "$OUT"/k"$k"-*.json)
    p99=$(jq -s 'map(.latency_ms.p99) | max' "$OUT"/k"$k"-*.json)
    errors=$(jq -s -c 'map(.errors)' "$OUT"/k"$k"-*.json)
    echo "{\"instances\": $k, \"accepted\": $accepted, \"delivered\": $delivered, \"accepted_per_s\": $(rate "$accepted" "$slowest"), \"delivered_per_s\": $(rate "$delivered" "$end - $start"), \"p50_ms\": $p50, \"p99_ms\": $p99, \"token_requests\": $tokens, \"errors\": $errors, \"wall_s\": $(echo "$end - $start" | bc | cut -c1-6), \"cpu_s\": {\"relays\": $relays_cpu, \"postgres\": $pg_busy, \"sandbox\": $sandbox_cpu, \"machine\": $machine_busy}}" |
        tee -a "$RESULTS"
    psql -q "$DB_URL" -c "SET client_min_messages = warning; DROP SCHEMA $SCHEMA CASCADE"
    SCHEMA=""
done

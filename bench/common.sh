# Helpers shared by the benchmark scripts (sourced, not run).

now() { date +%s.%N; }
rate() { echo "scale=1; $1 / ($2)" | bc -l; }
peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# wait_for FILE PATTERN SECONDS: until FILE contains PATTERN, bounded.
wait_for() {
    local file="$1" pattern="$2" tries=$(($3 * 10))
    for ((i = 0; i < tries; i++)); do
        if grep -q "$pattern" "$file" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2 || true
    return 1
}

# bench_relay_config [STORE_LINE...]: the relay's config, on stdout: its
# store and audit log in $WORK (with any extra [store] lines given), the
# sandbox's account as `oxirelay sandbox` printed it in $WORK/sandbox.out,
# and a listener on $RELAY_PORT for devices without AUTH, every loopback
# address being the network "bench" that sends as $SENDER.
bench_relay_config() {
    echo "[store]"
    echo "url = \"sqlite://$WORK/relay.db\""
    local line
    for line in "$@"; do echo "$line"; done
    echo
    echo "[secrets]"
    echo "master_key = \"env:OXIRELAY_MASTER_KEY\""
    echo
    echo "[audit]"
    echo "path = \"$WORK/audit.jsonl\""
    echo
    sed -n '/^\[\[account\]\]/,/^insecure_loopback/p' "$WORK/sandbox.out"
    cat <<EOF

# Devices without AUTH: every loopback address is the network "bench".
[[listener]]
addr = "127.0.0.1:$RELAY_PORT"
tls = "none"
allow_ips = ["127.0.0.0/8"]
networks = ["bench"]

[[network]]
name = "bench"
addrs = ["127.0.0.0/8"]
account = "sandbox"
allowed_from = ["$SENDER"]
EOF
}

# wait_count COMMAND TARGET SECONDS: until COMMAND prints >= TARGET, bounded.
wait_count() {
    local tries=$(($3 * 20)) got
    for ((i = 0; i < tries; i++)); do
        got=$($1)
        if ((${got:-0} >= $2)); then return 0; fi
        sleep 0.05
    done
    return 1
}

# bench_start NAME: the run's directories and clean-up, as every script
# begins: OUT (made, then absolute), WORK (a fresh /tmp/oxirelay-NAME.*),
# PIDS (background processes to stop at exit; append with PIDS+=($!)).
# The trap stops them and removes WORK however the script ends.
bench_start() {
    mkdir -p "$OUT"
    OUT="$(cd "$OUT" && pwd)"
    WORK="$(mktemp -d "/tmp/oxirelay-$1.XXXXXX")"
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
# bench_machine: what the figures were measured on, for machine.txt.
bench_machine() {
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    free -h | sed -n 2p
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
}

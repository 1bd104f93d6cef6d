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

#!/bin/sh
# Delivered messages/s through each upstream transport (smtp, graph,
# gmail_api) against the sandbox at 1, 4 and 16 concurrent deliveries, and
# API requests per message; see BENCHMARKS.md ("HTTP transports").
#
#   bench/http-transports.sh [MESSAGES]      # default 500 per run
#
# Knobs: PROFILE=release|debug (release), BENCH_CONCURRENCY="1 4 16",
# OUT=dir (target/bench/<date>). Prints CSV and keeps it in OUT.
set -eu
cd "$(dirname "$0")/.."
MESSAGES=${1:-500}
PROFILE=${PROFILE:-release}
OUT=${OUT:-target/bench/$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
flag=""
[ "$PROFILE" = release ] && flag="--release"
# One test binary; the benchmark is an ignored test so that it is built and
# linted with the rest but never slows the suite.
BENCH_MESSAGES=$MESSAGES BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-1 4 16} \
  cargo test $flag --test http_transports bench_http_transports -- --ignored --nocapture --test-threads 1 \
  | grep -E '^(transport,|smtp,|graph,|gmail_api,)' | tee "$OUT/http-transports-$PROFILE.csv"

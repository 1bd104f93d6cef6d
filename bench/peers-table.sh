#!/usr/bin/env bash
# Summarises bench/peers.sh's results.jsonl as the Markdown rows of
# BENCHMARKS.md: per run and N, the three paths, the ratios the targets
# are stated in, latency (oxirelay-loadgen), RSS, messages per AUTH, tokens.
# Usage: bench/peers-table.sh target/bench/peers-.../results.jsonl
set -euo pipefail
jq -rs '
  (map(select(.n != null)) | group_by([.run, .n])[] |
    (map(select(.path == "smtp-source->smtp-sink"))[0]) as $d |
    (map(select(.path == "smtp-source->postfix->smtp-sink"))[0]) as $p |
    (map(select(.path == "smtp-source->oxirelay->sandbox"))[0]) as $r |
    "| \($r.run) | \($r.n) | \($d.accepted_per_s) | \($p.accepted_per_s) / \($p.delivered_per_s) | \($r.accepted_per_s) (\(($r.accepted_per_s / $d.accepted_per_s * 100 | round) / 100)) | \($r.delivered_per_s) (\(($r.delivered_per_s / $p.delivered_per_s * 100 | round) / 100)) | \($r.loadgen.p50_ms) / \($r.loadgen.p99_ms) | \($r.relay_peak_rss_kb / 1024 | round) MB | \($r.messages_per_auth) | \($r.tokens_obtained) |"),
  (map(select(.path == "idle sessions"))[] |
    "idle: \(.opened) of \(.requested) sessions open; relay RSS \(.relay_rss_kb_before / 1024 | round) MB before, \(.relay_rss_kb_open / 1024 | round) MB with them open")
' "$1"

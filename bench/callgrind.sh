#!/usr/bin/env bash
# User-space instructions per 64 B message, counted by valgrind's callgrind: a noise-free figure
# for changes to the frame path, where the wall-clock benchmark moves ±3 % between runs.
#
#   bench/callgrind.sh [WSBEAT_BIN] [OUT] [-- WSBEAT_FLAGS...]
#       # default: target/release/wsbeat, /tmp/wsbeat.callgrind; flags after -- go to wsbeat
#   bench/callgrind.sh "" /tmp/forward.callgrind -- --upstream-masking forward
#
# wsbeat runs under callgrind with one relay thread; the load generator (not instrumented) keeps
# 20 connections × 16 messages in flight for 5 s. Messages are wsbeat's own count of client
# messages relayed (`wsbeat_messages_total{direction="client_to_upstream"}` from /metrics, read
# just before shutdown; every message is one frame). Prints the total per message and the 15
# costliest functions per message. Needs valgrind (apt-get install valgrind) and curl; every
# process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
POSITIONAL=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do POSITIONAL+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --; what is left goes to wsbeat
BIN=${POSITIONAL[0]:-$TARGET_DIR/release/wsbeat}
OUT=${POSITIONAL[1]:-/tmp/wsbeat.callgrind}
BENCH=$TARGET_DIR/release/wsbeat-bench
command -v callgrind_annotate >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

read -r ECHO_PORT PORT ADMIN < <("$BENCH" ports --count 3 | paste -sd' ')
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
"$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$ADMIN" --upstream "ws://127.0.0.1:$ECHO_PORT" \
    --worker-threads 1 --log-level warn "$@" 2>/dev/null &
WSBEAT=$!
PIDS+=("$WSBEAT")
"$BENCH" wait-port --addr "127.0.0.1:$PORT" --timeout 60s
"$BENCH" load --url "ws://127.0.0.1:$PORT/" --conns 20 --inflight 16 --size 64 \
    --duration 4s --warmup 1s | grep '^RESULT' | tr ' ' '\n' | grep '^msgs_per_s'
msgs=$(curl -sf --max-time 30 "http://127.0.0.1:$ADMIN/metrics" \
    | awk '/^wsbeat_messages_total\{direction="client_to_upstream"\}/ {print $2}')
# SIGINT lets wsbeat shut down cleanly so callgrind writes its profile.
kill -INT "$WSBEAT"
for _ in $(seq 100); do kill -0 "$WSBEAT" 2>/dev/null || break; sleep 0.1; done

total=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
[ "${msgs:-0}" -gt 0 ] || { echo "no messages counted" >&2; exit 1; }
echo "instructions=$total messages=$msgs per_message=$((total / msgs))"
callgrind_annotate "$OUT" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,16p' \
    | awk -v m="$msgs" '{x = $1; gsub(",", "", x); printf "%7.1f  %s\n", x / m, $0}' | cut -c1-160

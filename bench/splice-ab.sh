#!/usr/bin/env bash
# A/B of the splice path against the copy path on one binary: for each message size, wsbeat
# is started with --splice-min-payload A, then B, RUNS times, interleaved, and the closed-loop
# load of bench/run.sh's "large" workload (10 connections x 4 in flight) is measured through
# it; one line per run with MB/s and the proxy's CPU per message. docs/PERFORMANCE.md has the
# figures it gave.
#
#   bench/splice-ab.sh                                   # fresh masking, 0 against 64KiB
#   MASKING=forward MINS="0 1" SIZES="8KiB 16KiB 32KiB 64KiB 256KiB" bench/splice-ab.sh
#
# Environment: MASKING [fresh], MINS ["0 64KiB"], SIZES ["64KiB 256KiB"], RUNS [3],
# DURATION [2s], WSBEAT_BIN and the harness from $CARGO_TARGET_DIR/release (build them first:
# cargo build --release -p wsbeat -p wsbeat-bench). Every process is killed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WSBEAT_BIN=${WSBEAT_BIN:-$TARGET_DIR/release/wsbeat}
BENCH=${BENCH:-$TARGET_DIR/release/wsbeat-bench}
MASKING=${MASKING:-fresh}
MINS=${MINS:-"0 64KiB"}
SIZES=${SIZES:-"64KiB 256KiB"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-2s}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

read -r echo_port port admin < <("$BENCH" ports --count 3 | paste -sd' ')
"$BENCH" echo --listen "127.0.0.1:$echo_port" >/dev/null 2>&1 &
PIDS+=($!)
"$BENCH" wait-port --addr "127.0.0.1:$echo_port"

for size in $SIZES; do
    for run in $(seq "$RUNS"); do
        for min in $MINS; do
            "$WSBEAT_BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
                --upstream "ws://127.0.0.1:$echo_port" --upstream-masking "$MASKING" \
                --splice-min-payload "$min" --log-level warn >/dev/null 2>&1 &
            pid=$!
            PIDS+=("$pid")
            "$BENCH" wait-port --addr "127.0.0.1:$port"
            result=$(timeout 60 "$BENCH" load --url "ws://127.0.0.1:$port/" --conns 10 \
                --inflight 4 --size "$size" --duration "$DURATION" --warmup 0.5s \
                --proxy-pids "$pid" 2>&1 | tail -1)
            echo "size=$size run=$run min=$min $(grep -o 'mb_per_s=[0-9.]*\|proxy_cpu_us_per_msg=[0-9.]*' <<<"$result" | paste -sd' ')"
            kill "$pid"
            wait "$pid" 2>/dev/null || true
        done
    done
done

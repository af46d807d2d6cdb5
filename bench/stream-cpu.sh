#!/usr/bin/env bash
# Where the CPU of the 256 MiB stream goes: the same `wsbeat-bench stream` run directly against
# the echo server and through wsbeat, with the CPU seconds each process used for it (the
# client from its rusage, the echo server and wsbeat from /proc/PID/stat). On loopback every
# TCP hop's receive work is done by the sending process, so wsbeat's figure is mostly the two
# hops it adds, whatever it does in user space.
#
#   bench/stream-cpu.sh                  # RUNS [3] per target, MASKING [forward]
#
# Needs the release binaries (cargo build --release -p wsbeat -p wsbeat-bench). Loopback only;
# every process started here is killed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/wsbeat-bench
WSBEAT=$TARGET_DIR/release/wsbeat
RUNS=${RUNS:-3}
MASKING=${MASKING:-forward}
ECHO_PORT=${ECHO_PORT:-19001}
PROXY_PORT=${PROXY_PORT:-19002}
ADMIN_PORT=${ADMIN_PORT:-19003}

for bin in "$BENCH" "$WSBEAT"; do
    [ -x "$bin" ] || { echo "stream-cpu.sh: $bin missing; build the release binaries" >&2; exit 1; }
done

TICK=$(getconf CLK_TCK)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# CPU seconds used so far by process $1.
cpu() { awk -v t="$TICK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

"$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null &
ECHO_PID=$!
pids+=("$ECHO_PID")
"$WSBEAT" --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --upstream "ws://127.0.0.1:$ECHO_PORT" --upstream-masking "$MASKING" --log-level warn &
PROXY_PID=$!
pids+=("$PROXY_PID")
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break
    sleep 0.1
done

printf '%-7s %8s %11s %9s %10s %10s\n' target seconds client_cpu echo_cpu proxy_cpu all_cpu
for target in direct wsbeat; do
    port=$ECHO_PORT
    [ "$target" = wsbeat ] && port=$PROXY_PORT
    for _ in $(seq "$RUNS"); do
        e0=$(cpu "$ECHO_PID")
        p0=$(cpu "$PROXY_PID")
        "$BENCH" stream --url "ws://127.0.0.1:$port/" --frames 256 --frame-size 1MiB \
            >"/tmp/stream-cpu.$$" 2>&1 &
        client=$!
        # The client's CPU, read just before it exits: poll its stat until it is gone.
        c=0
        while kill -0 "$client" 2>/dev/null; do
            c=$(cpu "$client" 2>/dev/null || echo "$c")
            sleep 0.01
        done
        wait "$client"
        e1=$(cpu "$ECHO_PID")
        p1=$(cpu "$PROXY_PID")
        secs=$(grep -o 'secs=[0-9.]*' "/tmp/stream-cpu.$$" | cut -d= -f2)
        awk -v t="$target" -v s="$secs" -v c="$c" -v e0="$e0" -v e1="$e1" -v p0="$p0" -v p1="$p1" \
            'BEGIN { printf "%-7s %8.3f %11.2f %9.2f %10.2f %10.2f\n", t, s, c, e1 - e0, p1 - p0, c + e1 - e0 + p1 - p0 }'
    done
done
rm -f "/tmp/stream-cpu.$$"

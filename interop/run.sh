#!/usr/bin/env bash
# The interop suite: the same scenarios driven by real Python and Node AMQP clients.
#
#   interop/run.sh                      build Warren, start it on a free port, run both suites
#                                       with interop/xfail-warren.txt applied (strict)
#   interop/run.sh --url URL            run both suites against any broker (no xfail list), e.g.
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ interop/run.sh      (a local RabbitMQ)
#   interop/run.sh --record-xfail       run against Warren without the list and rewrite
#                                       interop/xfail-warren.txt with exactly what failed
#   interop/run.sh --only python|node   one suite only
#
# Installs its clients under interop/ (a venv in interop/.venv from pinned requirements, and
# `npm ci` in interop/node from the committed lockfile), skipping both when their inputs are
# unchanged. Needs python3 (3.11+, with venv/pip), node 20+ with npm, and cargo.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
INTEROP="$ROOT/interop"
XFAIL_FILE="$INTEROP/xfail-warren.txt"
URL="${AMQP_URL:-}"
RECORD=0
ONLY=""

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL="${2:?--url needs a value}"; shift 2 ;;
        --url=*) URL="${1#--url=}"; shift ;;
        --record-xfail) RECORD=1; shift ;;
        --only) ONLY="${2:?--only needs python or node}"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "interop: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$ONLY" in ""|python|node) ;; *) echo "interop: --only takes python or node" >&2; exit 2 ;; esac
if [ "$RECORD" = 1 ] && [ -n "$URL" ]; then
    echo "interop: --record-xfail records Warren's failures; it does not take a URL" >&2
    exit 2
fi

say() { printf '\n==> interop: %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# -- clients ---------------------------------------------------------------------------------

install_python() {
    local venv="$INTEROP/.venv" requirements="$INTEROP/python/requirements.txt"
    local python="${PYTHON:-python3}"
    local want
    want="$(hash_of "$requirements")-$("$python" -c 'import sys; print(sys.version)' | head -1 | tr ' ' _)"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.interop-stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    say "installing Python clients into interop/.venv"
    rm -rf "$venv"
    if "$python" -m venv "$venv" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    else
        # Debian's python3 without python3-venv has no ensurepip: make the venv without pip and
        # let the system pip install into it (pip >= 22.3 has --python).
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv"
        "$python" -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check \
            --no-input -r "$requirements"
    fi
    echo "$want" > "$venv/.interop-stamp"
}

install_node() {
    local dir="$INTEROP/node"
    local want
    want="$(hash_of "$dir/package-lock.json")-$(node --version)"
    if [ -d "$dir/node_modules" ] && [ "$(cat "$dir/node_modules/.interop-stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    say "installing Node clients (npm ci in interop/node)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$dir/node_modules/.interop-stamp"
}

# -- the broker ------------------------------------------------------------------------------

WARREN_PID=""
WARREN_LOG=""
WARREN_STARTED=1
cleanup() {
    if [ -n "$WARREN_PID" ] && kill -0 "$WARREN_PID" 2>/dev/null; then
        kill -TERM "$WARREN_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$WARREN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$WARREN_PID" 2>/dev/null || true
        wait "$WARREN_PID" 2>/dev/null || true
    fi
    [ -n "$WARREN_LOG" ] && rm -f "$WARREN_LOG"
    [ -n "${RECORD_FILE:-}" ] && rm -f "$RECORD_FILE"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port on which nothing listens: the suites' target when Warren cannot start, so every
# scenario fails fast (connection refused) and the xfail list must say so.
closed_port() {
    "$INTEROP/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_warren() {
    say "building Warren (cargo build --release -p warren-server)"
    (cd "$ROOT" && cargo build --release -p warren-server)
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    local binary="$target/release/warren"
    WARREN_LOG="$(mktemp -t warren-interop.XXXXXX)"
    say "starting $binary --listen 127.0.0.1:0 --ephemeral"
    "$binary" --listen 127.0.0.1:0 --ephemeral >"$WARREN_LOG" 2>&1 &
    WARREN_PID=$!
    local address=""
    for _ in $(seq 100); do
        address="$(sed -n 's/.*listening on \([^[:space:]]*\).*/\1/p' "$WARREN_LOG" | head -1)"
        [ -n "$address" ] && break
        kill -0 "$WARREN_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$address" ]; then
        echo "################################################################################"
        echo "# interop: WARREN DID NOT START (no 'listening on' line within 10 s). Its output:"
        sed 's/^/#   /' "$WARREN_LOG" | tail -20
        echo "# Every scenario runs against a closed port and must be listed as failing in"
        echo "# interop/xfail-warren.txt."
        echo "################################################################################"
        address="127.0.0.1:$(closed_port)"
        WARREN_STARTED=0
    fi
    URL="amqp://guest:guest@$address/"
}

# -- run -------------------------------------------------------------------------------------

install_python
install_node

export INTEROP_XFAIL=""
RECORD_FILE=""
if [ -z "$URL" ]; then
    start_warren
    if [ "$RECORD" = 1 ]; then
        RECORD_FILE="$(mktemp -t interop-record.XXXXXX)"
    else
        INTEROP_XFAIL="$XFAIL_FILE"
        # Every listed id must belong to a client this suite drives.
        bad="$(grep -vE '^[[:space:]]*(#|$)' "$XFAIL_FILE" | awk '{print $1}' \
            | grep -vE '^(pika|aio_pika|kombu|celery|amqplib|amqp_client):[a-z0-9_]+$' || true)"
        if [ -n "$bad" ]; then
            echo "interop: $XFAIL_FILE has malformed ids:" >&2
            echo "$bad" >&2
            exit 1
        fi
    fi
fi
export AMQP_URL="$URL"
export INTEROP_RECORD="$RECORD_FILE"
say "broker: $AMQP_URL${INTEROP_XFAIL:+ (expected failures: interop/xfail-warren.txt)}"

status=0
if [ "$ONLY" != node ]; then
    say "Python suite (pytest: pika, aio-pika, kombu, celery)"
    (cd "$INTEROP/python" && "$INTEROP/.venv/bin/python" -m pytest) || status=1
fi
if [ "$ONLY" != python ]; then
    say "Node suite (node --test: amqplib, @cloudamqp/amqp-client)"
    (cd "$INTEROP/node" && node --test --test-reporter=tap test/) || status=1
fi

if [ "$RECORD" = 1 ]; then
    {
        echo "# Scenarios that fail against Warren, written by \`interop/run.sh --record-xfail\`."
        echo "# One \`CLIENT:SCENARIO reason\` per line. run.sh applies this list only when it tests"
        echo "# Warren, strictly: a listed scenario that passes fails the run, so remove it then."
        # One line per scenario; ports change from run to run, so they are left out.
        sort -u -k1,1 "$RECORD_FILE" | if [ "$WARREN_STARTED" = 0 ]; then
            awk '{print $1 " broker not implemented yet (warren does not start)"}'
        else
            sed -E 's/127\.0\.0\.1(:|., )[0-9]+/127.0.0.1:PORT/g'
        fi
    } > "$XFAIL_FILE"
    say "wrote $(grep -cvE '^[[:space:]]*(#|$)' "$XFAIL_FILE" || true) expected failures to interop/xfail-warren.txt"
    exit 0
fi

if [ "$status" = 0 ]; then
    say "all interop scenarios behaved as expected"
else
    say "interop suite FAILED"
    if [ -n "$WARREN_PID" ]; then
        if kill -0 "$WARREN_PID" 2>/dev/null; then state="still running"; else state="EXITED"; fi
        echo "Warren ($state); the last lines of its output:"
        tail -40 "$WARREN_LOG" | sed 's/^/    /'
    fi
fi
exit "$status"

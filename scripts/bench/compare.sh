#!/usr/bin/env bash
# Runs the standard scenarios S1-S9 side by side against Warren and RabbitMQ on this machine,
# interleaved (Warren and RabbitMQ alternate which goes first), ROUNDS times each, and writes the
# table of medians and Warren/RabbitMQ ratios into docs/performance.md.
#
# Usage: scripts/bench/compare.sh [--quick] [--no-write] [--only S1,S3,...]
# Environment:
#   ROUNDS (3)             rounds per scenario and broker
#   DURATION (10)          seconds of publishing for S1-S4 and S7 (--quick: 3)
#   BACKLOG (1000000)      messages in S5 (--quick: 100000)
#   IDLE_CONNS (500)       connections in S6, for both brokers (see docs/performance.md)
#   RABBIT_URI (amqp://guest:guest@127.0.0.1:5672/%2f), RABBIT_PID (pgrep -f beam.smp)
#   WARREN_BIN (target/release/warren), LOADGEN_BIN (target/release/warren-loadgen)
#   OUT_DIR (a fresh directory under /tmp)  where the JSON lines and logs go
#   NAME_PREFIX (loadgen.cmp)  queue and exchange names start with NAME_PREFIX.SCENARIO
#
# Not in the default order, run with --only: E0,E1 (a backlog without and with per-message TTLs,
# a third of them expiring while queued) and R0,R1 (a live run without and with TTLs that never
# run out: what the expiry index costs), for the expiry figures in docs/performance.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

QUICK=0
WRITE=1
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-write) WRITE=0 ;;
        --only) ONLY="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

ROUNDS="${ROUNDS:-3}"
if [[ $QUICK == 1 ]]; then
    DURATION="${DURATION:-3}"
    BACKLOG="${BACKLOG:-100000}"
else
    DURATION="${DURATION:-10}"
    BACKLOG="${BACKLOG:-1000000}"
fi
IDLE_CONNS="${IDLE_CONNS:-500}"
RABBIT_URI="${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBIT_PID="${RABBIT_PID:-$(pgrep -f beam.smp | head -1 || true)}"
WARREN_BIN="${WARREN_BIN:-$ROOT/target/release/warren}"
LOADGEN_BIN="${LOADGEN_BIN:-$ROOT/target/release/warren-loadgen}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/warren-compare.XXXXXX)}"
NAME_PREFIX="${NAME_PREFIX:-loadgen.cmp}"
mkdir -p "$OUT_DIR"
# S6W holds 2,000 connections: the generator and Warren (started from here) need the descriptors.
ulimit -n 8192 2>/dev/null || true
RESULTS="$OUT_DIR/results.jsonl"
: >"$RESULTS"

if [[ ! -x "$WARREN_BIN" || ! -x "$LOADGEN_BIN" ]]; then
    cargo build --release -p warren-server -p warren-loadgen
fi
if [[ -z "$RABBIT_PID" ]]; then
    echo "no RabbitMQ (beam.smp) process found; set RABBIT_PID" >&2
    exit 2
fi

# Scenario name -> loadgen arguments. Every run is bounded: a time or a count, and a drain timeout.
declare -A SCENARIO
SCENARIO[S1]="--time $DURATION --size 16 --autoack"
SCENARIO[S2]="--time $DURATION --size 1024 --prefetch 1000 --multi-ack 100"
SCENARIO[S3]="--time $DURATION --size 1024 --persistent --durable --confirm 1000 --prefetch 1000 --multi-ack 100"
SCENARIO[S4]="--time $DURATION --size 256 --exchange-type fanout --queues 10 --consumers 10 --autoack"
SCENARIO[S5]="--mode backlog --backlog $BACKLOG --size 256 --confirm 1000 --prefetch 1000 --multi-ack 100 --settle 2"
SCENARIO[S6]="--mode idle --connections $IDLE_CONNS --settle 3"
SCENARIO[S7]="--time $DURATION --size 256 --rate 1000 --autoack"
# Group commit across publishers: confirmed persistent 1 KiB messages into one durable queue from
# 1 and from 10 publisher connections, each with 100 confirms in flight (S9 has as many in
# flight in total as S3). If one sync covers every publisher's records, S9 is up to 10x S8.
SCENARIO[S8]="--time $DURATION --size 1024 --persistent --durable --confirm 100 --prefetch 1000 --multi-ack 100"
SCENARIO[S9]="--time $DURATION --size 1024 --persistent --durable --confirm 100 --producers 10 --prefetch 1000 --multi-ack 100"
# S6 at the issue's 2,000 connections, Warren only: this RabbitMQ cannot hold that many sockets.
SCENARIO[S6W]="--mode idle --connections 2000 --settle 3"
# Expiry: one message in three never expires, one expires after 1 s (while queued: the settle
# time is 3 s), one after 10 minutes (not during the run).
SCENARIO[E0]="--mode backlog --backlog $BACKLOG --size 256 --confirm 1000 --prefetch 1000 --multi-ack 100 --settle 3"
SCENARIO[E1]="${SCENARIO[E0]} --expiration=-,1000,600000"
SCENARIO[R0]="--time $DURATION --size 256 --confirm 1000 --prefetch 1000 --multi-ack 100"
SCENARIO[R1]="${SCENARIO[R0]} --expiration=-,60000,600000"
ORDER=(S6 S6W S1 S2 S3 S8 S9 S4 S7 S5)
if [[ -n "$ONLY" ]]; then
    IFS=, read -r -a ORDER <<<"$ONLY"
fi

WARREN_PID=""
WARREN_URI=""
stop_warren() {
    if [[ -n "$WARREN_PID" ]]; then
        kill "$WARREN_PID" 2>/dev/null || true
        wait "$WARREN_PID" 2>/dev/null || true
        WARREN_PID=""
    fi
}
trap stop_warren EXIT

# Starts a fresh Warren (on disk for S3, S8 and S9, in memory otherwise) and sets WARREN_PID and WARREN_URI.
start_warren() {
    local scenario="$1" log="$OUT_DIR/warren-$1-$2.log"
    local storage=(--ephemeral)
    if [[ $scenario == S3 || $scenario == S8 || $scenario == S9 ]]; then
        local dir="$OUT_DIR/warren-data-$2"
        rm -rf "$dir"
        storage=(--data-dir "$dir")
    fi
    "$WARREN_BIN" --listen 127.0.0.1:0 "${storage[@]}" >"$log" 2>&1 &
    WARREN_PID=$!
    for _ in $(seq 100); do
        local addr
        addr="$(grep -oE 'listening on [0-9.]+:[0-9]+' "$log" | head -1 | awk '{print $3}' || true)"
        if [[ -n "$addr" ]]; then
            WARREN_URI="amqp://guest:guest@$addr/%2f"
            return 0
        fi
        if ! kill -0 "$WARREN_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "warren did not start; see $log" >&2
    WARREN_PID=""
    return 1
}

# Runs one scenario against one broker and appends its JSON line (or a failure record).
run_one() {
    local scenario="$1" broker="$2" round="$3" uri pid
    local label="$scenario $broker $round"
    if [[ $broker == warren ]]; then
        if ! start_warren "$scenario" "$round"; then
            printf '{"label":"%s","scenario":"%s","broker":"%s","round":%s,"ok":false,"errors":["warren did not start"]}\n' \
                "$label" "$scenario" "$broker" "$round" >>"$RESULTS"
            return
        fi
        uri="$WARREN_URI"
        pid="$WARREN_PID"
    else
        uri="$RABBIT_URI"
        pid="$RABBIT_PID"
    fi
    local out="$OUT_DIR/$scenario-$broker-$round"
    echo "== $label" >&2
    # shellcheck disable=SC2086
    timeout 300 "$LOADGEN_BIN" --uri "$uri" --broker-pid "$pid" --prefix "$NAME_PREFIX.$scenario" \
        --drain-timeout 10 --quiet --label "$label" ${SCENARIO[$scenario]} >"$out.json" 2>"$out.err" || true
    if [[ $broker == warren ]] && ! kill -0 "$WARREN_PID" 2>/dev/null; then
        echo "warren exited during $label" >>"$out.err"
    fi
    stop_warren
    local line
    line="$(tail -1 "$out.json" 2>/dev/null || true)"
    if [[ $line == \{* ]]; then
        jq -c --arg s "$scenario" --arg b "$broker" --argjson r "$round" \
            '. + {"scenario": $s, "side": $b, "round": $r}' <<<"$line" >>"$RESULTS"
    else
        jq -nc --arg l "$label" --arg s "$scenario" --arg b "$broker" --argjson r "$round" \
            --arg e "$(tail -3 "$out.err" | tr '\n' ' ')" \
            '{"label": $l, "scenario": $s, "side": $b, "round": $r, "ok": false, "errors": [$e]}' >>"$RESULTS"
    fi
    jq -c '{label: .label, ok: .ok, consume_rate: .consume_rate, errors: .errors}' <<<"$(tail -1 "$RESULTS")" >&2
}

# Scenario by scenario, and within each, the brokers alternate round by round. S6 comes first:
# RabbitMQ's allocators keep memory freed after a big backlog (S5) and reuse it for new
# connections, which would hide what the connections cost; S5 comes last for the same reason.
for scenario in "${ORDER[@]}"; do
    for round in $(seq "$ROUNDS"); do
        if [[ $scenario == S6W ]]; then
            run_one "$scenario" warren "$round"
        elif (( round % 2 == 1 )); then
            run_one "$scenario" warren "$round"
            run_one "$scenario" rabbitmq "$round"
        else
            run_one "$scenario" rabbitmq "$round"
            run_one "$scenario" warren "$round"
        fi
    done
done

# A run cut short by its timeout leaves its queues behind on the shared RabbitMQ; delete those
# (only ours: every scenario's names start with $NAME_PREFIX.).
if command -v rabbitmqctl >/dev/null; then
    timeout 60 rabbitmqctl list_queues -q name 2>/dev/null | awk -v p="$NAME_PREFIX." 'index($0, p) == 1' |
        while read -r queue; do timeout 30 rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true; done || true
fi

echo "results: $RESULTS" >&2
args=(--results "$RESULTS" --rounds "$ROUNDS" --duration "$DURATION" --backlog "$BACKLOG" --idle-conns "$IDLE_CONNS")
if [[ $WRITE == 1 ]]; then
    args+=(--write "$ROOT/docs/performance.md")
fi
python3 "$ROOT/scripts/bench/summarize.py" "${args[@]}"

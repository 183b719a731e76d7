#!/usr/bin/env bash
# Shows whether warren-loadgen, not the broker, limits a run: the same scenario with one
# generator process and with two at once (on separate queues), against RabbitMQ and a fresh
# Warren. If the broker is the limit, two generators deliver no more in total than one. Also
# prints the generator's own CPU per message next to the broker's.
#
# Usage: scripts/bench/ceiling.sh [SCENARIO-ARGS...]   (default: S1, 16 B autoack, 10 s)
# Environment: DURATION (10), RABBIT_URI, RABBIT_PID, WARREN_BIN, LOADGEN_BIN as in compare.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-10}"
RABBIT_URI="${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBIT_PID="${RABBIT_PID:-$(pgrep -f beam.smp | head -1 || true)}"
WARREN_BIN="${WARREN_BIN:-$ROOT/target/release/warren}"
LOADGEN_BIN="${LOADGEN_BIN:-$ROOT/target/release/warren-loadgen}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/warren-ceiling.XXXXXX)}"
if [[ $# -gt 0 ]]; then
    SCENARIO=("$@")
else
    SCENARIO=(--size 16 --autoack)
fi

WARREN_PID=""
stop_warren() {
    if [[ -n "$WARREN_PID" ]]; then
        kill "$WARREN_PID" 2>/dev/null || true
        wait "$WARREN_PID" 2>/dev/null || true
        WARREN_PID=""
    fi
}
trap stop_warren EXIT

# run NAME URI PID PROCESSES QUEUES: runs PROCESSES generators at once, each with QUEUES
# producer/consumer/queue triples, and prints one table row.
run() {
    local name="$1" uri="$2" pid="$3" n="$4" q="$5" i
    local pids=()
    for i in $(seq "$n"); do
        "$LOADGEN_BIN" --uri "$uri" --broker-pid "$pid" --prefix "loadgen.ceiling.$i" --time "$DURATION" \
            --producers "$q" --consumers "$q" --queues "$q" \
            --quiet "${SCENARIO[@]}" >"$OUT_DIR/$name-$n-$q-$i.json" 2>"$OUT_DIR/$name-$n-$q-$i.err" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    # Broker CPU per message over the whole run is the broker's CPU (as seen by any one
    # generator, they overlap) divided by all messages; rates add up.
    jq -s -r --arg name "$name" --argjson n "$n" '
        (map(.consume_rate) | add) as $rate
        | (map(.published) | add) as $msgs
        | (map(.broker.cpu_us) | max) as $bcpu
        | (map(.loadgen.cpu_us) | add) as $lcpu
        | (map(.ok) | all) as $ok
        | "| \($name) | \($n) | \($n * '"$q"') | \($rate | floor) | \(($bcpu / $msgs * 100 | floor) / 100) | \(($lcpu / $msgs * 100 | floor) / 100) | \($ok) |"
    ' "$OUT_DIR/$name-$n-$q-"*.json
}

# Two processes also means two queues, which a broker may serve in parallel; the middle row (one
# process, two queues) separates that from the generator's own limit.
echo "| Broker | Generator processes | Queues | Delivered msg/s (sum) | Broker CPU µs/msg | Generator CPU µs/msg | Clean |"
echo "|---|---:|---:|---:|---:|---:|---|"
run rabbitmq "$RABBIT_URI" "$RABBIT_PID" 1 1
run rabbitmq "$RABBIT_URI" "$RABBIT_PID" 1 2
run rabbitmq "$RABBIT_URI" "$RABBIT_PID" 2 1
"$WARREN_BIN" --listen 127.0.0.1:0 --ephemeral >"$OUT_DIR/warren.log" 2>&1 &
WARREN_PID=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$OUT_DIR/warren.log" && break
    sleep 0.1
done
addr="$(grep -oE 'listening on [0-9.]+:[0-9]+' "$OUT_DIR/warren.log" | head -1 | awk '{print $3}')"
run warren "amqp://guest:guest@$addr/%2f" "$WARREN_PID" 1 1
run warren "amqp://guest:guest@$addr/%2f" "$WARREN_PID" 1 2
run warren "amqp://guest:guest@$addr/%2f" "$WARREN_PID" 2 1
echo "(details in $OUT_DIR)" >&2

#!/usr/bin/env bash
# A backlog far beyond the memory budget: fill a durable queue with persistent 1 KiB messages
# (confirms on), then drain it, on a fresh Warren with --memory-high-watermark BUDGET, and
# optionally on the RabbitMQ at RABBIT_URI with its own (smaller) backlog. Records the peak
# broker RSS while filling and while draining (sampled every 0.5 s), fill and drain rates and
# broker CPU per message. Each run is one JSON line in $OUT_DIR/results.jsonl; the data folder
# is removed afterwards. Wrap it in `flock /work/bench.lock` on a shared machine.
#
#   scripts/bench/backlog.sh                       # Warren: 10M x 1 KiB under a 2 GiB budget
#   BACKLOG=1000000 RABBIT_BACKLOG=1000000 scripts/bench/backlog.sh --rabbit
#
# Environment: BACKLOG (10000000), BUDGET (2GiB), SIZE (1024), RABBIT_BACKLOG (1000000),
# PORT (5701), OUT_DIR (target/bench-backlog), DATA_DIR ($OUT_DIR/warren-data),
# WARREN_BIN, LOADGEN_BIN (target/release/...), RABBIT_URI, RABBIT_PID.
set -euo pipefail

cd "$(dirname "$0")/../.."
BACKLOG="${BACKLOG:-10000000}"
BUDGET="${BUDGET:-2GiB}"
SIZE="${SIZE:-1024}"
RABBIT_BACKLOG="${RABBIT_BACKLOG:-1000000}"
PORT="${PORT:-5701}"
OUT_DIR="${OUT_DIR:-target/bench-backlog}"
DATA_DIR="${DATA_DIR:-$OUT_DIR/warren-data}"
WARREN_BIN="${WARREN_BIN:-target/release/warren}"
LOADGEN_BIN="${LOADGEN_BIN:-target/release/warren-loadgen}"
RABBIT_URI="${RABBIT_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
RABBIT_PID="${RABBIT_PID:-$(pgrep -f beam.smp | head -1 || true)}"
WITH_RABBIT=0
[[ "${1:-}" == --rabbit ]] && WITH_RABBIT=1
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"

WARREN_PID=""
SAMPLER_PID=""
cleanup() {
    [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null || true
    if [[ -n "$WARREN_PID" ]]; then
        kill "$WARREN_PID" 2>/dev/null || true
        wait "$WARREN_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

# Writes "seconds-since-start rss-kib" every 0.5 s for process $1 into $2.
sample_rss() {
    local pid="$1" file="$2" start
    start="$(date +%s.%N)"
    while kill -0 "$pid" 2>/dev/null; do
        local rss
        rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
        [[ -n "$rss" ]] && echo "$(echo "$(date +%s.%N) - $start" | bc) $rss" >>"$file"
        sleep 0.5
    done
}

# run_one LABEL URI PID MESSAGES: one fill-and-drain; appends the loadgen JSON plus the peak
# RSS of each phase to $RESULTS.
run_one() {
    local label="$1" uri="$2" pid="$3" messages="$4"
    local rss_file="$OUT_DIR/$label.rss" out="$OUT_DIR/$label.json"
    rm -f "$rss_file"
    sample_rss "$pid" "$rss_file" &
    SAMPLER_PID=$!
    "$LOADGEN_BIN" --uri "$uri" --broker-pid "$pid" --prefix "paging.backlog.$label" \
        --mode backlog --backlog "$messages" --size "$SIZE" --persistent --durable \
        --confirm 1000 --prefetch 1000 --multi-ack 100 --settle 2 --drain-timeout 60 \
        --label "$label" >"$out" 2>"$OUT_DIR/$label.err" || true
    kill "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    local line fill_end
    line="$(tail -1 "$out")"
    fill_end="$(jq -r '.backlog.fill_s + 2' <<<"$line")"
    local fill_peak drain_peak
    fill_peak="$(awk -v end="$fill_end" '$1 <= end && $2 > m {m = $2} END {print m + 0}' "$rss_file")"
    drain_peak="$(awk -v end="$fill_end" '$1 > end && $2 > m {m = $2} END {print m + 0}' "$rss_file")"
    jq -c --argjson f "$fill_peak" --argjson d "$drain_peak" \
        '. + {"rss_peak_fill_kib": $f, "rss_peak_drain_kib": $d}' <<<"$line" | tee -a "$RESULTS"
}

rm -rf "$DATA_DIR"
"$WARREN_BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA_DIR" \
    --memory-high-watermark "$BUDGET" >"$OUT_DIR/warren.log" 2>&1 &
WARREN_PID=$!
for _ in $(seq 100); do
    grep -q "listening on" "$OUT_DIR/warren.log" 2>/dev/null && break
    sleep 0.1
done
run_one "warren-$BACKLOG-$BUDGET" "amqp://guest:guest@127.0.0.1:$PORT/%2f" "$WARREN_PID" "$BACKLOG"
echo "data folder at its largest: see $OUT_DIR/warren.log; disk now: $(du -sh "$DATA_DIR" | cut -f1)" >&2
kill "$WARREN_PID"
wait "$WARREN_PID" 2>/dev/null || true
WARREN_PID=""
rm -rf "$DATA_DIR"

if [[ $WITH_RABBIT == 1 && -n "$RABBIT_PID" ]]; then
    run_one "rabbitmq-$RABBIT_BACKLOG" "$RABBIT_URI" "$RABBIT_PID" "$RABBIT_BACKLOG"
fi

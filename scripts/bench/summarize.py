#!/usr/bin/env python3
"""Turns compare.sh's JSON lines into the Warren-vs-RabbitMQ table of medians and ratios, and
writes it into docs/performance.md between the compare.sh markers."""

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone

BEGIN = "<!-- compare.sh: begin -->"
END = "<!-- compare.sh: end -->"

# (scenario, figure, how to read it from a report, unit, higher is better, goal ratio or None)
FIGURES = [
    ("S1", "delivered msg/s", lambda r: r.get("consume_rate"), "", True, 3.0),
    ("S1", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S2", "delivered msg/s", lambda r: r.get("consume_rate"), "", True, 3.0),
    ("S2", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S3", "delivered msg/s", lambda r: r.get("consume_rate"), "", True, 2.0),
    ("S3", "confirmed msg/s", lambda r: r.get("confirm_rate"), "", True, 2.0),
    ("S3", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S8", "confirmed msg/s", lambda r: r.get("confirm_rate"), "", True, None),
    ("S8", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S9", "confirmed msg/s", lambda r: r.get("confirm_rate"), "", True, None),
    ("S9", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S4", "delivered msg/s (10 queues)", lambda r: r.get("consume_rate"), "", True, 3.0),
    ("S4", "published msg/s", lambda r: r.get("publish_rate"), "", True, None),
    ("S4", "broker CPU µs/delivery", lambda r: (r.get("broker") or {}).get("cpu_us_per_delivery"), "", False, None),
    ("S5", "fill time s", lambda r: (r.get("backlog") or {}).get("fill_s"), "", False, None),
    ("S5", "broker RSS when full MiB", lambda r: kib_to_mib((r.get("backlog") or {}).get("rss_full_kib")), "", False, 0.25),
    ("S5", "RSS growth when full MiB", lambda r: growth_mib(r), "", False, 0.25),
    ("S5", "drain msg/s", lambda r: (r.get("backlog") or {}).get("drain_rate"), "", True, 2.0),
    ("S5", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S6", "broker RSS KiB/connection", lambda r: (r.get("idle") or {}).get("rss_per_connection_kib"), "", False, 0.25),
    ("S6W", "broker RSS KiB/connection", lambda r: (r.get("idle") or {}).get("rss_per_connection_kib"), "", False, None),
    ("E0", "fill (confirmed publish) msg/s", lambda r: (r.get("backlog") or {}).get("fill_rate"), "", True, None),
    ("E0", "ready after the fill + 3 s", lambda r: (r.get("backlog") or {}).get("ready_after_settle"), "", False, None),
    ("E0", "broker RSS after the fill + 3 s MiB", lambda r: kib_to_mib((r.get("backlog") or {}).get("rss_full_kib")), "", False, None),
    ("E0", "broker peak RSS MiB", lambda r: kib_to_mib((r.get("broker") or {}).get("rss_peak_kib")), "", False, None),
    ("E0", "drain msg/s", lambda r: (r.get("backlog") or {}).get("drain_rate"), "", True, None),
    ("E0", "broker CPU µs/msg published", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("E1", "fill (confirmed publish) msg/s", lambda r: (r.get("backlog") or {}).get("fill_rate"), "", True, None),
    ("E1", "ready after the fill + 3 s", lambda r: (r.get("backlog") or {}).get("ready_after_settle"), "", False, None),
    ("E1", "broker RSS after the fill + 3 s MiB", lambda r: kib_to_mib((r.get("backlog") or {}).get("rss_full_kib")), "", False, None),
    ("E1", "broker peak RSS MiB", lambda r: kib_to_mib((r.get("broker") or {}).get("rss_peak_kib")), "", False, None),
    ("E1", "drain msg/s", lambda r: (r.get("backlog") or {}).get("drain_rate"), "", True, None),
    ("E1", "broker CPU µs/msg published", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("R0", "published msg/s", lambda r: r.get("publish_rate"), "", True, None),
    ("R0", "delivered msg/s", lambda r: r.get("consume_rate"), "", True, None),
    ("R0", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("R1", "published msg/s", lambda r: r.get("publish_rate"), "", True, None),
    ("R1", "delivered msg/s", lambda r: r.get("consume_rate"), "", True, None),
    ("R1", "broker CPU µs/msg", lambda r: (r.get("broker") or {}).get("cpu_us_per_msg"), "", False, None),
    ("S7", "latency p50 µs", lambda r: (r.get("latency") or {}).get("p50_us"), "", False, None),
    ("S7", "latency p99 µs", lambda r: (r.get("latency") or {}).get("p99_us"), "", False, 0.5),
]

DESCRIPTIONS = {
    "S1": "1 producer → 1 consumer, 16 B, transient, autoack",
    "S2": "1 KiB, manual ack, prefetch 1000, multiple-ack every 100",
    "S3": "1 KiB persistent, durable queue, confirms window 1000, manual ack",
    "S8": "1 KiB persistent, durable queue, 1 publisher, confirms window 100",
    "S9": "1 KiB persistent, durable queue, 10 publishers, confirms window 100 each",
    "S4": "fanout to 10 queues, 10 consumers, 256 B, autoack",
    "S5": "backlog of {backlog:,} × 256 B (confirms 1000), then drain",
    "S6": "{idle_conns:,} idle connections, one channel each",
    "S6W": "2,000 idle connections, Warren only (RabbitMQ here is limited to 832 sockets)",
    "S7": "1,000 msg/s, 256 B, autoack: end-to-end latency",
    "E0": "backlog of {backlog:,} × 256 B without TTL (confirms 1000), 3 s, then drain",
    "E1": "the same with per-message TTLs: none / 1 s / 10 min in turn; the 1 s third expires while queued",
    "R0": "live run, 256 B, confirms 1000, manual ack, prefetch 1000, without TTL",
    "R1": "the same with per-message TTLs none / 60 s / 10 min (indexed, never due)",
}


def kib_to_mib(v):
    return None if v is None else v / 1024.0


def growth_mib(r):
    full = (r.get("backlog") or {}).get("rss_full_kib")
    before = (r.get("broker") or {}).get("rss_before_kib")
    if full is None or before is None:
        return None
    return (full - before) / 1024.0


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 1 else f"{v:.1f}"


def median_of(reports, scenario, side, read):
    values = []
    for r in reports:
        if r.get("scenario") == scenario and r.get("side") == side and r.get("ok"):
            v = read(r)
            if v is not None:
                values.append(float(v))
    return (statistics.median(values) if values else None), len(values)


def build_table(reports, params):
    runs = {}
    for r in reports:
        key = (r.get("scenario"), r.get("side"))
        ok, total = runs.get(key, (0, 0))
        runs[key] = (ok + (1 if r.get("ok") else 0), total + 1)
    lines = []
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(
        f"Written by `scripts/bench/compare.sh` on {stamp}: {params.rounds} interleaved rounds, "
        f"{params.duration:g} s of publishing per throughput run, medians of the runs that passed "
        "the loss/duplicate/order check (runs passed / run)."
    )
    lines.append("")
    lines.append("| Scenario | Figure | Warren | RabbitMQ | Warren/RabbitMQ | Goal |")
    lines.append("|---|---|---:|---:|---:|---|")
    shown = set()
    for scenario, figure, read, _unit, higher, goal in FIGURES:
        if not any(r.get("scenario") == scenario for r in reports):
            continue
        w, _ = median_of(reports, scenario, "warren", read)
        q, _ = median_of(reports, scenario, "rabbitmq", read)
        ratio = (w / q) if (w is not None and q) else None
        if goal is None:
            goal_text = ""
        else:
            met = None if ratio is None else (ratio >= goal if higher else ratio <= goal)
            sign = "≥" if higher else "≤"
            goal_text = f"{sign} {goal:g}×" + ("" if met is None else (" met" if met else " **not met**"))
        label = scenario
        if scenario not in shown:
            desc = DESCRIPTIONS[scenario].format(backlog=params.backlog, idle_conns=params.idle_conns)
            wr = runs.get((scenario, "warren"), (0, 0))
            rr = runs.get((scenario, "rabbitmq"), (0, 0))
            label = f"{scenario}: {desc} (W {wr[0]}/{wr[1]}, R {rr[0]}/{rr[1]})"
            shown.add(scenario)
        else:
            label = ""
        ratio_text = "–" if ratio is None else f"{ratio:.2f}×"
        lines.append(f"| {label} | {figure} | {fmt(w)} | {fmt(q)} | {ratio_text} | {goal_text} |")
    failures = [r for r in reports if not r.get("ok")]
    if failures:
        lines.append("")
        lines.append("Runs that failed (not in the medians):")
        lines.append("")
        for r in failures:
            errors = "; ".join(r.get("errors") or []) or "check failed: " + json.dumps(r.get("check"))
            lines.append(f"- {r.get('label')}: {errors[:300]}")
    return "\n".join(lines) + "\n"


def write_into(path, table):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + BEGIN + "\n" + table + END + tail
    else:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + table + END + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--idle-conns", type=int, default=500)
    p.add_argument("--write")
    params = p.parse_args()
    with open(params.results, encoding="utf-8") as f:
        reports = [json.loads(line) for line in f if line.strip()]
    table = build_table(reports, params)
    sys.stdout.write(table)
    if params.write:
        write_into(params.write, table)


if __name__ == "__main__":
    main()

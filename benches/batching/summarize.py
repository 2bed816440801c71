#!/usr/bin/env python3
"""Summarise one benches/batching/run.sh run directory as Markdown.

    summarize.py RUN_DIR               # the tables
    summarize.py RUN_DIR --saturation  # just the batched model's best throughput (integer inf/s)
"""

import csv
import glob
import json
import os
import re
import sys


def read_pa(path):
    """The row of a perf_analyzer -f CSV (one concurrency or rate per run)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    r = rows[-1]
    return {
        "throughput": float(r["Inferences/Second"]),
        "p50": int(r["p50 latency"]),
        "p90": int(r["p90 latency"]),
        "p99": int(r["p99 latency"]),
        "queue": int(r.get("Server Queue", 0) or 0),
        "compute": sum(int(r.get(k, 0) or 0) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")),
    }


def ceilings(run_dir):
    """{batch: {"before": inf/s, "after": inf/s}}"""
    out = {}
    for p in glob.glob(os.path.join(run_dir, "ceiling-b*-*.json")):
        m = re.search(r"ceiling-b(\d+)-(before|after)\.json$", p)
        if not m:
            continue
        with open(p) as f:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = json.load(f)["infer_per_sec"]
    return out


def pa_runs(run_dir, prefix):
    out = {}
    for p in glob.glob(os.path.join(run_dir, f"pa-{prefix}-c*.csv")):
        c = int(re.search(r"-c(\d+)\.csv$", p).group(1))
        r = read_pa(p)
        if r:
            r["unstable"] = os.path.exists(p[: -len(".csv")] + ".unstable")
            out[c] = r
    return dict(sorted(out.items()))


def main():
    run_dir = sys.argv[1]
    batched = pa_runs(run_dir, "fraud_mlp_batched")
    if "--saturation" in sys.argv:
        print(int(max((r["throughput"] for r in batched.values()), default=0)))
        return
    info = {}
    if os.path.exists(os.path.join(run_dir, "run.json")):
        with open(os.path.join(run_dir, "run.json")) as f:
            info = json.load(f)
    ceil = ceilings(run_dir)
    mean = {b: sum(v.values()) / len(v) for b, v in ceil.items() if v}
    best_b = max(mean, key=mean.get)
    best = mean[best_b]
    print(f"Run `{info.get('run_id', '?')}` — {info.get('date_utc', '?')}; {info.get('nproc', '?')} CPUs ({info.get('cpu', '?')}); "
          f"git {info.get('git', '?')}; intra-op threads {info.get('intra_op', '?')}; "
          f"max_queue_delay {info.get('delay_us', '?')} µs; perf_analyzer -b {info.get('client_batch', '?')}, "
          f"{info.get('measure_ms', '?')} ms windows.\n")
    print("In-process ONNX Runtime ceiling (same model.onnx, one session, back-to-back `run`), inferences/s:\n")
    print("| batch | before | after | mean |")
    print("|---:|---:|---:|---:|")
    for b in sorted(ceil):
        v = ceil[b]
        print(f"| {b} | {v.get('before', 0):,.0f} | {v.get('after', 0):,.0f} | {mean[b]:,.0f}{' (best)' if b == best_b else ''} |")
    print()
    print(f"Served through gRPC (perf_analyzer), ratio to the best ceiling ({best:,.0f} inf/s at batch {best_b}) "
          f"and to the batch-1 ceiling ({mean.get(1, 0):,.0f} inf/s):\n")
    print("| model | conc. | inf/s | / best ceiling | / batch-1 ceiling | p50 µs | p99 µs | server queue µs | server compute µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("fraud_mlp", "fraud_mlp_batched"):
        for c, r in pa_runs(run_dir, name).items():
            star = "*" if r["unstable"] else ""
            print(f"| {name} | {c}{star} | {r['throughput']:,.0f} | {100 * r['throughput'] / best:.2f} % | "
                  f"{100 * r['throughput'] / mean.get(1, float('nan')):.0f} % | {r['p50']:,} | {r['p99']:,} | {r['queue']:,} | {r['compute']:,} |")
    print()
    sat = info.get("saturated_rate")
    rows = []
    for pct in (50, 80):
        for dist in ("poisson", "constant"):
            p = os.path.join(run_dir, f"pa-rate{pct}-{dist}.csv")
            r = read_pa(p) if os.path.exists(p) else None
            if r:
                rows.append((pct, dist, r, os.path.exists(p[:-4] + ".unstable")))
    if rows:
        print(f"fraud_mlp_batched at a fixed request rate, {sat:,} inf/s being its saturated throughput above:\n")
        print("| load | arrivals | inf/s | p50 µs | p90 µs | p99 µs |")
        print("|---:|---|---:|---:|---:|---:|")
        for pct, dist, r, unstable in rows:
            print(f"| {pct} %{'*' if unstable else ''} | {dist} | {r['throughput']:,.0f} | {r['p50']:,} | {r['p90']:,} | {r['p99']:,} |")
        print()
    if any(r["unstable"] for n in ("fraud_mlp", "fraud_mlp_batched") for r in pa_runs(run_dir, n).values()):
        print("`*`: perf_analyzer could not stabilise at ±50 %; measured with --stability-percentage 100.")


if __name__ == "__main__":
    main()

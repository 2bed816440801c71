#!/usr/bin/env python3
"""Markdown report for one run directory of benches/minilm/run.sh.

Reads RUN_DIR/ceiling-{before,after}.json, RUN_DIR/pa-<model>-c<N>.csv (+ .probe) and
RUN_DIR/machine.txt; writes RUN_DIR/summary.md and summary.json and prints the Markdown.

    .venv/bin/python benches/minilm/summarize.py /tmp/switchyard-bench-minilm/latest
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import sys


def pa_row(path: str) -> dict[str, float] | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        return None
    if len(rows) < 2:
        return None
    out = {}
    for k, v in zip(rows[0], rows[1]):
        try:
            out[k.strip()] = float(v)
        except ValueError:
            pass
    return out


def probe_delta(path: str):
    """(inferences, executions, server CPU s) over one perf_analyzer run, or Nones."""
    try:
        with open(path) as f:
            p = [json.loads(x) for x in f if x.strip()]
        if len(p) == 2:
            return (p[1]["inference_count"] - p[0]["inference_count"],
                    p[1].get("execution_count", 0) - p[0].get("execution_count", 0),
                    p[1]["cpu_s"] - p[0]["cpu_s"])
    except (FileNotFoundError, ValueError, KeyError):
        pass
    return None, None, None


def other_cores(base: str, server_cpu: float | None) -> float | None:
    """Average cores used by processes other than the server and perf_analyzer during one run."""
    try:
        with open(base + ".stat") as f:
            (b0, t0), (b1, t1) = [map(float, x.split()) for x in f if x.strip()]
        client = 0.0
        with open(base + ".time") as f:
            for line in f:
                p = line.split()
                if len(p) == 2:
                    client += float(p[0]) + float(p[1])
    except (FileNotFoundError, ValueError):
        return None
    if server_cpu is None or t1 <= t0:
        return None
    machine = (b1 - b0) / os.sysconf("SC_CLK_TCK")
    return max(0.0, machine - server_cpu - client) / (t1 - t0)


def main() -> None:
    d = sys.argv[1]
    machine = {}
    if os.path.exists(os.path.join(d, "machine.txt")):
        for line in open(os.path.join(d, "machine.txt")):
            k, _, v = line.rstrip("\n").partition("=")
            machine[k] = v
    ceil = {}
    for when in ("before", "after"):
        try:
            ceil[when] = json.load(open(os.path.join(d, f"ceiling-{when}.json")))
        except FileNotFoundError:
            pass
    bests = [c["best"]["seq_per_sec"] for c in ceil.values()]
    ceiling = sum(bests) / len(bests) if bests else None
    b1s = [r["seq_per_sec"] for c in ceil.values() for r in c["results"] if r["batch"] == 1]
    ceiling_b1 = sum(b1s) / len(b1s) if b1s else None
    notes = {}
    if os.path.exists(os.path.join(d, "pa-notes.txt")):
        for line in open(os.path.join(d, "pa-notes.txt")):
            k, _, v = line.rstrip("\n").partition("\t")
            notes[k] = v

    L = []
    L.append("In-process ONNX Runtime (sequences/s, seq 128):\n")
    batches = [r["batch"] for r in next(iter(ceil.values()))["results"]] if ceil else []
    L.append("| ceiling | " + " | ".join(f"b={b}" for b in batches) + " | best |")
    L.append("|---|" + "---:|" * (len(batches) + 1))
    for when, c in ceil.items():
        L.append(f"| {when} | " + " | ".join(f"{r['seq_per_sec']:.1f}" for r in c["results"])
                 + f" | {c['best']['seq_per_sec']:.1f} (b={c['best']['batch']}) |")
    L.append("| other processes, cores (before/after) | " + " | ".join(
        "/".join(f"{c['results'][i].get('other_cores', float('nan')):.2f}" for c in ceil.values())
        for i in range(len(batches))) + " | |")
    L.append("")
    L.append(f"Served (perf_analyzer -i grpc, batch 1 per request, seq 128); ratio = infer/s / "
             f"{ceiling:.1f} (mean best-batch ceiling)"
             + (f"; ratio to b=1 = infer/s / {ceiling_b1:.1f}" if ceiling_b1 else "") + ":\n" if ceiling else "Served:\n")
    L.append("| model | concurrency | infer/s | p50 µs | p99 µs | avg batch | server CPU ms/infer | other cores | ratio | ratio to b=1 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    files = glob.glob(os.path.join(d, "pa-*-c*.csv")) + glob.glob(os.path.join(d, "pa-*-c*.probe"))
    keys = sorted({re.match(r"pa-(.+)-c(\d+)\.", os.path.basename(f)).groups() for f in files},
                  key=lambda k: (k[0], int(k[1])))
    for m, c in keys:
        base = os.path.join(d, f"pa-{m}-c{c}")
        r = pa_row(base + ".csv")
        inf, ex, cpu = probe_delta(base + ".probe")
        note = notes.get(f"{m} c{c}", "")
        if r is None:
            L.append(f"| {m} | {c} | n/a | | | | | | {note or 'no CSV'} | |")
            rows.append({"model": m, "concurrency": int(c), "error": note or "no CSV"})
            continue
        ips = r.get("Inferences/Second")
        row = {
            "model": m, "concurrency": int(c), "infer_per_sec": ips,
            "p50_us": r.get("p50 latency"), "p99_us": r.get("p99 latency"),
            "avg_batch": (inf / ex) if inf and ex else None,
            "server_cpu_ms_per_infer": (1e3 * cpu / inf) if inf and cpu is not None else None,
            "other_cores": other_cores(base, cpu),
            "ratio": (ips / ceiling) if ips and ceiling else None,
            "ratio_b1": (ips / ceiling_b1) if ips and ceiling_b1 else None,
            "note": note,
        }
        rows.append(row)
        f = lambda x, fmt: "n/a" if x is None else format(x, fmt)
        L.append(f"| {m} | {c} | {f(ips, '.1f')} | {f(row['p50_us'], '.0f')} | {f(row['p99_us'], '.0f')} | "
                 f"{f(row['avg_batch'], '.1f')} | {f(row['server_cpu_ms_per_infer'], '.1f')} | {f(row['other_cores'], '.2f')} | "
                 f"{f(row['ratio'], '.2f')}{' *' if note else ''} | {f(row['ratio_b1'], '.2f')} |")
    if notes:
        L.append("\n\\* " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    L.append("")
    L.append(f"Machine: {machine.get('nproc', '?')} CPUs, {machine.get('cpu', '?')}; {machine.get('date_utc', '?')}; "
             f"git {machine.get('git_rev', '?')}; load avg start {machine.get('loadavg_start', '?')}, end "
             f"{machine.get('loadavg_end', '?')}; settings measure_ms={machine.get('measure_ms', '?')}; "
             f"wall {machine.get('wall_s', '?')} s. perf_analyzer, server and ceiling share these CPUs.")
    text = "\n".join(L)
    print(text)
    with open(os.path.join(d, "summary.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(d, "summary.json"), "w") as fh:
        json.dump({"ceiling_best_mean": ceiling, "ceiling_b1_mean": ceiling_b1, "ceilings": ceil, "served": rows, "machine": machine}, fh, indent=2)


if __name__ == "__main__":
    main()

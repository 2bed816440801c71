#!/usr/bin/env python3
"""Turn one run directory of benches/grpc/run.sh into a Markdown report.

Reads  RUN_DIR/machine.json, RUN_DIR/ceiling-<model>-{before,after}.json and
RUN_DIR/pa-<model>-c<N>.csv (perf_analyzer ``-f ... --verbose-csv``), writes
RUN_DIR/summary.md and RUN_DIR/summary.json, and prints the Markdown.

    .venv/bin/python benches/grpc/summarize.py /tmp/switchyard-bench/<run>
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import sys


def read_pa_csv(path: str) -> dict[str, float] | None:
    """First data row of a perf_analyzer CSV as {column: number}."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        return None
    if len(rows) < 2:
        return None
    header, row = rows[0], rows[1]
    out = {}
    for k, v in zip(header, row):
        try:
            out[k.strip()] = float(v)
        except ValueError:
            pass
    return out


def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_cpu(base: str):
    """(server CPU s, inferences, client CPU s, executions) over one perf_analyzer invocation, or Nones."""
    server_s = infers = client_s = execs = None
    try:
        with open(base + ".probe") as f:
            pr = [json.loads(line) for line in f if line.strip()]
        if len(pr) == 2:
            server_s = pr[1]["cpu_s"] - pr[0]["cpu_s"]
            infers = pr[1]["inference_count"] - pr[0]["inference_count"]
            execs = pr[1].get("execution_count", 0) - pr[0].get("execution_count", 0)
    except (FileNotFoundError, ValueError, KeyError):
        pass
    try:
        tot, seen = 0.0, False
        with open(base + ".time") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    try:
                        tot += float(parts[0]) + float(parts[1])
                        seen = True
                    except ValueError:
                        pass
        client_s = tot if seen else None
    except FileNotFoundError:
        pass
    return server_s, infers, client_s, execs


def fmt(x, nd=0):
    if x is None:
        return "n/a"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    machine = load_json(os.path.join(d, "machine.json")) or {}
    models = machine.get("models") or sorted({
        re.match(r"pa-(.+)-c\d+\.csv", os.path.basename(p)).group(1)
        for p in glob.glob(os.path.join(d, "pa-*-c*.csv"))
    })
    notes = load_json(os.path.join(d, "pa-notes.json")) or {}

    rows = []
    for m in models:
        ceil_runs = [c for c in (load_json(os.path.join(d, f"ceiling-{m}-{w}.json")) for w in ("before", "after")) if c]
        ceil = sum(c["infer_per_sec"] for c in ceil_runs) / len(ceil_runs) if ceil_runs else None
        ceil_p50 = sum(c["p50_us"] for c in ceil_runs) / len(ceil_runs) if ceil_runs else None
        ceil_p99 = max(c["p99_us"] for c in ceil_runs) if ceil_runs else None
        paths = sorted(glob.glob(os.path.join(d, f"pa-{m}-c*.csv")),
                       key=lambda p: int(re.search(r"-c(\d+)\.csv$", p).group(1)))
        for p in paths:
            conc = int(re.search(r"-c(\d+)\.csv$", p).group(1))
            r = read_pa_csv(p)
            key = os.path.basename(p)
            if r is None:
                rows.append({"model": m, "concurrency": conc, "error": notes.get(key, "no CSV (perf_analyzer failed)")})
                continue
            served = r.get("Inferences/Second")
            queue = r.get("Server Queue")
            compute = sum(r.get(k, 0.0) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
            avg = r.get("Avg latency")
            server_s, infers, client_s, execs = read_cpu(p[: -len(".csv")])
            per = lambda x: (x * 1e6 / infers) if (x is not None and infers) else None
            rows.append({
                "model": m,
                "concurrency": conc,
                "served_infer_per_sec": served,
                "ceiling_infer_per_sec": ceil,
                "ceiling_runs_infer_per_sec": [c["infer_per_sec"] for c in ceil_runs],
                "ratio": (served / ceil) if (served and ceil) else None,
                "p50_us": r.get("p50 latency"),
                "p99_us": r.get("p99 latency"),
                "avg_us": avg,
                "server_queue_us": queue,
                "server_compute_input_us": r.get("Server Compute Input"),
                "server_compute_infer_us": r.get("Server Compute Infer"),
                "server_compute_output_us": r.get("Server Compute Output"),
                "server_compute_us": compute,
                "outside_server_us": (avg - queue - compute) if avg is not None and queue is not None else None,
                "server_cpu_us_per_infer": per(server_s),
                "client_cpu_us_per_infer": per(client_s),
                "inferences_in_run": infers,
                "executions_in_run": execs,
                "infer_per_exec": (infers / execs) if (infers and execs) else None,
                "ceiling_p50_us": ceil_p50,
                "ceiling_p99_us": ceil_p99,
                "note": notes.get(key, ""),
            })

    lines = []
    lines.append(f"Run `{machine.get('run_id', os.path.basename(d.rstrip('/')))}` — "
                 f"{machine.get('date_utc', '?')}; {machine.get('nproc', '?')} CPUs, {machine.get('cpu_model', '?')}; "
                 f"git {machine.get('git_rev', '?')}; server binary mtime {machine.get('server_binary_mtime_utc', '?')} "
                 f"(sha256 {machine.get('server_binary_sha256', '?')}…); onnxruntime {machine.get('onnxruntime', '?')}; "
                 f"server intra-op threads: {machine.get('intra_op_threads_desc', '?')}; "
                 f"perf_analyzer: batch 1, {machine.get('measure_ms', '?')} ms windows; "
                 f"ceiling: {machine.get('ceiling_seconds', '?')} s per run.")
    lines.append("")
    lines.append(f"Load average at start {machine.get('loadavg_start', '?')}, at end {machine.get('loadavg_end', '?')}. "
                 f"During the {machine.get('measure_wall_s', '?')} s of measurements the machine's CPUs were busy for "
                 f"{machine.get('machine_busy_cpu_s', '?')} CPU-s, {machine.get('our_cpu_s', '?')} of them this benchmark's "
                 f"(server, perf_analyzer, Python); **other processes used {machine.get('other_cpu_s', '?')} CPU-s, "
                 f"{machine.get('other_cores_avg', '?')} cores on average** (of {machine.get('nproc', '?')}).")
    lines.append("")
    lines.append("| model | conc. | served inf/s | ORT ceiling inf/s | served / ceiling | p50 µs | p99 µs | avg µs "
                 "| server queue µs | server compute µs (in+infer+out) | avg − queue − compute µs "
                 "| inf/exec | server CPU µs/inf | perf_analyzer CPU µs/inf | ceiling p50 / p99 µs |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['concurrency']} | {r['error']} |" + "  |" * 12)
            continue
        ceil_cell = fmt(r["ceiling_infer_per_sec"])
        comp = (f"{fmt(r['server_compute_us'])} ({fmt(r['server_compute_input_us'])}+"
                f"{fmt(r['server_compute_infer_us'])}+{fmt(r['server_compute_output_us'])})")
        served = fmt(r["served_infer_per_sec"]) + ("*" if r["note"] else "")
        lines.append(
            f"| {r['model']} | {r['concurrency']} | {served} | {ceil_cell} | "
            f"{fmt(r['ratio'] * 100 if r['ratio'] is not None else None, 1)} % | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | "
            f"{fmt(r['avg_us'])} | {fmt(r['server_queue_us'])} | {comp} | {fmt(r['outside_server_us'])} | "
            f"{fmt(r['infer_per_exec'], 2)} | {fmt(r['server_cpu_us_per_infer'])} | {fmt(r['client_cpu_us_per_infer'])} | "
            f"{fmt(r['ceiling_p50_us'], 1)} / {fmt(r['ceiling_p99_us'], 1)} |")
    lines.append("")
    seen = set()
    for r in rows:
        if "error" in r or r["model"] in seen:
            continue
        seen.add(r["model"])
        lines.append(f"- {r['model']} ceiling runs (before / after its perf_analyzer runs): "
                     + " / ".join(fmt(x) for x in r["ceiling_runs_infer_per_sec"]) + " inf/s")
    if any(r.get("note") for r in rows):
        lines.append("")
        for r in rows:
            if r.get("note"):
                lines.append(f"\\* {r['model']} c={r['concurrency']}: {r['note']}")
    lines.append("")
    lines.append("Ceiling = same model file and batch size in-process (onnxruntime Python, one session, back-to-back "
                 "`run` calls), mean of one run before and one after the model's perf_analyzer runs (both shown). "
                 "Latencies are perf_analyzer client-side (p50/p99/avg) and server-reported averages "
                 "(queue, compute); `avg − queue − compute` is everything outside the model's queue and execution: "
                 "gRPC/HTTP2, protobuf, tensor copies, scheduling, and the perf_analyzer client itself. "
                 "CPU µs/inf = process CPU time (user+sys, all threads) over the whole perf_analyzer invocation "
                 "(warm-up and all windows) divided by the inferences the server counted in it; "
                 "inf/exec = inferences per model execution over the same span (1.00 = every request ran alone).")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    print(md, end="")


if __name__ == "__main__":
    main()

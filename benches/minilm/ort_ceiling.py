#!/usr/bin/env python3
"""In-process ONNX Runtime throughput of the MiniLM model at several batch sizes (the ceiling).

    .venv/bin/python benches/minilm/ort_ceiling.py /tmp/minilm_repo/minilm/1/model.onnx \
        --input-data /tmp/minilm_repo/input_data.json --batches 1,2,4,8,16,32,64 \
        --seconds 4 --intra-op-threads 0 -o ceiling.json

Same session set-up as benches/grpc/ort_ceiling.py and as the server: ORT's default
SessionOptions, CPU execution provider, one session, intra-op threads left to ORT unless
``--intra-op-threads N`` (N > 0; the server's ``--ort-intra-op-threads N``). For each batch
size: warm-up calls, then back-to-back ``session.run`` for ``--seconds`` (and at least
``--min-calls`` calls, since one batch-64 call takes seconds on a small CPU). Rows come from
the perf_analyzer input data (real token ids, all of length --seq), cycled to fill the batch;
without --input-data every token is 1 and the mask all ones (same cost: no packing).

Prints one JSON object (and writes it to -o): per-batch sequences/s and call latencies, and
``best``: the batch with the highest sequences/s -- the figure the served throughput is
compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import onnxruntime as ort

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def rows(input_data: str | None, seq: int) -> dict[str, np.ndarray]:
    """[n, seq] int64 arrays per input."""
    if not input_data:
        return {n: np.ones((1, seq), np.int64) for n in NAMES}
    with open(input_data) as f:
        data = json.load(f)["data"]
    out = {n: np.array([d[n]["content"] for d in data], dtype=np.int64) for n in NAMES}
    for n, a in out.items():
        if a.shape[1] != seq:
            raise SystemExit(f"ort_ceiling: {input_data}: {n} has length {a.shape[1]}, not --seq {seq}")
    return out


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to model.onnx")
    ap.add_argument("--input-data", help="perf_analyzer --input-data JSON (token ids of length --seq)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64", help="comma-separated batch sizes")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed loop per batch size (default 4)")
    ap.add_argument("--min-calls", type=int, default=3, help="timed calls per batch size at least (default 3)")
    ap.add_argument("--warmup-calls", type=int, default=2)
    ap.add_argument("--intra-op-threads", type=int, default=0, help="0 = ORT default (as the server's default)")
    ap.add_argument("--label", default="")
    ap.add_argument("-o", "--output")
    a = ap.parse_args()

    so = ort.SessionOptions()
    if a.intra_op_threads > 0:
        so.intra_op_num_threads = a.intra_op_threads
    sess = ort.InferenceSession(a.model, sess_options=so, providers=["CPUExecutionProvider"])
    src = rows(a.input_data, a.seq)

    results = []
    for b in (int(x) for x in a.batches.split(",")):
        idx = np.arange(b) % next(iter(src.values())).shape[0]
        feeds = {n: np.ascontiguousarray(src[n][idx]) for n in NAMES}
        for _ in range(a.warmup_calls):
            sess.run(None, feeds)
        lat = []
        busy0, own0 = machine_busy_s(), time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + a.seconds
        now = t0
        while now < deadline or len(lat) < a.min_calls:
            s = time.perf_counter()
            sess.run(None, feeds)
            now = time.perf_counter()
            lat.append(now - s)
        elapsed = now - t0
        # cores used by other processes meanwhile (this one's threads excluded)
        other = max(0.0, (machine_busy_s() - busy0) - (time.process_time() - own0)) / elapsed
        lat_us = np.array(lat) * 1e6
        r = {
            "batch": b,
            "calls": len(lat),
            "seconds": round(elapsed, 3),
            "seq_per_sec": round(len(lat) * b / elapsed, 2),
            "p50_us": round(float(np.percentile(lat_us, 50)), 1),
            "p99_us": round(float(np.percentile(lat_us, 99)), 1),
            "other_cores": round(other, 2),
        }
        results.append(r)
        print(f"ort_ceiling: batch {b:3d}: {r['seq_per_sec']:8.2f} seq/s  p50 {r['p50_us'] / 1e3:9.1f} ms"
              f"  ({r['calls']} calls, other processes {other:.2f} cores)", file=__import__("sys").stderr)

    best = max(results, key=lambda r: r["seq_per_sec"])
    res = {
        "tool": "minilm_ort_ceiling",
        "label": a.label,
        "model": a.model,
        "seq": a.seq,
        "intra_op_threads": a.intra_op_threads,
        "onnxruntime": ort.__version__,
        "onnxruntime_capi": os.path.dirname(ort.capi.__file__) if hasattr(ort, "capi") else None,
        "python": platform.python_version(),
        "results": results,
        "best": best,
        "loadavg": list(os.getloadavg()),
    }
    text = json.dumps(res)
    print(text)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

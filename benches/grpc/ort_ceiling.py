#!/usr/bin/env python3
"""In-process ONNX Runtime throughput "ceiling" for one model file at one batch size.

The ceiling is: the same model file and batch size, in this process, one
InferenceSession, back-to-back ``session.run`` calls, no network, no server.
Session options match Switchyard's default: ORT's default SessionOptions
(the server's ``ort`` session builder leaves them alone), CPU execution
provider, intra-op threads left to ORT unless ``--intra-op-threads N`` (N > 0)
is given, which is what the server's ``--ort-intra-op-threads N`` /
``intra_op_thread_count`` does.

Inputs are random tensors built once from the model's own input metadata (the
symbolic batch axis gets ``--batch``), like perf_analyzer's default random data.

Each timed call is one ``session.run`` (Python -> C++ -> Python), so the few
microseconds of Python binding overhead per call are *included* in the
ceiling: it slightly understates what ORT itself can do.

Optional ``--threads T`` emulates concurrent callers: T Python threads call
back-to-back (ORT releases the GIL inside ``run``), sharing one session
(``--sessions shared``, like one server instance receiving concurrent
requests) or one session per thread (``--sessions per-thread``, like
``instance_group { count: T }``). The default, T = 1, is the ceiling.

Prints one JSON object on stdout (and writes it to ``-o`` if given).

    .venv/bin/python benches/grpc/ort_ceiling.py model_repository/simple/1/model.onnx \
        --batch 1 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

# ONNX tensor type string -> numpy dtype, for the types the example models use
# (and the other plain numeric ones).
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def make_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if intra_op_threads > 0:
        so.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def make_inputs(sess: ort.InferenceSession, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in _DTYPES:
            sys.exit(f"ort_ceiling: input '{i.name}' has unsupported type {i.type}")
        shape = []
        for axis, d in enumerate(i.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif axis == 0:
                shape.append(batch)  # symbolic batch axis
            else:
                sys.exit(f"ort_ceiling: input '{i.name}' has a variable non-batch dim {i.shape}")
        if isinstance(i.shape[0], int) and i.shape[0] != batch:
            sys.exit(f"ort_ceiling: input '{i.name}' has a fixed batch dim {i.shape[0]} != --batch {batch}")
        dt = _DTYPES[i.type]
        if dt is np.bool_:
            a = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            a = rng.integers(0, 100, size=shape).astype(dt)
        else:
            a = rng.standard_normal(size=shape).astype(dt)
        feeds[i.name] = a
    return feeds


def worker(sess, feeds, warmup_s, seconds, start_barrier, out_lat, out_span):
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        sess.run(None, feeds)
    start_barrier.wait()
    lat = []
    append = lat.append
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    now = t0
    while now < deadline:
        s = clock()
        sess.run(None, feeds)
        now = clock()
        append(now - s)
    out_lat.append(lat)
    out_span.append((t0, now))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="path to model.onnx")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed loop length (default 3)")
    ap.add_argument("--warmup-seconds", type=float, default=0.5, help="warm-up per thread (default 0.5)")
    ap.add_argument("--intra-op-threads", type=int, default=0, help="0 = ORT default (as the server's default)")
    ap.add_argument("--threads", type=int, default=1, help="concurrent callers (default 1 = the ceiling)")
    ap.add_argument("--sessions", choices=["shared", "per-thread"], default="shared",
                    help="with --threads > 1: one shared session or one per thread")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="free text copied into the JSON")
    ap.add_argument("-o", "--output", help="also write the JSON here")
    a = ap.parse_args()
    if a.batch < 1 or a.threads < 1 or a.seconds <= 0:
        sys.exit("ort_ceiling: --batch, --threads and --seconds must be positive")

    n_sessions = a.threads if a.sessions == "per-thread" else 1
    sessions = [make_session(a.model, a.intra_op_threads) for _ in range(n_sessions)]
    feeds = make_inputs(sessions[0], a.batch, a.seed)

    barrier = threading.Barrier(a.threads)
    lats: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=worker,
                         args=(sessions[k % n_sessions], feeds, a.warmup_seconds, a.seconds, barrier, lats, spans))
        for k in range(a.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    all_lat = np.concatenate([np.asarray(x, dtype=np.int64) for x in lats]) / 1e3  # us
    t0 = min(s for s, _ in spans)
    t1 = max(e for _, e in spans)
    elapsed = (t1 - t0) / 1e9
    calls = int(all_lat.size)
    res = {
        "tool": "ort_ceiling",
        "label": a.label,
        "model": a.model,
        "batch": a.batch,
        "threads": a.threads,
        "sessions": n_sessions,
        "intra_op_threads": a.intra_op_threads,
        "providers": sessions[0].get_providers(),
        "onnxruntime": ort.__version__,
        "onnxruntime_capi": os.path.dirname(ort.capi.__file__) if hasattr(ort, "capi") else None,
        "python": platform.python_version(),
        "seconds": round(elapsed, 3),
        "calls": calls,
        "calls_per_sec": round(calls / elapsed, 1),
        "infer_per_sec": round(calls * a.batch / elapsed, 1),
        "mean_us": round(float(all_lat.mean()), 2),
        "p50_us": round(float(np.percentile(all_lat, 50)), 2),
        "p90_us": round(float(np.percentile(all_lat, 90)), 2),
        "p99_us": round(float(np.percentile(all_lat, 99)), 2),
        "max_us": round(float(all_lat.max()), 2),
        "loadavg": list(os.getloadavg()),
    }
    text = json.dumps(res)
    print(text)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""Driver of benches/reload/run.sh: load/unload cycles under light traffic, RSS and latency."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np
import tritonclient.grpc as grpcclient


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def simple_inputs():
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    ins = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in ins:
        i.set_data_from_numpy(a)
    return ins


def fraud_inputs(client):
    meta = client.get_model_metadata("fraud_mlp")
    (inp,) = meta.inputs
    width = int(inp.shape[-1])
    x = grpcclient.InferInput(inp.name, [1, width], inp.datatype)
    x.set_data_from_numpy(np.full((1, width), 0.1, dtype=np.float32))
    return x


def traffic(url: str, rate_hz: float, stop, results) -> None:
    """Light traffic: `simple` back to back with a 1/rate_hz pause; (start, seconds) each."""
    c = grpcclient.InferenceServerClient(url)
    ins = simple_inputs()
    lat, errors = [], []
    while not stop.is_set():
        ts, t0 = time.monotonic(), time.perf_counter()
        try:
            c.infer("simple", ins)
            lat.append((ts, time.perf_counter() - t0))
        except Exception as e:  # counted and reported
            errors.append(str(e))
        time.sleep(1.0 / rate_hz)
    results.put((lat, errors))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--cycles", type=int, default=500)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--rate-hz", type=float, default=50)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    # The traffic runs in its own process, so this process's GIL never delays it.
    stop = mp.Event()
    results: mp.Queue = mp.Queue()
    t = mp.Process(target=traffic, args=(a.grpc, a.rate_hz, stop, results), daemon=True)
    t.start()
    c = grpcclient.InferenceServerClient(a.grpc)
    rss = [(0, rss_mib(a.pid))]
    load_s = []
    starts = []  # monotonic start time of each cycle
    t_start = time.perf_counter()
    x = None
    for i in range(1, a.cycles + 1):
        starts.append(time.monotonic())
        t0 = time.perf_counter()
        c.load_model("fraud_mlp")
        load_s.append(time.perf_counter() - t0)
        if x is None:  # fraud_mlp's metadata is there once it loaded
            x = fraud_inputs(c)
        for _ in range(4):
            c.infer("fraud_mlp", [x])
        c.unload_model("fraud_mlp")
        rss.append((i, rss_mib(a.pid)))
    starts.append(time.monotonic())
    stop.set()
    lat_t, errors = results.get(timeout=30)
    t.join(timeout=5)
    elapsed = time.perf_counter() - t_start
    # (cycle, seconds): the cycle during which each traffic request started.
    lat = [(int(np.searchsorted(starts, ts, side="right")), s) for ts, s in lat_t]

    def window(lo: int, hi: int):
        xs = np.array([s for k, s in lat if lo <= k <= hi]) * 1e3
        return {"n": int(xs.size), "p50_ms": float(np.percentile(xs, 50)), "p99_ms": float(np.percentile(xs, 99))}

    w = a.window
    first, last = window(1, w), window(a.cycles - w + 1, a.cycles)
    rss_first = float(np.mean([r for k, r in rss if 1 <= k <= w]))
    rss_last = float(np.mean([r for k, r in rss if a.cycles - w < k <= a.cycles]))
    out = {
        "cycles": a.cycles,
        "seconds": elapsed,
        "rss_mib_before_first_cycle": rss[0][1],
        "rss_mib_mean_first_window": rss_first,
        "rss_mib_mean_last_window": rss_last,
        "rss_mib_max": max(r for _, r in rss),
        "latency_first_window": first,
        "latency_last_window": last,
        "load_ms_first_window_p50": float(np.percentile(np.array(load_s[:w]) * 1e3, 50)),
        "load_ms_last_window_p50": float(np.percentile(np.array(load_s[-w:]) * 1e3, 50)),
        "traffic_requests": len(lat),
        "traffic_errors": len(errors),
        "rss_samples": rss[:: max(1, a.cycles // 20)],
    }
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"| | cycles 1-{w} | cycles {a.cycles - w + 1}-{a.cycles} | ratio end/start |")
    print("|---|---|---|---|")
    print(f"| server RSS, MiB (mean) | {rss_first:.1f} | {rss_last:.1f} | {rss_last / rss_first:.3f} |")
    print(f"| `simple` p50, ms | {first['p50_ms']:.3f} | {last['p50_ms']:.3f} | {last['p50_ms'] / first['p50_ms']:.2f} |")
    print(f"| `simple` p99, ms | {first['p99_ms']:.3f} | {last['p99_ms']:.3f} | {last['p99_ms'] / first['p99_ms']:.2f} |")
    lf, ll = out["load_ms_first_window_p50"], out["load_ms_last_window_p50"]
    print(f"| fraud_mlp load call p50, ms | {lf:.1f} | {ll:.1f} | {ll / lf:.2f} |")
    print(f"RSS before the first cycle {rss[0][1]:.1f} MiB, max {out['rss_mib_max']:.1f} MiB; "
          f"{len(lat)} traffic requests, {len(errors)} errors; {elapsed:.1f} s")
    if errors:
        print("first error:", errors[0])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Roofline ceilings of this GPU, measured with PyTorch (issue 6's roofline figure).

Writes CSV rows (what, shape, dtype, value, unit) to --out and prints them:
  * dense matmul throughput, FP16 (FP32 accumulate) and BF16 through cuBLAS (torch.matmul),
    INT8 through torch._int_mm (cuBLASLt IMMA, INT32 accumulate), TFLOP/s (TOP/s for INT8);
  * memory bandwidth: a large device-to-device copy, bytes read + bytes written, GB/s.
Timing: CUDA events, warm-up first, median of --reps, random inputs (never zeros), several
input sets rotated so repeated runs do not measure the L2 cache.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

import torch


def time_ms(fn, reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def matmul_rate(n: int, dtype: torch.dtype, reps: int) -> float:
    sets = []
    for _ in range(3):
        if dtype == torch.int8:
            x = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
            y = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
        else:
            x = torch.randn(n, n, device="cuda", dtype=dtype)
            y = torch.randn(n, n, device="cuda", dtype=dtype)
        sets.append((x, y))
    i = [0]

    def run():
        x, y = sets[i[0] % 3]
        i[0] += 1
        if dtype == torch.int8:
            torch._int_mm(x, y)
        else:
            torch.matmul(x, y)

    ms = time_ms(run, reps)
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def copy_bandwidth(nbytes: int, reps: int) -> float:
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps)
    return 2.0 * nbytes / (ms * 1e-3) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("roofline: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    dev = torch.cuda.get_device_properties(0)
    print(f"roofline: {dev.name}, {dev.multi_processor_count} SMs, torch {torch.__version__}")
    rows = []
    for dtype, unit in ((torch.float16, "TFLOP/s"), (torch.bfloat16, "TFLOP/s"), (torch.int8, "TOP/s")):
        try:
            rows.append(("matmul", f"{a.n}x{a.n}x{a.n}", str(dtype).split(".")[1],
                         f"{matmul_rate(a.n, dtype, a.reps):.1f}", unit))
        except Exception as e:  # report, don't hide: the row says what failed
            rows.append(("matmul", f"{a.n}x{a.n}x{a.n}", str(dtype).split(".")[1], "FAILED", repr(e)[:200]))
    nbytes = 4 << 30
    rows.append(("d2d_copy", f"{nbytes >> 20} MiB", "-", f"{copy_bandwidth(nbytes, a.reps):.0f}",
                 "GB/s (read+write)"))
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["what", "shape", "dtype", "value", "unit"])
        w.writerows(rows)
    for r in rows:
        print("roofline: " + " | ".join(r))
    return 1 if any(r[3] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Table of benches/shadow/run.sh: primary p50/p99/throughput per model, ratio to no shadow."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def read(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    r = rows[-1]
    return {
        "tput": float(r["Inferences/Second"]),
        "p50": float(r["p50 latency"]) / 1000.0,
        "p99": float(r["p99 latency"]) / 1000.0,
    }


def main() -> None:
    run = Path(sys.argv[1])
    models = ["fraud_plain", "fraud_shadow", "fraud_slow"]
    for load in ["rate", "c1"]:
        agg = {}
        for m in models:
            vals = [read(p) for p in sorted(run.glob(f"pa-{m}-{load}-r*.csv"))]
            vals = [v for v in vals if v]
            if not vals:
                continue
            agg[m] = {k: statistics.median(v[k] for v in vals) for k in ("tput", "p50", "p99")}
        if "fraud_plain" not in agg:
            print(f"{load}: no baseline")
            continue
        base = agg["fraud_plain"]
        print(f"\n{load} (median of rounds):")
        print("| primary | inf/s | p50 ms | p99 ms | p50 / no shadow | p99 / no shadow |")
        print("|---|---|---|---|---|---|")
        for m, v in agg.items():
            print(f"| {m} | {v['tput']:.0f} | {v['p50']:.3f} | {v['p99']:.3f} | "
                  f"{v['p50'] / base['p50']:.2f} | {v['p99'] / base['p99']:.2f} |")
    counters = run / "shadow-counters.txt"
    if counters.exists():
        print("\nshadow counters:")
        print(counters.read_text().strip())


if __name__ == "__main__":
    main()

"""Driver of benches/canary/run.sh: traffic during a canary rollback, and the summary."""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def drive(a) -> None:
    x = np.full((1, 30), 0.1, dtype=np.float32)
    rows: list[tuple[float, str]] = []  # (wall-clock ms when sent, answering version)
    lock = threading.Lock()
    per = a.requests // a.clients

    def client() -> None:
        c = grpcclient.InferenceServerClient(a.grpc)
        t = grpcclient.InferInput("features", [1, 30], "FP32")
        t.set_data_from_numpy(x)
        local = []
        for _ in range(per):
            sent = time.time() * 1e3
            try:
                v = c.infer("fraud_mlp", [t]).get_response().model_version
            except InferenceServerException:
                v = "2"  # only the faulty canary fails
            local.append((sent, v))
        with lock:
            rows.extend(local)

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = requests.get(f"http://{a.http}/v2/models/fraud_mlp/deployment", timeout=10).json()
    verdict = state["canary"]["rollback"]
    breach = float(verdict["time_ms"])
    canary_sent = sorted(s for s, v in rows if v == "2")
    after = [s for s in canary_sent if s > breach]
    out = {
        "state": state["canary"]["state"],
        "gate": verdict["gate"],
        "canary_requests_in_window_at_breach": verdict["canary_requests"],
        "canary_total": len(canary_sent),
        "canary_sent_after_breach": len(after),
        "last_canary_start_after_breach_ms": (max(after) - breach) if after else 0.0,
        "requests": len(rows),
    }
    Path(a.json).write_text(json.dumps(out, indent=1))


def summarize(run_dir: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(run_dir.glob("run*.json"))]
    print("| run | state | gate | canary requests (all) | of them sent after the breach | last canary request started after the breach, ms |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(f"| {i} | {r['state']} | {r['gate']} | {r['canary_total']} | {r['canary_sent_after_breach']} | "
              f"{r['last_canary_start_after_breach_ms']:.2f} |")
    print(f"median last-canary-start after breach: "
          f"{statistics.median(r['last_canary_start_after_breach_ms'] for r in runs):.2f} ms; "
          f"max canary requests in total: {max(r['canary_total'] for r in runs)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc")
    ap.add_argument("--http")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--json")
    ap.add_argument("--summarize", type=Path)
    a = ap.parse_args()
    if a.summarize:
        summarize(a.summarize)
    else:
        drive(a)


if __name__ == "__main__":
    main()

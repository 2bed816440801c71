#!/usr/bin/env python3
"""Print one JSON line: a process's CPU time so far and a model version's inference and execution counts.

    probe.py GRPC_PORT PID MODEL VERSION

run.sh calls it right before and right after each perf_analyzer run; the
differences give the server's CPU time per inference over that whole run
(warm-up and every measurement window included, ORT's worker threads too).
"""

import json
import os
import sys

import tritonclient.grpc as grpcclient


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    port, pid, model, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = grpcclient.InferenceServerClient(f"localhost:{port}")
    stats = c.get_inference_statistics(model, version, as_json=True)
    ms = stats.get("model_stats", [])
    count = sum(int(s.get("inference_count", 0)) for s in ms)
    execs = sum(int(s.get("execution_count", 0)) for s in ms)
    print(json.dumps({"cpu_s": cpu_seconds(pid), "inference_count": count, "execution_count": execs}))


if __name__ == "__main__":
    main()

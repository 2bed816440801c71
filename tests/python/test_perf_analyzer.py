"""perf_analyzer (the C++ Triton client) against the server over gRPC."""

from __future__ import annotations

import re
import subprocess

import pytest
from tritonclient.grpc import service_pb2 as pb

import sy_helpers as h

PERF = h.ROOT / "scripts" / "perf_analyzer"
pytestmark = pytest.mark.perf

COMMON = [
    "-i", "grpc",
    "--measurement-mode", "count_windows",
    "--measurement-request-count", "150",
    "--stability-percentage", "100",
    "--max-trials", "10",
]


def stats(stub, model, version=""):
    resp = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model, version=version), timeout=h.RPC_TIMEOUT_S)
    return {s.version: s for s in resp.model_stats}


UNSTABLE = "Failed to obtain stable measurement"


def run_perf(server, *args: str) -> str:
    """Runs perf_analyzer; these tests check the protocol, not speed, so a run that only failed
    perf_analyzer's own stability criterion (a busy 2-core machine) is tried once more."""
    cmd = [str(PERF), "-u", server.url, *COMMON, *args]
    for attempt in range(2):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=h.ROOT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"perf_analyzer timed out: {' '.join(cmd)}\n{e.stdout}\n{e.stderr}")
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or UNSTABLE not in out:
            break
    assert proc.returncode == 0, f"perf_analyzer exit code {proc.returncode}: {' '.join(cmd)}\n{out}"
    return out


def check_report(out: str, concurrencies=(1, 2)) -> int:
    assert "Throughput" in out, out
    assert "Server:" in out, f"no server-side statistics in the report:\n{out}"
    assert "Inference count" in out and "queue" in out, out
    assert "Successful request count" in out or "Execution count" in out, out
    for c in concurrencies:
        assert re.search(rf"Concurrency: {c}, throughput: [0-9.]+ infer/sec", out), f"no result for concurrency {c}:\n{out}"
    counts = [int(n) for n in re.findall(r"Inference count: (\d+)", out)]
    assert counts and min(counts) > 0, out
    return max(counts)


def test_perf_analyzer_version():
    proc = subprocess.run([str(PERF), "--version"], capture_output=True, text=True, timeout=30)
    assert "Perf Analyzer" in proc.stdout + proc.stderr


def test_perf_simple(server, stub):
    before = stats(stub, "simple")["1"].inference_count
    out = run_perf(server, "-m", "simple", "--concurrency-range", "1:2")
    measured = check_report(out)
    after = stats(stub, "simple")["1"].inference_count
    assert after - before >= measured


def test_perf_fraud_mlp_version_1(server, stub):
    before = stats(stub, "fraud_mlp")
    out = run_perf(server, "-m", "fraud_mlp", "-x", "1", "--concurrency-range", "1:2")
    measured = check_report(out)
    after = stats(stub, "fraud_mlp")
    assert after["1"].inference_count - before["1"].inference_count >= measured
    assert after["2"].inference_count == before["2"].inference_count  # -x 1 pins version 1
    assert after["1"].inference_stats.queue.count > before["1"].inference_stats.queue.count


def test_perf_fraud_mlp_latest_batched(server, stub):
    """No -x: perf_analyzer finds the version whose queue count grew (2, the latest)."""
    before = stats(stub, "fraud_mlp")
    out = run_perf(server, "-m", "fraud_mlp", "-b", "8", "--concurrency-range", "1")
    check_report(out, concurrencies=(1,))
    after = stats(stub, "fraud_mlp")
    grown = after["2"].inference_count - before["2"].inference_count
    assert grown > 0 and grown % 8 == 0, grown
    assert after["1"].inference_count == before["1"].inference_count
    bs = {b.batch_size: b.compute_infer.count for b in after["2"].batch_stats}
    assert bs.get(8, 0) > 0, bs


def test_perf_simple_string_async(server, stub):
    before = stats(stub, "simple_string")["1"]
    # the strings must be decimal integers for this model
    out = run_perf(server, "-m", "simple_string", "-a", "--string-data", "7", "--concurrency-range", "2")
    check_report(out, concurrencies=(2,))
    after = stats(stub, "simple_string")["1"]
    assert after.inference_count > before.inference_count
    assert after.inference_stats.fail.count == before.inference_stats.fail.count


def test_perf_simple_identity_variable_shape(server, stub):
    before = stats(stub, "simple_identity")["1"].inference_count
    out = run_perf(server, "-m", "simple_identity", "--shape", "INPUT0:5", "--string-length", "12",
                   "--concurrency-range", "1")
    check_report(out, concurrencies=(1,))
    assert stats(stub, "simple_identity")["1"].inference_count > before

"""Shadow mode on fraud_mlp (versions 1 and 2 disagree on a few percent of inputs): the client
only ever sees the primary's answer; a failing, slow or saturated shadow causes zero primary
errors and is counted; diverging pairs land in the divergence log from --shadow-log-dir."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

import sy_helpers as h

TIMEOUT = 20.0


def shadow_counts(srv, version: str = "2") -> dict[str, int]:
    """switchyard_shadow_requests_total of fraud_mlp's shadow `version`, by outcome."""
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    out = {}
    for line in text.splitlines():
        if not line.startswith("switchyard_shadow_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("model") == "fraud_mlp" and labels.get("version") == version:
            out[labels["outcome"]] = int(float(line.rsplit(" ", 1)[1]))
    return out


def wait_counts(srv, pred, what: str, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        c = shadow_counts(srv)
        if pred(c):
            return c
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {c}")
        time.sleep(0.1)


def repo_with(make_repo, deployment: str, params: dict[str, str] | None = None) -> Path:
    return h.fraud_repo_with(make_repo, deployment, params)


SHADOW = """stable = 1
[[shadow]]
version = 2
max_in_flight = {cap}
timeout_ms = {timeout}
[shadow.compare]
output = "probabilities"
element = 1
threshold = 0.5
"""


def send(srv, n: int, batch: int = 1, seed: int = 0, version: str = "") -> list[tuple[str, np.ndarray]]:
    """n sequential unversioned requests; (answering version, probabilities) of each."""
    c = srv.client()
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = h.fraud_inputs(batch, seed=int(rng.integers(1 << 30)))["features"]
        t = grpcclient.InferInput("features", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        r = c.infer("fraud_mlp", [t], model_version=version, request_id=f"r{i}",
                    client_timeout=TIMEOUT)
        out.append((r.get_response().model_version, r.as_numpy("probabilities")))
    return out


@pytest.mark.parametrize("log", ["all", "divergent"])
def test_shadow_answers_never_reach_the_client(make_repo, switchyard, tmp_path, log):
    logdir = tmp_path / "shadow-logs"
    deployment = SHADOW.format(cap=64, timeout=2000) + f'log = "{log}"\n'
    srv = switchyard(repo_with(make_repo, deployment), "--shadow-log-dir", str(logdir))
    answers = send(srv, 400)
    assert {v for v, _ in answers} == {"1"}
    c = wait_counts(srv, lambda c: c.get("compared", 0) >= 400, "400 comparisons")
    assert c.get("agreed", 0) + c.get("diverged", 0) == c["compared"]
    assert c.get("errored", 0) == 0 and c.get("timed_out", 0) == 0
    # The two versions disagree on some inputs: the decisions diverge on a few of them.
    assert 0 < c.get("diverged", 0) < 400 * 0.5, c
    path = logdir / "divergence.jsonl"
    want = c["compared"] if log == "all" else c["diverged"]
    deadline = time.monotonic() + TIMEOUT
    while len(path.read_text().splitlines()) < want and time.monotonic() < deadline:
        time.sleep(0.05)  # the log is written off the request path
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == want
    assert sum(not r["agree"] for r in records) == c["diverged"]
    assert all(r["kind"] == "shadow" and r["threshold"] == 0.5 for r in records)
    for r in records:
        assert r["agree"] == (r["primary_decision"] == r["shadow_decision"])
    rec = next(r for r in records if not r["agree"])
    assert rec["model"] == "fraud_mlp" and rec["primary_version"] == 1 and rec["shadow_version"] == 2
    assert (rec["primary_score"] > 0.5) == rec["primary_decision"]
    assert rec["request_id"].startswith("r") and rec["shadow_latency_ms"] > 0
    # Every compared pair with scores lands in the score-delta histogram.
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    assert f'switchyard_shadow_score_delta_count{{model="fraud_mlp",version="2"}} {c["compared"]}' in text
    assert 'switchyard_shadow_psi{model="fraud_mlp",version="2"}' in text


def test_explicit_version_requests_are_not_shadowed(make_repo, switchyard):
    srv = switchyard(repo_with(make_repo, SHADOW.format(cap=64, timeout=2000)))
    send(srv, 50, version="1")
    time.sleep(0.5)
    assert shadow_counts(srv).get("compared", 0) == 0


def test_failing_shadow_causes_no_primary_error(make_repo, switchyard):
    repo = repo_with(make_repo, SHADOW.format(cap=64, timeout=2000),
                     {"switchyard_fault_error_rate": "1.0", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    answers = send(srv, 200)
    assert len(answers) == 200 and {v for v, _ in answers} == {"1"}
    c = wait_counts(srv, lambda c: c.get("errored", 0) >= 200, "200 shadow errors")
    assert c.get("compared", 0) == 0


def test_slow_shadow_times_out_and_is_capped_without_slowing_the_primary(make_repo, switchyard):
    # The shadow takes 10x the primary (200 ms injected) and is cut at 50 ms; at most 2 run.
    repo = repo_with(make_repo, SHADOW.format(cap=2, timeout=50),
                     {"switchyard_fault_latency_ms": "200", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    t0 = time.monotonic()
    answers = send(srv, 200)
    elapsed = time.monotonic() - t0
    assert {v for v, _ in answers} == {"1"}
    # 200 sequential primaries; had any waited for its shadow, this would take >= 40 s.
    assert elapsed < 20, elapsed
    c = wait_counts(srv, lambda c: c.get("timed_out", 0) > 0 and c.get("dropped", 0) > 0,
                    "timeouts and drops")
    assert c.get("compared", 0) == 0
    assert c.get("timed_out", 0) + c.get("dropped", 0) + c.get("errored", 0) >= 150, c


def test_sampling_copies_a_fraction(make_repo, switchyard):
    text = SHADOW.format(cap=64, timeout=2000).replace("max_in_flight", "sample_percent = 25.0\nmax_in_flight")
    srv = switchyard(repo_with(make_repo, text))
    send(srv, 400)
    time.sleep(0.5)
    n = shadow_counts(srv).get("compared", 0)
    assert 60 <= n <= 140, n  # 25 % of 400


def test_bad_shadow_section_is_refused(make_repo, switchyard):
    text = "stable = 1\n[[shadow]]\nversion = 2\n[shadow.compare]\noutput = \"nope\"\n"
    srv = switchyard(repo_with(make_repo, text), "--exit-on-error=false", "--strict-readiness=false")
    reasons = [m.reason for m in srv.client().get_model_repository_index().models]
    assert any('shadow.compare.output = "nope"' in r for r in reasons), reasons

"""Canary gates on fraud_mlp: a candidate with injected errors or injected latency is rolled
back by its gate (its weight goes to zero at once, with the breached gate and values in the
deployment state and metrics), after serving a bounded number of requests; a clean candidate
keeps serving; a rollback survives a restart with --deployment-state-dir until
deployment.toml changes."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import requests

import sy_helpers as h

TIMEOUT = 20.0


def repo_with(make_repo, deployment: str, params: dict[str, str] | None = None) -> Path:
    return h.fraud_repo_with(make_repo, deployment, params)


def gated(weight: float, gates: str) -> str:
    return f"stable = 1\n[canary]\nversion = 2\nweight = {weight}\n[canary.gates]\n{gates}\n"


def send(srv, n: int) -> list[tuple[str, bool]]:
    """n sequential unversioned requests: (answering version or '?', ok)."""
    stub = srv.stub()
    x = h.fraud_inputs(1, seed=9)
    out = []
    for _ in range(n):
        try:
            r = h.infer(stub, h.infer_request("fraud_mlp", x))
            out.append((r.model_version, True))
        except grpc.RpcError as e:
            assert "injected fault" in e.details(), e.details()
            out.append(("2", False))  # only the faulty canary fails
    return out


def state(srv) -> dict:
    return requests.get(f"http://{srv.http_url}/v2/models/fraud_mlp/deployment", timeout=TIMEOUT).json()


def test_error_gate_rolls_back_a_failing_canary(make_repo, switchyard):
    repo = repo_with(make_repo, gated(50.0, "min_requests = 20\nmax_error_rate = 0.05\nwindow_seconds = 60.0"),
                     {"switchyard_fault_error_rate": "0.5", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    results = send(srv, 400)
    canary = [ok for v, ok in results if v == "2"]
    # Judged once 20 canary requests are in the window; a few more may be in flight.
    assert 20 <= len(canary) <= 40, len(canary)
    # After the rollback every request goes to stable and succeeds.
    tail = results[len(results) // 2:]
    assert all(v == "1" and ok for v, ok in tail)
    s = state(srv)["canary"]
    assert s["state"] == "rolled_back" and s["weight_percent"] == 0.0
    assert s["rollback"]["gate"] == "max_error_rate" and s["rollback"]["canary_value"] > 0.05
    assert s["rollback"]["limit"] == 0.05
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    assert 'switchyard_canary_rollbacks_total{model="fraud_mlp",version="2",gate="max_error_rate"} 1' in text
    assert 'switchyard_canary_weight_percent{model="fraud_mlp",version="2"} 0' in text
    assert "canary gate breached" in srv.log()


def test_latency_gate_rolls_back_a_slow_canary(make_repo, switchyard):
    # With under 100 samples a window's p99 is its maximum, so one stable request delayed by the
    # scheduler on a loaded 2-core CI machine (seen up to ~10 ms) sets stable's p99. The injected
    # delay is large enough that such an outlier cannot hide a 3x slower canary.
    repo = repo_with(make_repo, gated(30.0, "min_requests = 20\nmax_p99_ratio = 3.0"),
                     {"switchyard_fault_latency_ms": "100", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    results = send(srv, 300)
    assert all(ok for _, ok in results)  # slow, not failing: no request fails
    served = sum(v == "2" for v, _ in results)
    assert 20 <= served <= 40, served
    r = state(srv)["canary"]["rollback"]
    assert r["gate"] == "max_p99_ratio" and r["canary_value"] > 3.0 and r["stable_value"] > 0


def test_clean_canary_keeps_serving(make_repo, switchyard):
    repo = repo_with(make_repo, gated(30.0, "min_requests = 20\nmax_error_rate = 0.05\nmax_p99_ratio = 20.0"))
    srv = switchyard(repo)
    results = send(srv, 300)
    assert 50 <= sum(v == "2" for v, _ in results) <= 130
    assert state(srv)["canary"]["state"] == "serving"


def test_rollback_survives_restart_until_the_file_changes(make_repo, switchyard, tmp_path):
    statedir = tmp_path / "deploy-state"
    text = gated(50.0, "min_requests = 10\nmax_error_rate = 0.05")
    repo = repo_with(make_repo, text,
                     {"switchyard_fault_error_rate": "1.0", "switchyard_fault_versions": "2"})
    args = ("--deployment-state-dir", str(statedir))
    first = switchyard(repo, *args)
    send(first, 100)
    assert state(first)["canary"]["state"] == "rolled_back"
    assert (statedir / "fraud_mlp.json").is_file()
    first.stop()
    again = switchyard(repo, *args)
    assert state(again)["canary"]["state"] == "rolled_back"
    assert all(v == "1" for v, _ in send(again, 50))  # the canary gets nothing
    again.stop()
    # A changed deployment.toml is a new decision: the canary serves again.
    (repo / "fraud_mlp" / "deployment.toml").write_text(text.replace("weight = 50.0", "weight = 40.0"))
    third = switchyard(repo, *args)
    assert state(third)["canary"]["state"] == "serving"
    assert any(v == "2" for v, _ in send(third, 30))


STEPS = """stable = 1
[canary]
version = 2
steps = [10.0, 50.0, 100.0]
step_min_seconds = 0.3
step_min_requests = 10
on_gate_failure = "{action}"
[canary.gates]
min_requests = 10
max_error_rate = 0.05
max_p99_ratio = 50.0
"""


def test_clean_canary_walks_every_step_and_is_promoted(make_repo, switchyard, tmp_path):
    statedir = tmp_path / "state"
    repo = repo_with(make_repo, STEPS.format(action="rollback"))
    srv = switchyard(repo, "--deployment-state-dir", str(statedir))
    seen_steps, deadline = set(), time.monotonic() + 60
    while time.monotonic() < deadline:
        send(srv, 20)
        s = state(srv)["canary"]
        seen_steps.add(s["step"])
        if s["state"] == "promoted":
            break
    s = state(srv)["canary"]
    assert s["state"] == "promoted" and s["weight_percent"] == 100.0, s
    assert seen_steps >= {0, 2} and s["steps_percent"] == [10.0, 50.0, 100.0]
    assert {v for v, _ in send(srv, 50)} == {"2"}  # the candidate is now the stable answer
    assert "canary rollout moved on" in srv.log()
    srv.stop()
    # The promotion is a decision: it survives a restart under the same deployment.toml.
    again = switchyard(repo, "--deployment-state-dir", str(statedir))
    assert state(again)["canary"]["state"] == "promoted"
    assert {v for v, _ in send(again, 30)} == {"2"}


def test_pause_holds_the_step_weight(make_repo, switchyard):
    repo = repo_with(make_repo, STEPS.format(action="pause").replace("10.0, 50.0", "20.0, 50.0"),
                     {"switchyard_fault_error_rate": "0.5", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    send(srv, 200)
    s = state(srv)["canary"]
    assert s["state"] == "paused" and s["step"] == 0 and s["weight_percent"] == 20.0, s
    assert s["rollback"]["gate"] == "max_error_rate"
    time.sleep(0.5)
    results = send(srv, 300)
    # Held at 20 %: the canary keeps its share, and never steps up.
    assert 30 <= sum(v == "2" for v, _ in results) <= 90
    assert state(srv)["canary"]["step"] == 0
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    assert 'switchyard_canary_pauses_total{model="fraud_mlp",version="2",gate="max_error_rate"} 1' in text

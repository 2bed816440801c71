"""Score gates of a canary on fraud_mlp with realistic inputs (rows of the held-out set the
models were not trained on, `data/fraud_heldout.npy`, made by
`scripts/gen_models.py: fraud_dataset(2000, seed=7)`):

* `max_psi`: the canary's score distribution against stable's, over the window;
* `min_agreement`: stable re-runs the canary's requests (`[canary.check]`) and the two
  decisions are compared, like a shadow.

Version 2 is a clean retrain (PSI about 0.16 against v1, 97 % of decisions agree on this data);
version 3, built here from v2 with its output logit shifted by +3, has shifted scores (PSI about
1.1, 88 % agreement). Each gate rolls v3 back after a bounded number of requests and keeps v2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import numpy_helper

import sy_helpers as h

TIMEOUT = 20.0
DATA = Path(__file__).parent / "data" / "fraud_heldout.npy"


def shifted_candidate(repo: Path, shift: float = 3.0) -> None:
    """fraud_mlp version 3: version 2 with `shift` added to its output logit."""
    m = onnx.load(str(repo / "fraud_mlp" / "2" / "model.onnx"))
    for init in m.graph.initializer:
        if init.name == "fraud_v2_intercepts2":
            shifted = numpy_helper.to_array(init) + np.float32(shift)
            init.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), init.name))
            break
    else:
        raise AssertionError("fraud_mlp v2 has no output intercept to shift")
    (repo / "fraud_mlp" / "3").mkdir()
    onnx.save(m, str(repo / "fraud_mlp" / "3" / "model.onnx"))


def repo_with(make_repo, canary: int, gates: str, check: str = "") -> Path:
    repo = h.fraud_repo_with(make_repo, None)
    shifted_candidate(repo)
    (repo / "fraud_mlp" / "deployment.toml").write_text(
        f"stable = 1\n[canary]\nversion = {canary}\nweight = 50.0\n"
        f"[canary.gates]\nwindow_seconds = 600.0\n{gates}\n"
        '[canary.compare]\noutput = "probabilities"\nelement = 1\nthreshold = 0.5\n' + check
    )
    return repo


def send(srv, n: int, start: int = 0) -> list[str]:
    """n sequential unversioned requests over the held-out rows: the answering versions."""
    rows = np.load(DATA)
    stub = srv.stub()
    out = []
    for i in range(start, start + n):
        x = rows[i % len(rows)][None, :]
        r = h.infer(stub, h.infer_request("fraud_mlp", {"features": x}))
        out.append(r.model_version)
    return out


def state(srv) -> dict:
    return requests.get(f"http://{srv.http_url}/v2/models/fraud_mlp/deployment", timeout=TIMEOUT).json()


def metrics(srv) -> str:
    return requests.get(srv.metrics_url, timeout=TIMEOUT).text


def test_psi_gate_rolls_back_shifted_scores(make_repo, switchyard):
    srv = switchyard(repo_with(make_repo, 3, "min_requests = 200\nmax_psi = 0.5"))
    answers = send(srv, 1000)
    served = answers.count("3")
    # Judged once both arms have 200 scored requests; a few more may slip in before the
    # next evaluation (every 20 ms).
    assert 200 <= served <= 300, served
    assert set(answers[-300:]) == {"1"}
    s = state(srv)["canary"]
    assert s["state"] == "rolled_back" and s["weight_percent"] == 0.0
    assert s["rollback"]["gate"] == "max_psi" and s["rollback"]["canary_value"] > 0.5, s
    assert s["gates"]["max_psi"] == 0.5 and s["gates"]["values"]["psi"] > 0.5
    text = metrics(srv)
    assert 'switchyard_canary_rollbacks_total{model="fraud_mlp",version="3",gate="max_psi"} 1' in text
    assert 'switchyard_canary_gate_value{model="fraud_mlp",version="3",gate="psi"}' in text
    assert state(srv)["history"][-1]["who"] == "gate"


def test_psi_gate_keeps_a_clean_retrain(make_repo, switchyard):
    srv = switchyard(repo_with(make_repo, 2, "min_requests = 200\nmax_psi = 0.5"))
    answers = send(srv, 1000)
    assert 400 <= answers.count("2") <= 600
    s = state(srv)["canary"]
    assert s["state"] == "serving", s
    psi = s["gates"]["values"]["psi"]
    assert psi is not None and 0.02 < psi < 0.5, psi


def test_agreement_gate_rolls_back_disagreeing_decisions(make_repo, switchyard, tmp_path):
    logdir = tmp_path / "log"
    srv = switchyard(repo_with(make_repo, 3, "min_requests = 400\nmin_agreement = 0.93"),
                     "--shadow-log-dir", str(logdir))
    answers = send(srv, 2000)
    served = answers.count("3")
    # 400 checks are needed first; checks finish just after their canary request.
    assert 400 <= served <= 560, served
    assert set(answers[-300:]) == {"1"}
    s = state(srv)["canary"]
    assert s["state"] == "rolled_back", s
    r = s["rollback"]
    assert r["gate"] == "min_agreement" and r["canary_value"] < 0.93 and r["limit"] == 0.93
    assert s["gates"]["values"]["checks"] >= 400
    text = metrics(srv)
    assert 'switchyard_canary_checks_total{model="fraud_mlp",version="1",outcome="compared"}' in text
    # Checks are compared pairs: they go to the divergence log with kind canary_check, the
    # canary as primary and stable as the other side.
    deadline = time.monotonic() + TIMEOUT
    path = logdir / "divergence.jsonl"
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs and all(x["kind"] == "canary_check" for x in recs)
    assert {(x["primary_version"], x["shadow_version"]) for x in recs} == {(3, 1)}


def test_agreement_gate_keeps_a_clean_retrain(make_repo, switchyard):
    srv = switchyard(repo_with(make_repo, 2, "min_requests = 400\nmin_agreement = 0.93",
                               "[canary.check]\nmax_in_flight = 64\n"))
    send(srv, 1600)
    s = state(srv)["canary"]
    assert s["state"] == "serving", s
    values = s["gates"]["values"]
    assert values["checks"] >= 400 and values["agreement"] > 0.93, values


def test_score_gates_need_a_compare_table(make_repo, switchyard):
    repo = h.fraud_repo_with(make_repo, "stable = 1\n[canary]\nversion = 2\nweight = 5.0\n"
                                        "[canary.gates]\nmax_psi = 0.2\n")
    srv = switchyard(repo, "--exit-on-error=false", "--strict-readiness=false")
    rows = [m.reason for m in srv.client().get_model_repository_index().models]
    assert any("need [canary.compare]" in r for r in rows), rows

"""`deployment.toml` routing on fraud_mlp (versions 1 and 2): weighted canary split, sticky
keys (parameter, HTTP header, gRPC metadata) that survive a restart, explicit-version bypass,
the kill switch, validation errors that keep the old routing, in-place routing updates in poll
mode, and fault injection. Everything through the real server and clients."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import sy_helpers as h

TIMEOUT = 20.0
N_SPLIT = 10_000


def write_deployment(repo: Path, text: str, model: str = "fraud_mlp") -> None:
    """Replaces deployment.toml atomically (a poll never sees half a file)."""
    tmp = repo / f".{model}-deployment.tmp"
    tmp.write_text(text)
    tmp.replace(repo / model / "deployment.toml")


def fraud_repo(make_repo, deployment: str | None) -> Path:
    repo = make_repo(["fraud_mlp"])
    if deployment is not None:
        write_deployment(repo, deployment)
    return repo


STREAM_CHUNK = 500


def stream_versions(srv, n: int, params=None, version: str = "") -> list[str]:
    """Sends n fraud_mlp requests over gRPC streams of at most STREAM_CHUNK requests each;
    returns the answering versions."""
    x = h.fraud_inputs(1, seed=1)
    stub = srv.stub()
    out = []
    for start in range(0, n, STREAM_CHUNK):
        reqs = [h.infer_request("fraud_mlp", x, version=version, params=params, request_id=str(i))
                for i in range(start, min(n, start + STREAM_CHUNK))]
        for r in stub.ModelStreamInfer(iter(reqs), timeout=120):
            assert not r.error_message, r.error_message
            out.append(r.infer_response.model_version)
    assert len(out) == n
    return out


def version_of(c, params=None, headers=None) -> str:
    x = grpcclient.InferInput("features", [1, 30], "FP32")
    x.set_data_from_numpy(h.fraud_inputs(1, seed=2)["features"])
    r = c.infer("fraud_mlp", [x], parameters=params, headers=headers, client_timeout=TIMEOUT)
    return r.get_response().model_version


def wait_for(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


CANARY_20 = "stable = 1\n[canary]\nversion = 2\nweight = 20.0\n"


def test_weighted_split_over_10k_requests(make_repo, switchyard):
    srv = switchyard(fraud_repo(make_repo, CANARY_20))
    versions = stream_versions(srv, N_SPLIT)
    canary = versions.count("2")
    assert versions.count("1") + canary == N_SPLIT
    # Binomial(10k, 0.2): sd = 40; 4 sd either side.
    assert 1840 <= canary <= 2160, canary


def test_no_deployment_file_keeps_highest_version(make_repo, switchyard):
    srv = switchyard(fraud_repo(make_repo, None))
    assert set(stream_versions(srv, 200)) == {"2"}


@pytest.mark.parametrize("how", ["parameter", "http_header", "grpc_metadata"])
def test_sticky_keys_pin_users_across_requests_and_restarts(make_repo, switchyard, how):
    sticky = 'parameter = "user_id"' if how == "parameter" else 'header = "X-User-Id"'
    repo = fraud_repo(make_repo, "stable = 1\n[canary]\nversion = 2\nweight = 30.0\n[sticky]\n"
                      + sticky + "\n")
    users = [f"user-{i}" for i in range(200)]

    def assignments(srv) -> dict[str, str]:
        c = srv.client()
        seen: dict[str, set[str]] = {}
        for u in users:
            for _ in range(3):
                if how == "parameter":
                    v = version_of(c, params={"user_id": u})
                elif how == "grpc_metadata":
                    v = version_of(c, headers={"x-user-id": u})
                else:
                    body = {"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32",
                                        "data": h.fraud_inputs(1, seed=2)["features"].ravel().tolist()}]}
                    r = requests.post(f"http://{srv.http_url}/v2/models/fraud_mlp/infer",
                                      json=body, headers={"X-User-Id": u}, timeout=TIMEOUT)
                    assert r.status_code == 200, r.text
                    v = r.json()["model_version"]
                seen.setdefault(u, set()).add(v)
        assert all(len(s) == 1 for s in seen.values()), {u: s for u, s in seen.items() if len(s) > 1}
        return {u: s.pop() for u, s in seen.items()}

    first = switchyard(repo)
    a = assignments(first)
    first.stop()
    # Another replica (here: a restart) with the same file assigns every user the same way.
    b = assignments(switchyard(repo))
    assert a == b
    share = sum(v == "2" for v in a.values()) / len(users)
    assert 0.18 <= share <= 0.42, share  # 30 % of 200 users, loose


def test_requests_without_the_sticky_key_still_split(make_repo, switchyard):
    repo = fraud_repo(make_repo, CANARY_20 + '[sticky]\nparameter = "user_id"\n')
    versions = stream_versions(switchyard(repo), 2000)
    assert 300 <= versions.count("2") <= 500


def test_explicit_versions_bypass_routing_and_kill_switch_blocks(make_repo, switchyard):
    repo = fraud_repo(make_repo, "stable = 1\nkilled = [2]\n[canary]\nversion = 2\nweight = 100.0\n")
    srv = switchyard(repo)
    # The killed canary gets nothing, even at 100 %.
    assert set(stream_versions(srv, 300)) == {"1"}
    c = srv.client()
    x = grpcclient.InferInput("features", [1, 30], "FP32")
    x.set_data_from_numpy(h.fraud_inputs(1)["features"])
    with pytest.raises(InferenceServerException) as e:
        c.infer("fraud_mlp", [x], model_version="2")
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "kill switch" in e.value.message()
    r = requests.post(f"http://{srv.http_url}/v2/models/fraud_mlp/versions/2/infer", timeout=TIMEOUT,
                      json={"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32",
                                        "data": [0.0] * 30}]})
    assert r.status_code == 503 and "kill switch" in r.json()["error"]
    # An explicit version that is not killed is served as named, outside the routing.
    assert c.infer("fraud_mlp", [x], model_version="1").get_response().model_version == "1"


def test_explicit_version_outside_routing(make_repo, switchyard):
    repo = fraud_repo(make_repo, "stable = 1\n[canary]\nversion = 2\nweight = 0.0\n")
    srv = switchyard(repo)
    assert set(stream_versions(srv, 200)) == {"1"}
    assert set(stream_versions(srv, 50, version="2")) == {"2"}


@pytest.mark.parametrize("text,needle", [
    ("stabel = 1\n", "stabel"),
    ("stable = 7\n", "stable = 7"),
    ("stable = 1\n[canary]\nversion = 2\nweight = 250.0\n", "canary.weight = 250"),
    ("stable = 1\nkilled = [1]\n", "killed = [1]"),
    ("stable = [\n", "deployment.toml"),
])
def test_bad_deployment_file_fails_the_load_naming_the_key(make_repo, switchyard, text, needle):
    repo = fraud_repo(make_repo, text)
    srv = switchyard(repo, "--exit-on-error=false", "--strict-readiness=false")
    c = srv.client()
    assert not c.is_model_ready("fraud_mlp")
    rows = [(m.name, m.state, m.reason) for m in c.get_model_repository_index().models]
    assert any(n == "fraud_mlp" and needle in r for n, s, r in rows), rows


def test_poll_updates_routing_in_place_and_keeps_it_on_a_bad_file(make_repo, switchyard):
    repo = fraud_repo(make_repo, "stable = 1\n")
    srv = switchyard(repo, "--model-control-mode=poll", "--repository-poll-secs=1")
    c = srv.client()
    assert set(stream_versions(srv, 100)) == {"1"}
    write_deployment(repo, "stable = 2\n")  # blue-green switch
    wait_for(lambda: set(stream_versions(srv, 20)) == {"2"}, "switch to version 2")
    # Statistics of version 1 kept counting: routing changed without a reload.
    (s1,) = c.get_inference_statistics("fraud_mlp", "1").model_stats
    assert s1.inference_stats.success.count >= 100
    write_deployment(repo, "stable = 2\n[canary]\nversion = 1\nweight = 500.0\n")  # bad
    wait_for(lambda: any("canary.weight = 500" in m.reason
                         for m in c.get_model_repository_index().models), "the refusal in the index")
    assert set(stream_versions(srv, 100)) == {"2"}  # old routing kept
    assert c.is_model_ready("fraud_mlp", "1") and c.is_model_ready("fraud_mlp", "2")
    write_deployment(repo, "stable = 1\n")
    wait_for(lambda: set(stream_versions(srv, 20)) == {"1"}, "fixed file applies")
    assert "updated in place" in srv.log()


def fault_config(params: dict[str, str]) -> str:
    text = (h.MODEL_REPOSITORY / "fraud_mlp" / "config.pbtxt").read_text()
    for k, v in params.items():
        text += f'\nparameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
    return text + "\n"


def test_fault_injection_errors_one_version(make_repo, switchyard):
    repo = fraud_repo(make_repo, None)
    (repo / "fraud_mlp" / "config.pbtxt").write_text(fault_config(
        {"switchyard_fault_error_rate": "1.0", "switchyard_fault_versions": "2"}))
    srv = switchyard(repo)
    c = srv.client()
    x = grpcclient.InferInput("features", [1, 30], "FP32")
    x.set_data_from_numpy(h.fraud_inputs(1)["features"])
    with pytest.raises(InferenceServerException) as e:
        c.infer("fraud_mlp", [x], model_version="2")
    assert "injected fault" in e.value.message() and e.value.status() == "StatusCode.INTERNAL"
    assert c.infer("fraud_mlp", [x], model_version="1").get_response().model_version == "1"


def test_fault_injection_partial_rate_and_latency(make_repo, switchyard):
    repo = fraud_repo(make_repo, None)
    (repo / "fraud_mlp" / "config.pbtxt").write_text(fault_config(
        {"switchyard_fault_error_rate": "0.25", "switchyard_fault_latency_ms": "30",
         "switchyard_fault_versions": "1"}))
    srv = switchyard(repo)
    stub = srv.stub()
    x = h.fraud_inputs(1)
    failures, t0 = 0, time.monotonic()
    n = 200
    for i in range(n):
        try:
            h.infer(stub, h.infer_request("fraud_mlp", x, version="1"))
        except grpc.RpcError as e:
            assert "injected fault" in e.details()
            failures += 1
    elapsed = time.monotonic() - t0
    assert 20 <= failures <= 80, failures  # 25 % of 200, sd ~6
    assert elapsed >= n * 0.030, elapsed  # every execution slept 30 ms
    # Version 2 is untouched.
    t1 = time.monotonic()
    for _ in range(20):
        h.infer(stub, h.infer_request("fraud_mlp", x, version="2"))
    assert time.monotonic() - t1 < 20 * 0.030


def test_bad_fault_parameter_fails_the_load(make_repo, switchyard):
    repo = fraud_repo(make_repo, None)
    (repo / "fraud_mlp" / "config.pbtxt").write_text(fault_config({"switchyard_fault_error_rate": "2"}))
    srv = switchyard(repo, "--exit-on-error=false", "--strict-readiness=false")
    rows = [m.reason for m in srv.client().get_model_repository_index().models]
    assert any("switchyard_fault_error_rate = '2'" in r for r in rows), rows


def test_deployment_state_endpoint(make_repo, switchyard):
    repo = fraud_repo(make_repo, "stable = 1\nkilled = [3]\n[canary]\nversion = 2\nweight = 12.5\n"
                      "[sticky]\nheader = \"X-User\"\n[[shadow]]\nversion = 2\nsample_percent = 50.0\n")
    srv = switchyard(repo, "--http-restricted-api=model-repository:admin=k")
    url = f"http://{srv.http_url}/v2/models/fraud_mlp/deployment"
    r = requests.get(url, timeout=TIMEOUT)
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = requests.get(url, headers={"admin": "k"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["stable"] == 1
    assert s["canary"] == {"version": 2, "weight_percent": 12.5, "configured_weight_percent": 12.5,
                           "state": "serving", "step": None, "steps_percent": [], "rollback": None,
                           "gates": None}
    assert s["killed"] == [3] and s["sticky"] == "header:x-user"
    assert s["shadows"][0]["version"] == 2 and s["shadows"][0]["sample_percent"] == 50.0
    assert [v["state"] for v in s["versions"]] == ["READY", "READY"]
    assert requests.get(f"http://{srv.http_url}/v2/models/nope/deployment",
                        headers={"admin": "k"}, timeout=TIMEOUT).status_code == 404
    assert requests.put(url, headers={"admin": "k"}, timeout=TIMEOUT).status_code == 405
    # POST is an operator's action (test_deployment_admin.py); an empty body is refused.
    assert requests.post(url, headers={"admin": "k"}, timeout=TIMEOUT).status_code == 400
    # Without a deployment.toml: the highest READY version is the stable one.
    plain = switchyard(fraud_repo(make_repo, None))
    p = requests.get(f"http://{plain.http_url}/v2/models/fraud_mlp/deployment", timeout=TIMEOUT).json()
    assert p["has_deployment_file"] is False and p["stable"] == 2 and p["canary"] is None


def test_blue_green_switch_and_rollback_under_load(make_repo, switchyard):
    """`stable` flips 1 -> 2 -> 1 -> 2 while three clients send unversioned requests: zero
    failed requests, each switch takes effect, and both versions stay loaded throughout."""
    import threading

    repo = fraud_repo(make_repo, "stable = 1\n")
    srv = switchyard(repo, "--model-control-mode=poll", "--repository-poll-secs=1")
    answered: "queue.Queue[tuple[float, str]]" = queue.Queue()
    errors: list[str] = []
    stop = threading.Event()

    def client():
        c = srv.client()
        x = grpcclient.InferInput("features", [1, 30], "FP32")
        x.set_data_from_numpy(h.fraud_inputs(1, seed=5)["features"])
        while not stop.is_set():
            try:
                r = c.infer("fraud_mlp", [x], client_timeout=TIMEOUT)
                answered.put((time.monotonic(), r.get_response().model_version))
            except Exception as e:  # any failure fails the test
                errors.append(repr(e))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    recent: list[str] = []

    def latest(n=30) -> set[str]:
        while True:
            try:
                recent.append(answered.get_nowait()[1])
            except queue.Empty:
                break
        return set(recent[-n:])

    try:
        wait_for(lambda: latest() == {"1"} and len(recent) > 50, "traffic on v1")
        for target in ("2", "1", "2"):
            write_deployment(repo, f"stable = {target}\n")
            wait_for(lambda: latest() == {target}, f"all traffic on v{target}")
            c = srv.client()
            assert c.is_model_ready("fraud_mlp", "1") and c.is_model_ready("fraud_mlp", "2")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors[:5]
    assert len(recent) > 200


def test_per_arm_metrics(make_repo, switchyard):
    repo = fraud_repo(make_repo, CANARY_20 + "[[shadow]]\nversion = 2\n")
    srv = switchyard(repo)
    versions = stream_versions(srv, 500)
    canary, stable = versions.count("2"), versions.count("1")
    stream_versions(srv, 20, version="1")  # explicit: not an arm
    text = ""
    deadline = time.monotonic() + 20

    def dropped() -> float:
        for line in text.splitlines():
            if line.startswith("switchyard_shadow_requests_total{") and 'outcome="dropped"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def series(name: str, arm: str, version: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and f'arm="{arm}"' in line and f'version="{version}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    while time.monotonic() < deadline:
        text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
        if series("switchyard_arm_requests_total", "shadow", "2") + dropped() >= stable:
            break
        time.sleep(0.2)
    assert series("switchyard_arm_requests_total", "stable", "1") == stable
    assert series("switchyard_arm_requests_total", "canary", "2") == canary
    # Shadow copies of the stable arm's requests (the canary is not shadowed by itself); the
    # ones over max_in_flight are dropped, not run.
    assert series("switchyard_arm_requests_total", "shadow", "2") + dropped() == stable
    assert series("switchyard_arm_requests_total", "shadow", "2") > 0
    assert series("switchyard_arm_request_duration_seconds_count", "canary", "2") == canary
    assert series("switchyard_arm_failures_total", "stable", "1") == 0
    assert 'switchyard_canary_weight_percent{model="fraud_mlp",version="2"} 20' in text
    assert 'switchyard_stable_version{model="fraud_mlp"} 1' in text

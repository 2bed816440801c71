"""The deployment admin API: GET/POST /v2/models/{m}/deployment over HTTP and the
`switchyard.Deployment` gRPC service (proto/switchyard.proto). Operators set the canary's
weight, roll back, pause, resume, promote and kill/unkill versions; every action is recorded
with who/when/why, survives a restart with --deployment-state-dir, and is restricted like the
repository API. Real server, fraud_mlp v1 (stable) and v2 (canary)."""

from __future__ import annotations

import json
import threading
import time

import grpc
import requests
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import sy_helpers as h

TIMEOUT = 20.0
CANARY = "stable = 1\n[canary]\nversion = 2\nweight = 20.0\n"


# --- switchyard.Deployment client, built from the message layout in proto/switchyard.proto ---
# (no protoc here: the descriptors are declared field by field, which also checks the wire
# numbers the server uses).
_T = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {
    "GetDeploymentRequest": [("model", 1, _T.TYPE_STRING, False, False, None)],
    "GetDeploymentResponse": [
        ("model", 1, _T.TYPE_STRING, False, False, None),
        ("stable_version", 2, _T.TYPE_INT64, False, True, None),
        ("canary_version", 3, _T.TYPE_INT64, False, True, None),
        ("canary_weight_percent", 4, _T.TYPE_DOUBLE, False, False, None),
        ("canary_state", 5, _T.TYPE_STRING, False, False, None),
        ("killed", 6, _T.TYPE_INT64, True, False, None),
        ("history", 7, _T.TYPE_MESSAGE, True, False, ".switchyard.DeploymentEvent"),
        ("state_json", 8, _T.TYPE_STRING, False, False, None),
    ],
    "DeploymentActionRequest": [
        ("model", 1, _T.TYPE_STRING, False, False, None),
        ("action", 2, _T.TYPE_STRING, False, False, None),
        ("version", 3, _T.TYPE_INT64, False, True, None),
        ("weight_percent", 4, _T.TYPE_DOUBLE, False, True, None),
        ("who", 5, _T.TYPE_STRING, False, False, None),
        ("why", 6, _T.TYPE_STRING, False, False, None),
    ],
    "DeploymentActionResponse": [
        ("event", 1, _T.TYPE_MESSAGE, False, False, ".switchyard.DeploymentEvent"),
    ],
    "DeploymentEvent": [
        ("time_ms", 1, _T.TYPE_DOUBLE, False, False, None),
        ("who", 2, _T.TYPE_STRING, False, False, None),
        ("action", 3, _T.TYPE_STRING, False, False, None),
        ("why", 4, _T.TYPE_STRING, False, False, None),
        ("version", 5, _T.TYPE_INT64, False, True, None),
        ("canary_state", 6, _T.TYPE_STRING, False, False, None),
        ("weight_percent", 7, _T.TYPE_DOUBLE, False, True, None),
        ("gate", 8, _T.TYPE_STRING, False, False, None),
    ],
}


def _classes():
    f = descriptor_pb2.FileDescriptorProto(name="switchyard_test.proto", package="switchyard",
                                           syntax="proto3")
    for name, fields in _MESSAGES.items():
        m = f.message_type.add(name=name)
        for fname, num, typ, repeated, optional, type_name in fields:
            fd = m.field.add(name=fname, number=num, type=typ,
                             label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if type_name:
                fd.type_name = type_name
            if optional:  # proto3 `optional`: a synthetic oneof per field
                fd.proto3_optional = True
                fd.oneof_index = len(m.oneof_decl)
                m.oneof_decl.add(name=f"_{fname}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"switchyard.{n}"))
            for n in _MESSAGES}


PB = _classes()


def admin_call(srv, method: str, metadata=(), **fields):
    req_name = {"GetDeployment": "GetDeploymentRequest",
                "DeploymentAction": "DeploymentActionRequest"}[method]
    resp_name = {"GetDeployment": "GetDeploymentResponse",
                 "DeploymentAction": "DeploymentActionResponse"}[method]
    with grpc.insecure_channel(srv.url) as ch:
        call = ch.unary_unary(f"/switchyard.Deployment/{method}",
                              request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=PB[resp_name].FromString)
        return call(PB[req_name](**fields), timeout=TIMEOUT, metadata=metadata)


# --- helpers ---

def url(srv, model="fraud_mlp") -> str:
    return f"http://{srv.http_url}/v2/models/{model}/deployment"


def act(srv, headers=None, **body) -> requests.Response:
    return requests.post(url(srv), json=body, headers=headers or {}, timeout=TIMEOUT)


def state(srv) -> dict:
    return requests.get(url(srv), timeout=TIMEOUT).json()


def versions(srv, n: int) -> list[str]:
    stub = srv.stub()
    x = h.fraud_inputs(1, seed=5)
    return [h.infer(stub, h.infer_request("fraud_mlp", x)).model_version for _ in range(n)]


def test_http_actions_move_traffic_and_are_recorded(make_repo, switchyard):
    srv = switchyard(h.fraud_repo_with(make_repo, CANARY))
    assert 10 <= versions(srv, 200).count("2") <= 70
    r = act(srv, action="set_weight", weight_percent=100.0, who="ana", why="load test")
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["who"] == "ana" and ev["why"] == "load test" and ev["action"] == "set_weight"
    assert ev["weight_percent"] == 100.0 and ev["time_ms"] > 1.7e12
    assert set(versions(srv, 50)) == {"2"}
    assert act(srv, action="rollback", who="ana", why="bad latency").status_code == 200
    assert set(versions(srv, 50)) == {"1"}
    s = state(srv)
    assert s["canary"]["state"] == "rolled_back" and s["canary"]["weight_percent"] == 0.0
    # A rolled-back canary cannot be paused; it can be resumed at its file weight.
    r = act(srv, action="pause", who="ana", why="hold")
    assert r.status_code == 400 and "rolled" in r.json()["error"].lower()
    assert act(srv, action="resume", who="bo", why="fixed").status_code == 200
    assert state(srv)["canary"]["weight_percent"] == 20.0
    assert act(srv, action="pause", who="bo", why="hold on").status_code == 200
    assert state(srv)["canary"]["state"] == "paused"
    assert act(srv, action="promote", who="bo", why="looks good").status_code == 200
    assert set(versions(srv, 30)) == {"2"}
    history = state(srv)["history"]
    assert [e["action"] for e in history] == ["set_weight", "rollback", "resume", "pause", "promote"]
    assert [e["who"] for e in history] == ["ana", "ana", "bo", "bo", "bo"]
    assert "deployment action" in srv.log() and "looks good" in srv.log()
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    assert 'switchyard_canary_state{model="fraud_mlp",version="2"} 3' in text


def test_kill_switch_from_the_api(make_repo, switchyard):
    srv = switchyard(h.fraud_repo_with(make_repo, CANARY))
    stub = srv.stub()
    x = h.fraud_inputs(1, seed=1)
    assert act(srv, action="kill", version=2, who="oncall", why="incident 42").status_code == 200
    assert state(srv)["killed"] == [2] and state(srv)["canary"]["weight_percent"] == 0.0
    h.assert_rpc_error(stub.ModelInfer, h.infer_request("fraud_mlp", x, version="2"),
                       grpc.StatusCode.UNAVAILABLE, "switched off")
    assert set(versions(srv, 60)) == {"1"}
    # The stable version cannot be killed; an unknown version neither.
    r = act(srv, action="kill", version=1, who="oncall", why="oops")
    assert r.status_code == 400 and "stable" in r.json()["error"]
    assert act(srv, action="kill", version=9, who="oncall", why="x").status_code == 400
    assert act(srv, action="unkill", version=2, who="oncall", why="resolved").status_code == 200
    assert h.infer(stub, h.infer_request("fraud_mlp", x, version="2")).model_version == "2"
    assert "2" in versions(srv, 100)


def test_bad_actions_are_refused_with_the_right_code(make_repo, switchyard):
    repo = h.fraud_repo_with(make_repo, CANARY)
    h.copy_model(repo, "simple")
    srv = switchyard(repo)
    cases = [
        ({"action": "explode", "why": "x"}, 400, "unknown action"),
        ({"action": "rollback"}, 400, "reason"),
        ({"action": "rollback", "why": "  "}, 400, "reason"),
        ({"action": "set_weight", "why": "x"}, 400, "weight"),
        ({"action": "set_weight", "weight_percent": 120.0, "why": "x"}, 400, "percent"),
        ({"action": "kill", "why": "x"}, 400, "version"),
        ({"action": "rollback", "why": "x", "bogus": 1}, 400, "bogus"),
        ({"action": "rollback", "why": "x" * 2000}, 400, "limited"),
    ]
    for body, code, words in cases:
        r = act(srv, **body)
        assert r.status_code == code and words in r.json()["error"], (body, r.status_code, r.text)
    r = requests.post(url(srv), data=b"{not json", timeout=TIMEOUT)
    assert r.status_code == 400
    r = requests.post(url(srv, "nope"), json={"action": "rollback", "why": "x"}, timeout=TIMEOUT)
    assert r.status_code == 404
    r = requests.post(url(srv, "simple"), json={"action": "rollback", "why": "x"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "no deployment.toml" in r.json()["error"]
    assert requests.put(url(srv), json={}, timeout=TIMEOUT).status_code == 405
    assert state(srv)["history"] == []  # nothing was done


def test_restricted_like_the_repository_api(make_repo, switchyard):
    srv = switchyard(h.fraud_repo_with(make_repo, CANARY),
                     "--http-restricted-api=model-repository:admin=k",
                     "--grpc-restricted-protocol=model-repository:admin=k")
    r = act(srv, action="rollback", why="x")
    assert r.status_code == 403
    r = act(srv, headers={"admin": "k"}, action="rollback", who="ana", why="x")
    assert r.status_code == 200
    for method, fields in [("GetDeployment", {"model": "fraud_mlp"}),
                           ("DeploymentAction", {"model": "fraud_mlp", "action": "resume", "why": "x"})]:
        try:
            admin_call(srv, method, **fields)
            raise AssertionError(f"{method} allowed without the key")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
    got = admin_call(srv, "GetDeployment", metadata=(("admin", "k"),), model="fraud_mlp")
    assert got.canary_state == "rolled_back"
    # Inference stays open.
    assert versions(srv, 5) == ["1"] * 5


def test_grpc_admin_service(make_repo, switchyard):
    srv = switchyard(h.fraud_repo_with(make_repo, CANARY))
    got = admin_call(srv, "GetDeployment", model="fraud_mlp")
    assert got.model == "fraud_mlp" and got.stable_version == 1 and got.canary_version == 2
    assert got.canary_weight_percent == 20.0 and got.canary_state == "serving"
    assert json.loads(got.state_json)["canary"]["configured_weight_percent"] == 20.0
    r = admin_call(srv, "DeploymentAction", model="fraud_mlp", action="set_weight",
                   weight_percent=0.0, who="grpc-op", why="drain")
    assert r.event.action == "set_weight" and r.event.weight_percent == 0.0
    assert r.event.who == "grpc-op" and r.event.canary_state == "serving"
    assert set(versions(srv, 40)) == {"1"}
    r = admin_call(srv, "DeploymentAction", model="fraud_mlp", action="kill", version=2,
                   who="grpc-op", why="incident")
    assert r.event.version == 2
    got = admin_call(srv, "GetDeployment", model="fraud_mlp")
    assert list(got.killed) == [2] and [e.action for e in got.history] == ["set_weight", "kill"]
    for fields, code in [({"model": "nope", "action": "rollback", "why": "x"}, grpc.StatusCode.NOT_FOUND),
                         ({"model": "fraud_mlp", "action": "rollback"}, grpc.StatusCode.INVALID_ARGUMENT),
                         ({"model": "fraud_mlp", "action": "fly", "why": "x"}, grpc.StatusCode.INVALID_ARGUMENT)]:
        try:
            admin_call(srv, "DeploymentAction", **fields)
            raise AssertionError(f"{fields} accepted")
        except grpc.RpcError as e:
            assert e.code() == code, (fields, e)


def test_actions_survive_a_restart_until_the_file_changes(make_repo, switchyard, tmp_path):
    statedir = tmp_path / "state"
    repo = h.fraud_repo_with(make_repo, CANARY)
    args = ("--deployment-state-dir", str(statedir))
    first = switchyard(repo, *args)
    assert act(first, action="set_weight", weight_percent=60.0, who="ana", why="ramp").status_code == 200
    assert act(first, action="kill", version=2, who="ana", why="incident").status_code == 200
    first.stop()
    audit = [json.loads(line) for line in (statedir / "audit.jsonl").read_text().splitlines()]
    assert [(a["model"], a["action"], a["who"]) for a in audit] == [
        ("fraud_mlp", "set_weight", "ana"), ("fraud_mlp", "kill", "ana")]
    again = switchyard(repo, *args)
    s = state(again)
    assert s["killed"] == [2] and [e["why"] for e in s["history"]] == ["ramp", "incident"]
    assert act(again, action="unkill", version=2, who="ana", why="resolved").status_code == 200
    assert state(again)["canary"]["weight_percent"] == 60.0
    again.stop()
    (repo / "fraud_mlp" / "deployment.toml").write_text(CANARY.replace("20.0", "30.0"))
    third = switchyard(repo, *args)
    s = state(third)
    assert s["canary"]["weight_percent"] == 30.0 and s["history"] == [] and s["killed"] == []
    third.stop()
    # Reverting the edit is a new deployment too: the first text's decisions do not come back.
    (repo / "fraud_mlp" / "deployment.toml").write_text(CANARY)
    fourth = switchyard(repo, *args)
    s = state(fourth)
    assert s["canary"]["weight_percent"] == 20.0 and s["history"] == [] and s["killed"] == []


def test_an_operators_pause_keeps_the_gates_armed(make_repo, switchyard):
    repo = h.fraud_repo_with(
        make_repo, CANARY.replace("20.0", "50.0") + "[canary.gates]\nmin_requests = 10\nmax_error_rate = 0.05\n",
        {"switchyard_fault_error_rate": "1.0", "switchyard_fault_versions": "2"})
    srv = switchyard(repo)
    assert act(srv, action="pause", who="ana", why="hold while I look").status_code == 200
    stub = srv.stub()
    x = h.fraud_inputs(1, seed=2)
    failed = 0
    for _ in range(200):
        try:
            h.infer(stub, h.infer_request("fraud_mlp", x))
        except grpc.RpcError:
            failed += 1
    s = state(srv)["canary"]
    assert s["state"] == "rolled_back" and s["rollback"]["gate"] == "max_error_rate", s
    assert 10 <= failed <= 30, failed
    assert [e["who"] for e in state(srv)["history"]] == ["ana", "gate"]


def test_rollback_under_load_fails_no_request(make_repo, switchyard):
    srv = switchyard(h.fraud_repo_with(make_repo, CANARY.replace("20.0", "50.0")))
    stop = threading.Event()
    results: list[tuple[float, str]] = []
    errors: list[str] = []

    def client():
        stub = srv.stub()
        x = h.fraud_inputs(1, seed=3)
        while not stop.is_set():
            try:
                r = h.infer(stub, h.infer_request("fraud_mlp", x))
                results.append((time.monotonic(), r.model_version))
            except grpc.RpcError as e:
                errors.append(e.details())

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    r = act(srv, action="rollback", who="ana", why="drill")
    after = time.monotonic()
    assert r.status_code == 200
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    before = [v for t, v in results if t < after - 0.5]
    later = [v for t, v in results if t > after + 0.05]
    assert "2" in before and len(later) > 50
    # Requests already routed may finish on the canary; nothing routed later goes there.
    assert set(later) == {"1"}, later.count("2")

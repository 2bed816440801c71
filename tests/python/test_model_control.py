"""Model control: explicit and poll modes, load/unload over gRPC and HTTP (config and `file:`
overrides), name and path safety (Triton CVE-2023-31036, CVE-2025-23316, CVE-2026-24208/9),
model_warmup, reloads under load without a single failed request, and the SIGTERM drain.

Every server runs over its own repository under tmp. Repository edits in poll mode are atomic
(a file or version directory is built beside the repository and renamed into place), so a poll
never sees half a file. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

import sy_helpers as h

TIMEOUT = 30.0  # every network call
POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
# The index reason of a READY version whose model's last reload failed (repository/mod.rs).
RELOAD_FAILED = "the last reload failed, the previous load still serves"
SIMPLE_ONNX = h.model_file("simple", 1)
FRAUD_ONNX = {1: h.model_file("fraud_mlp", 1), 2: h.model_file("fraud_mlp", 2)}


# ------------------------------------------------------------------------------------ helpers


def index_rows(c) -> list[tuple[str, str, str, str]]:
    """RepositoryIndex through a tritonclient.grpc client: (name, version, state, reason)."""
    return [(m.name, m.version, m.state, m.reason)
            for m in c.get_model_repository_index(client_timeout=TIMEOUT).models]


def model_rows(c, model) -> dict[str, tuple[str, str]]:
    """{version: (state, reason)} of one model in the index."""
    return {v: (s, r) for n, v, s, r in index_rows(c) if n == model}


def ready_index(srv) -> list[tuple[str, str, str, str]]:
    """RepositoryIndex with ready=true (raw stub: tritonclient has no such argument)."""
    resp = srv.stub().RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=TIMEOUT)
    return [(m.name, m.version, m.state, m.reason) for m in resp.models]


def wait_for(pred, what: str, timeout: float = 20.0, interval: float = 0.05):
    """Calls `pred` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def grpc_error(fn, *args, **kwargs) -> InferenceServerException:
    try:
        fn(*args, **kwargs)
    except InferenceServerException as e:
        return e
    raise AssertionError(f"{fn.__name__}{args} succeeded but an error was expected")


def http_url(srv, path: str) -> str:
    return f"http://{srv.http_url}{path}"


def http_post(srv, path: str, body=None, **kw) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    data = json.dumps(body) if isinstance(body, dict) else body
    return requests.post(http_url(srv, path), data=data, **kw)


def url_name(name: str) -> str:
    """Percent-encodes every character that is not alphanumeric (dots included, so that no HTTP
    library folds `..` segments away before the request leaves)."""
    return "".join(ch if ch.isalnum() else quote(ch, safe="") if ch != "." else "%2E" for ch in name)


def simple_infer_grpc(c, model="simple", batch=2, seed=0, version=""):
    a, b = simple_data(batch, seed)
    ins = []
    for n, arr in (("INPUT0", a), ("INPUT1", b)):
        t = grpcclient.InferInput(n, list(arr.shape), "INT32")
        t.set_data_from_numpy(arr)
        ins.append(t)
    r = c.infer(model, ins, model_version=version, client_timeout=TIMEOUT)
    assert np.array_equal(r.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(r.as_numpy("OUTPUT1"), a - b)
    return r


def simple_data(batch, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32),
            rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32))


def onnx_bytes(model="simple", version=1) -> bytes:
    return h.model_file(model, version).read_bytes()


def write_atomic(path: Path, data: bytes | str, staging: Path) -> None:
    tmp = staging / f"w-{uuid.uuid4().hex}"
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def add_version_atomic(model_dir: Path, version: int, onnx: bytes, staging: Path) -> None:
    d = staging / f"v-{uuid.uuid4().hex}"
    d.mkdir()
    (d / "model.onnx").write_bytes(onnx)
    os.rename(d, model_dir / str(version))


def remove_version_atomic(model_dir: Path, version: int, staging: Path) -> None:
    os.rename(model_dir / str(version), staging / f"gone-{uuid.uuid4().hex}")


def fraud_config(extra: str = "", policy: str = "version_policy: { all { } }") -> str:
    text = (h.MODEL_REPOSITORY / "fraud_mlp" / "config.pbtxt").read_text()
    assert "version_policy: { all { } }" in text
    return text.replace("version_policy: { all { } }", policy) + "\n" + extra + "\n"


@pytest.fixture
def explicit(make_repo, switchyard):
    """A server in explicit mode over copies of all example models, with only `simple` loaded."""
    repo = make_repo(["simple", "simple_identity", "simple_string", "fraud_mlp"])
    srv = switchyard(repo, "--model-control-mode", "explicit", "--load-model", "simple")
    srv.repo = repo
    return srv


# ------------------------------------------------------------------------ explicit mode basics


def test_explicit_mode_loads_only_the_named_model(explicit):
    c, hc = explicit.client(), explicit.http_client()
    rows = index_rows(c)
    assert sorted(rows) == [
        ("fraud_mlp", "", "", ""),
        ("simple", "1", "READY", ""),
        ("simple_identity", "", "", ""),
        ("simple_string", "", "", ""),
    ], rows
    # HTTP: never-loaded models are objects with the name only
    http_rows = sorted(hc.get_model_repository_index(), key=lambda r: r["name"])
    assert http_rows == [
        {"name": "fraud_mlp"},
        {"name": "simple", "version": "1", "state": "READY"},
        {"name": "simple_identity"},
        {"name": "simple_string"},
    ], http_rows
    assert ready_index(explicit) == [("simple", "1", "READY", "")]
    assert c.is_model_ready("simple") is True
    for m in ("fraud_mlp", "simple_identity", "simple_string"):
        assert c.is_model_ready(m) is False
        assert hc.is_model_ready(m) is False
    e = grpc_error(c.infer, "fraud_mlp", fraud_inputs_grpc(h.fraud_inputs(1)))
    assert e.status() == "StatusCode.NOT_FOUND" and "fraud_mlp" in e.message(), e
    simple_infer_grpc(c)
    c.close()
    hc.close()


def test_explicit_load_model_star_loads_everything(make_repo, switchyard):
    srv = switchyard(make_repo(["simple", "fraud_mlp"]), "--model-control-mode", "explicit",
                     "--load-model", "*")
    c = srv.client()
    assert sorted(index_rows(c)) == [("fraud_mlp", "1", "READY", ""), ("fraud_mlp", "2", "READY", ""),
                                     ("simple", "1", "READY", "")]
    c.close()


@pytest.mark.parametrize("args", [
    ("--load-model", "simple"),  # needs explicit mode
    ("--model-control-mode", "poll", "--load-model", "simple"),
    ("--model-control-mode", "explicit", "--load-model", "*", "--load-model", "simple"),
    ("--model-control-mode", "explicit", "--load-model", "../simple"),
    ("--model-control-mode", "poll", "--repository-poll-secs", "0"),
], ids=["none-mode", "poll-mode", "star-and-name", "traversal-name", "poll-secs-0"])
def test_bad_model_control_flags_refused(make_repo, switchyard, args):
    srv = switchyard(make_repo(["simple"]), *args, wait=False)
    assert srv.wait_exit(timeout=30) != 0, srv.log()


def test_explicit_startup_with_missing_model_fails(make_repo, switchyard):
    srv = switchyard(make_repo(["simple"]), "--model-control-mode", "explicit",
                     "--load-model", "simple", "--load-model", "no_such_model", wait=False)
    assert srv.wait_exit(timeout=30) != 0, srv.log()


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_explicit_load_reload_unload(explicit, proto):
    c = explicit.client()
    api = c if proto == "grpc" else explicit.http_client()
    # load a model that was not loaded
    api.load_model("fraud_mlp")
    assert c.is_model_ready("fraud_mlp") and c.is_model_ready("fraud_mlp", "1")
    assert model_rows(c, "fraud_mlp") == {"1": ("READY", ""), "2": ("READY", "")}
    x = h.fraud_inputs(4, seed=3)
    r = c.infer("fraud_mlp", fraud_inputs_grpc(x), client_timeout=TIMEOUT)
    assert r.get_response().model_version == "2"
    assert np.allclose(r.as_numpy("probabilities"), h.reference("fraud_mlp", x, 2)["probabilities"],
                       rtol=1e-5, atol=1e-6)

    # load of a loaded model is a reload: new version objects (statistics start over), and the
    # directory is read again (a version added on disk shows up, explicit mode does not poll)
    for _ in range(3):
        simple_infer_grpc(c)
    assert simple_success_count(c) == 3
    (explicit.repo / "simple" / "config.pbtxt").write_text(
        h.simple_config("simple").replace("max_batch_size: 8", "max_batch_size: 5"))
    assert c.get_model_config("simple").config.max_batch_size == 8  # not polled
    api.load_model("simple")
    assert c.get_model_config("simple").config.max_batch_size == 5
    assert simple_success_count(c) == 0, "a reload must build a new version"
    simple_infer_grpc(c, batch=5)
    shutil.copytree(explicit.repo / "fraud_mlp" / "1", explicit.repo / "fraud_mlp" / "3")
    assert c.is_model_ready("fraud_mlp", "3") is False
    api.load_model("fraud_mlp")
    # synchronous: READY as soon as the call returns
    assert c.is_model_ready("fraud_mlp", "3") is True
    r = c.infer("fraud_mlp", fraud_inputs_grpc(x), client_timeout=TIMEOUT)
    assert r.get_response().model_version == "3"
    assert np.allclose(r.as_numpy("probabilities"), h.reference("fraud_mlp", x, 1)["probabilities"],
                       rtol=1e-5, atol=1e-6)

    # unload
    api.unload_model("fraud_mlp")
    assert c.is_model_ready("fraud_mlp") is False
    assert not any(c.is_model_ready("fraud_mlp", v) for v in "123")
    assert model_rows(c, "fraud_mlp") == {v: ("UNAVAILABLE", "unloaded") for v in "123"}
    http_rows = [r for r in explicit.http_client().get_model_repository_index() if r["name"] == "fraud_mlp"]
    assert http_rows and all(r["state"] == "UNAVAILABLE" and r["reason"] == "unloaded" for r in http_rows)
    e = grpc_error(c.infer, "fraud_mlp", fraud_inputs_grpc(x), client_timeout=TIMEOUT)
    assert e.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), e
    assert "fraud_mlp" in e.message()
    resp = http_post(explicit, "/v2/models/fraud_mlp/infer", http_json_fraud(x))
    assert resp.status_code in (400, 404, 503) and "fraud_mlp" in resp.json()["error"], resp.text
    assert "fraud_mlp" not in [r[0] for r in ready_index(explicit)]
    # unloading twice is fine; simple is untouched
    api.unload_model("fraud_mlp")
    simple_infer_grpc(c, batch=5)
    # and it loads again
    api.load_model("fraud_mlp")
    assert c.is_model_ready("fraud_mlp", "3") is True
    assert c.infer("fraud_mlp", fraud_inputs_grpc(x)).get_response().model_version == "3"
    c.close()


def simple_success_count(c) -> int:
    (s,) = c.get_inference_statistics("simple", "1", client_timeout=TIMEOUT).model_stats
    return s.inference_stats.success.count


def fraud_inputs_grpc(x):
    t = grpcclient.InferInput("features", list(x["features"].shape), "FP32")
    t.set_data_from_numpy(x["features"])
    return [t]


def http_json_fraud(x):
    f = x["features"]
    return {"inputs": [{"name": "features", "shape": list(f.shape), "datatype": "FP32",
                        "data": f.reshape(-1).tolist()}]}


def test_unload_of_a_model_that_is_not_loaded_keeps_the_server_ready(explicit):
    c = explicit.client()
    assert c.is_server_ready() is True
    c.unload_model("simple_identity")  # never loaded: nothing to do
    rows = index_rows(c)
    assert c.is_server_ready() is True, rows  # observed: False (HTTP /v2/health/ready 400, NOT_SERVING)
    assert h.health_check(explicit.url) == 1
    # the directory is still there: the index still lists it
    assert "simple_identity" in [r[0] for r in rows], rows  # observed: missing
    # a model that failed to load, then unloaded: ready again
    grpc_error(c.load_model, "fraud_mlp", config=json.dumps({"input": [
        {"name": "features", "data_type": "TYPE_INT32", "dims": [30]}]}))
    assert c.is_server_ready() is False  # a failed model: not ready (strict readiness)
    c.unload_model("fraud_mlp")
    assert c.is_server_ready() is True
    assert "fraud_mlp" in [r[0] for r in index_rows(c)]
    c.close()


def test_poll_removing_a_failed_model_makes_the_server_ready(make_repo, switchyard, tmp_path):
    repo = make_repo(["simple"])
    h.copy_model(repo, "simple", "broken", config="this is { not a config")
    srv = switchyard(repo, *POLL, "--exit-on-error=false")
    c = srv.client()
    assert c.is_server_ready() is False
    os.rename(repo / "broken", tmp_path / "broken_gone")
    wait_for(lambda: "broken" not in [r[0] for r in index_rows(c)], "broken to leave the index")
    deadline = time.monotonic() + 5
    while not c.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.is_server_ready() is True, index_rows(c)  # observed: False, forever
    c.close()


def test_unload_and_load_of_unknown_model(explicit):
    c = explicit.client()
    e = grpc_error(c.load_model, "no_such_model")
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "failed to load 'no_such_model'" in e.message(), e
    e = grpc_error(c.unload_model, "no_such_model")
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "no_such_model" in e.message(), e
    assert "no_such_model" not in [r[0] for r in index_rows(c)]
    c.close()


# ---------------------------------------------------------------------------- config override


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_load_with_config_override(explicit, proto):
    c = explicit.client()
    api = c if proto == "grpc" else explicit.http_client()
    cfg = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 700}}
    api.load_model("simple", config=json.dumps(cfg))
    got = c.get_model_config("simple").config
    assert got.max_batch_size == 4
    assert got.dynamic_batching.max_queue_delay_microseconds == 700
    assert sorted(i.name for i in got.input) == ["INPUT0", "INPUT1"]  # completed from the model file
    simple_infer_grpc(c, batch=4)
    e = grpc_error(simple_infer_grpc, c, batch=5)
    assert "batch-size must be <= 4" in e.message(), e
    # the override does not stick: a plain load reads config.pbtxt again
    api.load_model("simple")
    got = c.get_model_config("simple").config
    assert got.max_batch_size == 8 and not got.HasField("dynamic_batching")
    simple_infer_grpc(c, batch=8)
    # a model that was never loaded can be loaded with an override too
    api.load_model("fraud_mlp", config=json.dumps({"max_batch_size": 16, "version_policy": {"specific": {"versions": [1]}}}))
    assert model_rows(c, "fraud_mlp") == {"1": ("READY", "")}
    assert c.get_model_config("fraud_mlp").config.max_batch_size == 16
    c.close()


BAD_OVERRIDES = {
    "unknown-field": {"max_batch_size": 4, "no_such_field": 1},
    "wrong-type": {"max_batch_size": "four"},
    "not-json": "{max_batch_size: 4",
    "trailing-garbage": '{"max_batch_size": 4} x',
    "dims-mismatch": {"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [7]}]},
    "name-mismatch": {"name": "other", "max_batch_size": 8},
    "negative-batch": {"max_batch_size": -2},
    "platform": {"platform": "tensorflow_graphdef"},
    "bad-warmup": {"max_batch_size": 8, "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {
        "INPUT0": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True},
        "INPUT1": {"data_type": "TYPE_INT32", "dims": [16], "zero_data": True}}}]},
    "label-escape": {"max_batch_size": 8, "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], "label_filename": "../../etc/passwd"}]},
    "filename-escape": {"max_batch_size": 8, "default_model_filename": "../x"},
}


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_bad_config_override_fails_and_old_keeps_serving(explicit, proto):
    c = explicit.client()
    api = c if proto == "grpc" else explicit.http_client()
    for name, cfg in BAD_OVERRIDES.items():
        text = cfg if isinstance(cfg, str) else json.dumps(cfg)
        e = grpc_error(api.load_model, "simple", config=text)
        assert "failed to load 'simple'" in e.message(), (name, e)
        if proto == "grpc":
            assert e.status() == "StatusCode.INVALID_ARGUMENT", (name, e)
        else:
            assert str(e.status()) == "400", (name, e)
        # what served before still serves, with its own config
        assert c.is_model_ready("simple") is True, name
        assert c.get_model_config("simple").config.max_batch_size == 8, name
        simple_infer_grpc(c, batch=8, seed=len(name))
        rows = model_rows(c, "simple")
        assert list(rows) == ["1"] and rows["1"][0] == "READY", (name, rows)
        # failures past the parse are reported in the index
        assert rows["1"][1] == "" or rows["1"][1].startswith(RELOAD_FAILED), (name, rows)
    # the last override failed after parsing: the index says so; a good load clears it
    assert model_rows(c, "simple")["1"][1].startswith(RELOAD_FAILED)
    api.load_model("simple")
    assert model_rows(c, "simple") == {"1": ("READY", "")}
    c.close()


def test_failed_override_of_unloaded_model_reports_the_reason(explicit):
    c = explicit.client()
    e = grpc_error(c.load_model, "fraud_mlp", config=json.dumps({"max_batch_size": 8, "input": [
        {"name": "features", "data_type": "TYPE_INT32", "dims": [30]}]}))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "failed to load 'fraud_mlp'" in e.message(), e
    assert c.is_model_ready("fraud_mlp") is False
    rows = [r for r in index_rows(c) if r[0] == "fraud_mlp"]
    assert rows and all(r[2] == "UNAVAILABLE" and r[3] for r in rows), rows
    c.load_model("fraud_mlp")
    assert c.is_model_ready("fraud_mlp") is True
    c.close()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_refused_outside_explicit_mode(make_repo, switchyard, mode):
    srv = switchyard(make_repo(["simple", "fraud_mlp"]), "--model-control-mode", mode)
    c, hc = srv.client(), srv.http_client()
    for fn, args in ((c.load_model, ("simple",)), (c.unload_model, ("simple",)),
                     (c.load_model, ("fraud_mlp",)), (c.unload_model, ("fraud_mlp",)),
                     (c.load_model, ("simple_identity",))):
        e = grpc_error(fn, *args)
        assert e.status() == "StatusCode.UNAVAILABLE", e
        assert f"not allowed with --model-control-mode={mode}" in e.message(), e
    e = grpc_error(c.load_model, "simple", config=json.dumps({"max_batch_size": 2}),
                   files={"file:1/model.onnx": onnx_bytes()})
    assert e.status() == "StatusCode.UNAVAILABLE", e
    for fn in (hc.load_model, hc.unload_model):
        e = grpc_error(fn, "simple")
        assert str(e.status()) == "503" and "not allowed" in e.message(), e
    # nothing changed
    assert c.get_model_config("simple").config.max_batch_size == 8
    assert sorted(index_rows(c)) == [("fraud_mlp", "1", "READY", ""), ("fraud_mlp", "2", "READY", ""),
                                     ("simple", "1", "READY", "")]
    simple_infer_grpc(c)
    c.close()
    hc.close()


# ------------------------------------------------------------------------------ file overrides


@pytest.fixture
def server_tmp(tmp_path, monkeypatch):
    """A TMPDIR for the server, deep enough that `../..` escapes from its override directories
    still land inside this test's tmp_path: <tmp>/escape/a/b/sytmp/switchyard-override-XXXX."""
    d = tmp_path / "escape" / "a" / "b" / "sytmp"
    d.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(d))
    return d


@pytest.fixture
def explicit_tmp(server_tmp, make_repo, switchyard):
    repo = make_repo(["simple", "fraud_mlp"])
    srv = switchyard(repo, "--model-control-mode", "explicit", "--load-model", "simple")
    srv.repo = repo
    srv.tmp = server_tmp
    return srv


def override_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("switchyard-override-*"))


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_load_with_file_overrides(explicit_tmp, proto):
    srv = explicit_tmp
    c = srv.client()
    api = c if proto == "grpc" else srv.http_client()
    # simple's name, fraud_mlp's files: the override replaces the repository's directory
    cfg = json.dumps({"max_batch_size": 4, "version_policy": {"all": {}}})
    api.load_model("simple", config=cfg, files={"file:1/model.onnx": onnx_bytes("fraud_mlp", 1),
                                                "file:7/model.onnx": onnx_bytes("fraud_mlp", 2)})
    assert model_rows(c, "simple") == {"1": ("READY", ""), "7": ("READY", "")}
    (tmpdir,) = override_dirs(srv.tmp)  # the files live in one temporary directory
    assert (tmpdir / "7" / "model.onnx").read_bytes() == onnx_bytes("fraud_mlp", 2)
    md = c.get_model_metadata("simple")
    assert [i.name for i in md.inputs] == ["features"]
    x = h.fraud_inputs(4, seed=11)
    for v, src in (("1", 1), ("7", 2), ("", 2)):
        r = c.infer("simple", fraud_inputs_grpc(x), model_version=v, client_timeout=TIMEOUT)
        assert r.get_response().model_version == (v or "7")
        assert np.allclose(r.as_numpy("probabilities"), h.reference("fraud_mlp", x, src)["probabilities"],
                           rtol=1e-5, atol=1e-6)
    # a model the repository does not have at all
    api.load_model("brand_new", config=json.dumps({"max_batch_size": 8}),
                   files={"file:1/model.onnx": onnx_bytes()})
    simple_infer_grpc(c, model="brand_new", batch=8)
    assert len(override_dirs(srv.tmp)) == 2
    # a plain reload goes back to the repository's files; the override directory goes away
    api.load_model("simple")
    assert model_rows(c, "simple")["1"] == ("READY", "")
    assert model_rows(c, "simple")["7"] == ("UNAVAILABLE", "unloaded")
    simple_infer_grpc(c, batch=8)
    wait_for(lambda: len(override_dirs(srv.tmp)) == 1, "the replaced override directory to be removed", 10)
    api.unload_model("brand_new")
    wait_for(lambda: not override_dirs(srv.tmp), "the unloaded override directory to be removed", 10)
    c.close()


def test_file_override_needs_config(explicit_tmp):
    c = explicit_tmp.client()
    e = grpc_error(c.load_model, "simple", files={"file:1/model.onnx": onnx_bytes()})
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "failed to load" in e.message(), e
    # a broken model file in an override fails the load; the old one serves
    e = grpc_error(c.load_model, "simple", config="{}", files={"file:1/model.onnx": b"\x08garbage"})
    assert "failed to load 'simple'" in e.message(), e
    simple_infer_grpc(c, batch=8)
    assert not override_dirs(explicit_tmp.tmp)
    c.close()


def escape_targets(srv, unique: str) -> list[Path]:
    """Where `unique` would land if an override path escaped its temporary directory
    (<server tmp>/switchyard-override-X/…), the repository, or the server's working directory."""
    tmp = srv.tmp
    out = [tmp / unique, tmp.parent / unique, tmp.parent.parent / unique, tmp.parent.parent.parent / unique,
           Path("/tmp") / unique, Path("/") / unique, srv.repo / unique, srv.repo.parent / unique,
           h.ROOT / unique, h.ROOT.parent / unique, srv.repo / "simple" / unique]
    return out


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_file_override_paths_cannot_escape(explicit_tmp, proto):
    srv = explicit_tmp
    c = srv.client()
    api = c if proto == "grpc" else srv.http_client()
    escape_root = srv.tmp.parents[2]  # <tmp>/escape
    test_tmp = srv.tmp.parents[3]
    abs_target = escape_root / f"abs-{uuid.uuid4().hex}"
    cases = {}
    for pattern in ("../{u}", "../../{u}", "../../../{u}", "../../../../{u}", "1/../../{u}",
                    "1/../../../{u}", "./{u}", "1/./{u}", "1//{u}", "1/{u}/..", "{u}/../../x"):
        u = f"esc-{uuid.uuid4().hex[:12]}"
        cases[pattern.format(u=u)] = u
    cases[str(abs_target)] = abs_target.name
    cases["/tmp/" + (u := f"esc-{uuid.uuid4().hex[:12]}")] = u
    cases[""] = None
    for path, unique in cases.items():
        for with_valid in (False, True):
            files = {"file:" + path: b"pwned"}
            if with_valid:  # the bad path after a good one
                files = {"file:1/model.onnx": onnx_bytes(), **files}
            e = grpc_error(api.load_model, "simple", config=json.dumps({"max_batch_size": 2}), files=files)
            assert "failed to load 'simple'" in e.message(), (path, e)
            if proto == "grpc":
                assert e.status() == "StatusCode.INVALID_ARGUMENT", (path, e)
            else:
                assert str(e.status()) == "400", (path, e)
            if unique:
                for t in escape_targets(srv, unique) + [abs_target]:
                    assert not t.exists(), f"override {path!r} wrote {t}"
                found = [p for p in test_tmp.rglob("*") if p.name == unique]
                assert not found, f"override {path!r} wrote {found}"
    # nothing is left behind, and what served before still serves with its own config
    assert not override_dirs(srv.tmp)
    assert [p.name for p in escape_root.iterdir()] == ["a"]
    assert c.get_model_config("simple").config.max_batch_size == 8
    assert model_rows(c, "simple") == {"1": ("READY", "")}
    simple_infer_grpc(c, batch=8)
    c.close()


def test_file_override_bad_payloads_http(explicit_tmp):
    srv = explicit_tmp
    cfg = json.dumps({"max_batch_size": 2})
    for params, what in (
        ({"config": cfg, "file:1/model.onnx": "not base64 !!!"}, "base64"),
        ({"config": cfg, "file:1/model.onnx": 12}, "file:1/model.onnx"),
        ({"config": {"max_batch_size": 2}}, "config"),
        ({"config": cfg, "bogus": "x"}, "bogus"),
    ):
        r = http_post(srv, "/v2/repository/models/simple/load", {"parameters": params})
        assert r.status_code == 400, (params, r.status_code, r.text)
        assert what in r.json()["error"], (params, r.text)
    r = http_post(srv, "/v2/repository/models/simple/load", b"{not json")
    assert r.status_code == 400, r.text
    # gRPC: a file: parameter must carry bytes, config a string
    stub = srv.stub()
    req = pb.RepositoryModelLoadRequest(model_name="simple")
    req.parameters["config"].string_param = cfg
    req.parameters["file:1/model.onnx"].string_param = "abc"
    h.assert_rpc_error(stub.RepositoryModelLoad, req, grpc.StatusCode.INVALID_ARGUMENT, "file:1/model.onnx")
    req = pb.RepositoryModelLoadRequest(model_name="simple")
    req.parameters["config"].bytes_param = cfg.encode()
    h.assert_rpc_error(stub.RepositoryModelLoad, req, grpc.StatusCode.INVALID_ARGUMENT, "config")
    assert not override_dirs(srv.tmp)
    simple_infer_grpc(srv.client(), batch=8)


# --------------------------------------------------------------------------- model name safety


BAD_NAMES = {
    "dotdot": "..",
    "dot": ".",
    "dotdot-slash-x": "../x",
    "deep-traversal": "../../../../etc",
    "spaced-dotdot": " .. ",
    "slash": "a/b",
    "backslash": "a\\b",
    "empty": "",
    "spaces": "   ",
    "tab": "\t",
    "leading-space": " simple",
    "trailing-space": "simple ",
    "nul": "sim\x00ple",
    "newline": "sim\nple",
    "hidden": ".simple",
    "256-chars": "x" * 256,
    "absolute": "/etc",
}


@pytest.fixture(scope="module")
def names_server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("names_repo")
    h.copy_model(repo, "simple")
    srv = module_switchyard(repo, "--model-control-mode", "explicit", "--load-model", "simple")
    srv.repo = repo
    return srv


@pytest.mark.parametrize("op", ["load", "unload"])
@pytest.mark.parametrize("key", sorted(BAD_NAMES))
def test_invalid_model_names_refused(names_server, key, op):
    name = BAD_NAMES[key]
    srv = names_server
    before = sorted(p.name for p in srv.repo.iterdir())
    # gRPC, raw stub (no client-side checks)
    stub = srv.stub()
    if op == "load":
        req = pb.RepositoryModelLoadRequest(model_name=name)
        fn = stub.RepositoryModelLoad
    else:
        req = pb.RepositoryModelUnloadRequest(model_name=name)
        fn = stub.RepositoryModelUnload
    msg = h.assert_rpc_error(fn, req, grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")
    # tritonclient.grpc
    c = srv.client()
    e = grpc_error(getattr(c, f"{op}_model"), name)
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "invalid model name" in e.message(), e
    c.close()
    # HTTP, every unsafe character percent-encoded
    r = http_post(srv, f"/v2/repository/models/{url_name(name)}/{op}")
    if name == "":
        # `/v2/repository/models//load` is not a route
        assert r.status_code in (400, 404), (r.status_code, r.text)
    else:
        assert r.status_code == 400, (r.status_code, r.text)
        assert "invalid model name" in r.json()["error"], r.text
    # with a config and files too
    if op == "load" and name:
        req = pb.RepositoryModelLoadRequest(model_name=name)
        req.parameters["config"].string_param = json.dumps({"max_batch_size": 2})
        req.parameters["file:1/model.onnx"].bytes_param = onnx_bytes()
        h.assert_rpc_error(stub.RepositoryModelLoad, req, grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")
    # nothing changed
    assert sorted(p.name for p in srv.repo.iterdir()) == before
    c = srv.client()
    assert sorted(index_rows(c)) == [("simple", "1", "READY", "")]
    simple_infer_grpc(c)
    c.close()
    assert "\x00" not in msg


def test_longest_valid_name_is_not_a_name_error(names_server):
    c = names_server.client()
    e = grpc_error(c.load_model, "x" * 255)
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e
    assert "invalid model name" not in e.message() and "failed to load" in e.message(), e
    c.close()


# --------------------------------------------------------------- paths in repository configs


@pytest.fixture
def escaping_repo(make_repo, tmp_path):
    """simple, and models whose configs or files point outside their directories, each at a
    target that really exists (only the path checks can stop them)."""
    repo = make_repo(["simple"])
    assert repo.parent == tmp_path
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")
    # label_filename relative to the model directory: <repo>/m/../../etc/passwd = <tmp>/etc/passwd
    cfg = h.simple_config("label_escape")
    cfg = cfg.replace('name: "OUTPUT0"', 'name: "OUTPUT0"\n    label_filename: "../../etc/passwd"', 1)
    assert "label_filename" in cfg
    h.copy_model(repo, "simple", "label_escape", config=cfg)
    # label_filename through a symlink
    cfg = h.simple_config("label_symlink").replace('name: "OUTPUT1"', 'name: "OUTPUT1"\n    label_filename: "labels.txt"', 1)
    d = h.copy_model(repo, "simple", "label_symlink", config=cfg)
    (d / "labels.txt").symlink_to(tmp_path / "etc" / "passwd")
    # default_model_filename "../x": <repo>/m/1/../x = <repo>/m/x, a valid model
    d = h.copy_model(repo, "simple", "filename_escape",
                     config=h.simple_config("filename_escape", 'default_model_filename: "../x"'))
    (d / "x").write_bytes(SIMPLE_ONNX.read_bytes())
    (d / "1" / "model.onnx").unlink()
    # model_warmup input_data_file "../../secret": <repo>/m/warmup/../../secret = <repo>/secret,
    # exactly the bytes the sample needs
    (repo / "secret").write_bytes(np.arange(16, dtype=np.int32).tobytes())
    warm = warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", 'input_data_file: "../../secret"'),
                                 "INPUT1": ("TYPE_INT32", "zero_data: true")})
    d = h.copy_model(repo, "simple", "warmup_escape", config=h.simple_config("warmup_escape", warm))
    (d / "warmup").mkdir()
    # a warmup data file that is a symlink out of the warmup directory
    warm = warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", 'input_data_file: "in0.bin"'),
                                 "INPUT1": ("TYPE_INT32", "zero_data: true")})
    d = h.copy_model(repo, "simple", "warmup_symlink", config=h.simple_config("warmup_symlink", warm))
    (d / "warmup").mkdir()
    (d / "warmup" / "in0.bin").symlink_to(repo / "secret")
    # the model file is a symlink to a valid model outside the model directory
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(SIMPLE_ONNX.read_bytes())
    d = h.copy_model(repo, "simple", "symlink_escape")
    (d / "1" / "model.onnx").unlink()
    (d / "1" / "model.onnx").symlink_to(outside)
    # the same with a relative link
    d = h.copy_model(repo, "simple", "relative_symlink_escape")
    (d / "1" / "model.onnx").unlink()
    (d / "1" / "model.onnx").symlink_to(Path("..") / ".." / ".." / "outside.onnx")
    assert (d / "1" / "model.onnx").resolve() == outside.resolve()
    return repo


ESCAPES = {
    "label_escape": ("label_filename",),
    "label_symlink": ("label_filename", "outside"),
    "filename_escape": ("default_model_filename",),
    "warmup_escape": ("input_data_file",),
    "warmup_symlink": ("input_data_file", "outside"),
    "symlink_escape": ("outside",),
    "relative_symlink_escape": ("outside",),
}


def test_config_paths_outside_the_model_directory_fail_to_load(escaping_repo, switchyard):
    srv = switchyard(escaping_repo, "--exit-on-error=false")
    c = srv.client()
    rows = index_rows(c)
    for model, words in ESCAPES.items():
        mine = [r for r in rows if r[0] == model]
        assert mine and all(r[2] == "UNAVAILABLE" for r in mine), (model, rows)
        reason = " ".join(r[3] for r in mine)
        for w in words:
            assert w in reason, (model, w, reason)
        assert c.is_model_ready(model) is False
        e = grpc_error(simple_infer_grpc, c, model=model)
        assert e.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), e
        assert "root:x" not in reason
    assert ("simple", "1", "READY", "") in rows
    simple_infer_grpc(c, batch=8)
    c.close()


def test_escaping_configs_fail_explicit_load_and_poll(escaping_repo, switchyard, tmp_path):
    """The same checks on the load API and on a poll-mode reload of a serving model."""
    srv = switchyard(escaping_repo, "--model-control-mode", "explicit", "--load-model", "simple")
    c = srv.client()
    for model in ESCAPES:
        e = grpc_error(c.load_model, model)
        assert e.status() == "StatusCode.INVALID_ARGUMENT" and f"failed to load '{model}'" in e.message(), e
        assert c.is_model_ready(model) is False
    simple_infer_grpc(c)
    c.close()
    # poll mode: a serving model whose config gains an escaping label file keeps its old load
    repo = tmp_path / "pollrepo"
    repo.mkdir()
    h.copy_model(repo, "simple")
    staging = tmp_path / "staging"
    staging.mkdir()
    srv = switchyard(repo, *POLL)
    c = srv.client()
    cfg = h.simple_config("simple").replace('name: "OUTPUT0"', 'name: "OUTPUT0"\n    label_filename: "../../etc/passwd"', 1)
    write_atomic(repo / "simple" / "config.pbtxt", cfg, staging)
    rows = wait_for(lambda: (r := model_rows(c, "simple")) and RELOAD_FAILED in r.get("1", ("", ""))[1] and r,
                    "the failed reload to show in the index")
    assert rows["1"][0] == "READY" and "label_filename" in rows["1"][1], rows
    simple_infer_grpc(c)
    c.close()


# ----------------------------------------------------------------------------------- warmup


def warmup_block(name, batch, inputs: dict, count=None) -> str:
    """A model_warmup entry; `inputs` maps input name -> (data type, data clause)."""
    ins = "\n".join(
        f'    inputs {{ key: "{k}" value {{ data_type: {dt} dims: [ 16 ] {data} }} }}'
        for k, (dt, data) in inputs.items())
    cnt = f"    count: {count}\n" if count else ""
    return f'model_warmup [ {{\n    name: "{name}"\n    batch_size: {batch}\n{cnt}{ins}\n}} ]'


def warmup_config(name, *blocks) -> str:
    # several model_warmup [ ... ] lists concatenate, as repeated fields do in text format
    return h.simple_config(name, "\n".join(blocks))


def test_valid_warmup_loads_and_serves(make_repo, switchyard):
    repo = make_repo([])
    cfg = warmup_config(
        "warm",
        warmup_block("zeros", 8, {"INPUT0": ("TYPE_INT32", "zero_data: true"),
                                  "INPUT1": ("TYPE_INT32", "zero_data: true")}),
        warmup_block("random", 1, {"INPUT0": ("TYPE_INT32", "random_data: true"),
                                   "INPUT1": ("TYPE_INT32", "random_data: true")}, count=3),
        warmup_block("file", 2, {"INPUT0": ("TYPE_INT32", 'input_data_file: "in0.bin"'),
                                 "INPUT1": ("TYPE_INT32", 'input_data_file: "sub/in1.bin"')}),
    )
    d = h.copy_model(repo, "simple", "warm", config=cfg.replace("count: 1", "count: 2"))
    (d / "warmup" / "sub").mkdir(parents=True)
    (d / "warmup" / "in0.bin").write_bytes(np.zeros((2, 16), np.int32).tobytes())
    (d / "warmup" / "sub" / "in1.bin").write_bytes(np.ones((2, 16), np.int32).tobytes())
    srv = switchyard(repo)
    c = srv.client()
    assert index_rows(c) == [("warm", "1", "READY", "")]
    got = c.get_model_config("warm").config
    assert [(w.name, w.batch_size) for w in got.model_warmup] == [("zeros", 8), ("random", 1), ("file", 2)]
    assert got.model_warmup[1].count == 3
    simple_infer_grpc(c, model="warm", batch=8)
    # warmup requests are not counted as inferences
    (s,) = c.get_inference_statistics("warm", client_timeout=TIMEOUT).model_stats
    assert s.inference_stats.success.count == 1
    c.close()


WARMUP_FAILURES = {
    # data_type differs from the model's INT32
    "dtype_mismatch": (warmup_block("w", 1, {"INPUT0": ("TYPE_FP32", "zero_data: true"),
                                            "INPUT1": ("TYPE_INT32", "zero_data: true")}),
                       "data_type does not match"),
    # an input left out
    "missing_input": (warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", "zero_data: true")}), "INPUT1"),
    # batch_size over max_batch_size (8)
    "batch_too_big": (warmup_block("w", 9, {"INPUT0": ("TYPE_INT32", "zero_data: true"),
                                           "INPUT1": ("TYPE_INT32", "zero_data: true")}), "batch_size"),
    # the data file has the wrong size
    "short_file": (warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", 'input_data_file: "short.bin"'),
                                        "INPUT1": ("TYPE_INT32", "zero_data: true")}), "needs 64"),
    # the data file does not exist
    "missing_file": (warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", 'input_data_file: "nope.bin"'),
                                          "INPUT1": ("TYPE_INT32", "zero_data: true")}), "nope.bin"),
}


def test_failing_warmup_fails_the_load(make_repo, switchyard):
    repo = make_repo(["simple"])
    for name, (block, _) in WARMUP_FAILURES.items():
        d = h.copy_model(repo, "simple", name, config=h.simple_config(name, block))
        (d / "warmup").mkdir()
        (d / "warmup" / "short.bin").write_bytes(b"\0" * 60)
    srv = switchyard(repo, "--exit-on-error=false")
    c = srv.client()
    rows = index_rows(c)
    for name, (_, words) in WARMUP_FAILURES.items():
        mine = [r for r in rows if r[0] == name]
        assert mine and all(r[2] == "UNAVAILABLE" for r in mine), (name, rows)
        assert words in " ".join(r[3] for r in mine), (name, words, mine)
        assert c.is_model_ready(name) is False
    assert ("simple", "1", "READY", "") in rows
    simple_infer_grpc(c)
    c.close()


def test_warmup_runs_the_model(make_repo, switchyard):
    """Warmup samples really execute: dims the model cannot take fail the load at run time."""
    repo = make_repo(["simple"])
    block = warmup_block("w", 1, {"INPUT0": ("TYPE_INT32", "zero_data: true"),
                                  "INPUT1": ("TYPE_INT32", "zero_data: true")}).replace("dims: [ 16 ]", "dims: [ 5 ]")
    h.copy_model(repo, "simple", "bad_dims", config=h.simple_config("bad_dims", block))
    srv = switchyard(repo, "--exit-on-error=false")
    c = srv.client()
    rows = [r for r in index_rows(c) if r[0] == "bad_dims"]
    assert rows and all(r[2] == "UNAVAILABLE" for r in rows), rows
    assert "model_warmup 'w'" in " ".join(r[3] for r in rows), rows
    c.close()


def test_warmup_in_config_override(explicit):
    c = explicit.client()
    ins = {k: {"data_type": "TYPE_INT32", "dims": [16], "random_data": True} for k in ("INPUT0", "INPUT1")}
    good = {"max_batch_size": 8, "model_warmup": [{"name": "w", "batch_size": 4, "count": 2, "inputs": ins}]}
    c.load_model("simple", config=json.dumps(good))
    assert [w.name for w in c.get_model_config("simple").config.model_warmup] == ["w"]
    simple_infer_grpc(c, batch=8)
    bad = json.loads(json.dumps(good))
    bad["model_warmup"][0]["inputs"]["INPUT1"]["data_type"] = "TYPE_INT64"
    bad["max_batch_size"] = 4
    e = grpc_error(c.load_model, "simple", config=json.dumps(bad))
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e
    assert "failed to load 'simple'" in e.message() and "data_type does not match" in e.message(), e
    # the old load (max_batch_size 8, warmup "w") still serves
    assert c.get_model_config("simple").config.max_batch_size == 8
    simple_infer_grpc(c, batch=8)
    rows = model_rows(c, "simple")
    assert rows["1"][0] == "READY" and rows["1"][1].startswith(RELOAD_FAILED), rows
    c.close()


# ------------------------------------------------------------------------- poll mode basics


def test_poll_adds_and_removes_models(make_repo, switchyard, tmp_path):
    repo = make_repo(["simple"])
    staging = tmp_path / "staging"
    staging.mkdir()
    srv = switchyard(repo, *POLL)
    c = srv.client()
    assert index_rows(c) == [("simple", "1", "READY", "")]
    # a whole model directory, built aside and renamed in
    tmp = staging / "fraud_mlp"
    shutil.copytree(h.MODEL_REPOSITORY / "fraud_mlp", tmp)
    os.rename(tmp, repo / "fraud_mlp")
    wait_for(lambda: c.is_model_ready("fraud_mlp"), "fraud_mlp to load")
    assert model_rows(c, "fraud_mlp") == {"1": ("READY", ""), "2": ("READY", "")}
    # a broken new model: UNAVAILABLE with its reason, nothing else disturbed
    tmp = staging / "broken"
    tmp.mkdir()
    (tmp / "config.pbtxt").write_text("this is { not a config")
    (tmp / "1").mkdir()
    (tmp / "1" / "model.onnx").write_bytes(SIMPLE_ONNX.read_bytes())
    os.rename(tmp, repo / "broken")
    rows = wait_for(lambda: [r for r in index_rows(c) if r[0] == "broken" and r[2] == "UNAVAILABLE"],
                    "the broken model to show as UNAVAILABLE")
    assert rows[0][3], rows
    # removal unloads
    os.rename(repo / "fraud_mlp", staging / "fraud_gone")
    wait_for(lambda: not c.is_model_ready("fraud_mlp"), "fraud_mlp to unload")
    simple_infer_grpc(c)
    assert c.is_model_ready("simple")
    c.close()


# ------------------------------------------------------------- reloads under load, no failures


class LoadGenerator:
    """Threads that send unversioned requests (and versioned ones to a version that stays) to
    fraud_mlp and simple through tritonclient gRPC and HTTP, for as long as the test runs.
    Every response is checked against onnxruntime's output for the file behind the version
    that answered; every exception is kept."""

    STREAMS = [
        ("grpc", "fraud_mlp", ""),
        ("http", "fraud_mlp", ""),
        ("grpc", "simple", ""),
        ("http", "simple", ""),
        ("grpc", "fraud_mlp", "2"),
    ]

    def __init__(self, srv, fraud_sources: dict, simple_version_ok=lambda v: True):
        self.srv = srv
        self.fraud_sources = fraud_sources  # fraud_mlp version -> source version (1 or 2)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[str, str, str, float, float, str]] = []
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        # fixed inputs whose scores differ between fraud_mlp's two versions
        self.fraud_x = []
        for seed in range(40):
            x = h.fraud_inputs(3, seed=seed)
            r1 = h.reference("fraud_mlp", x, 1)
            r2 = h.reference("fraud_mlp", x, 2)
            if np.abs(r1["probabilities"] - r2["probabilities"]).max() > 0.1:
                self.fraud_x.append((x["features"], {1: r1, 2: r2}))
            if len(self.fraud_x) == 4:
                break
        assert len(self.fraud_x) == 4

    def start(self):
        for i, stream in enumerate(self.STREAMS):
            t = threading.Thread(target=self._run, args=(i, *stream), name=f"gen-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self, timeout=30.0):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a load generator thread hung"

    def _client(self, proto):
        if proto == "grpc":
            return grpcclient.InferenceServerClient(self.srv.url)
        return httpclient.InferenceServerClient(self.srv.http_url, network_timeout=TIMEOUT,
                                                connection_timeout=TIMEOUT)

    def _run(self, i, proto, model, version):
        mod = grpcclient if proto == "grpc" else httpclient
        c = self._client(proto)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    if model == "fraud_mlp":
                        feats, refs = self.fraud_x[n % len(self.fraud_x)]
                        t = mod.InferInput("features", list(feats.shape), "FP32")
                        t.set_data_from_numpy(feats)
                        ins = [t]
                    else:
                        a, b = simple_data(1 + n % 4, seed=n % 16)
                        ins = []
                        for name, arr in (("INPUT0", a), ("INPUT1", b)):
                            t = mod.InferInput(name, list(arr.shape), "INT32")
                            t.set_data_from_numpy(arr)
                            ins.append(t)
                    if proto == "grpc":
                        r = c.infer(model, ins, model_version=version, client_timeout=TIMEOUT)
                        got_version = r.get_response().model_version
                    else:
                        r = c.infer(model, ins, model_version=version)
                        got_version = r.get_response()["model_version"]
                    t1 = time.monotonic()
                    if model == "fraud_mlp":
                        src = self.fraud_sources.get(got_version)
                        assert src is not None, f"answered by unexpected version {got_version!r}"
                        ref = refs[src]
                        assert np.allclose(r.as_numpy("probabilities"), ref["probabilities"],
                                           rtol=1e-5, atol=1e-6), f"wrong scores from version {got_version}"
                        assert np.array_equal(r.as_numpy("label"), ref["label"])
                    else:
                        assert np.array_equal(r.as_numpy("OUTPUT0"), a + b), "wrong OUTPUT0"
                        assert np.array_equal(r.as_numpy("OUTPUT1"), a - b), "wrong OUTPUT1"
                    if version:
                        assert got_version == version, (version, got_version)
                    with self.lock:
                        self.records.append((f"{proto}-{i}", model, version, t0, t1, got_version))
                except Exception as e:  # noqa: BLE001 -- every failure counts
                    what = f"{e.status()}: {e.message()}" if isinstance(e, InferenceServerException) else repr(e)
                    with self.lock:
                        self.errors.append(f"{proto} {model} v{version or '-'} at "
                                           f"{time.monotonic() - t0:.3f}s into the request: {what}")
        finally:
            c.close()

    def count(self, model=None, stream=None):
        return sum(1 for r in self.records if (model is None or r[1] == model) and (stream is None or r[0] == stream))


class Timeline:
    """Per model: the latest version before and after each repository change, with when the change
    started and when the test saw it applied. A request that ran entirely between two changes must
    have been answered by the latest version of that phase; one that overlapped a change, by the
    latest before or after it."""

    def __init__(self, initial: dict[str, str]):
        self.initial = dict(initial)
        self.events: dict[str, list[tuple[float, float, str]]] = {m: [] for m in initial}

    def add(self, model, t_start, t_ready, latest):
        self.events[model].append((t_start, t_ready, latest))

    def allowed(self, model, t0, t1) -> set[str]:
        out = set()
        prev, prev_ready = self.initial[model], float("-inf")
        for ts, tr, latest in self.events[model]:
            if t0 <= ts and t1 >= prev_ready:  # the stable phase before this change
                out.add(prev)
            if t0 <= tr and t1 >= ts:  # during the change
                out |= {prev, latest}
            prev, prev_ready = latest, tr
        if t1 >= prev_ready:
            out.add(prev)
        return out

    def violations(self, records) -> list[str]:
        bad = []
        for stream, model, version, t0, t1, got in records:
            if version:
                continue
            ok = self.allowed(model, t0, t1)
            if got not in ok:
                bad.append(f"{stream} {model} [{t0:.3f}, {t1:.3f}] answered by v{got}, expected one of {sorted(ok)}")
        return bad


def test_timeline_checker():
    """The version checker used below flags what it should."""
    tl = Timeline({"m": "2"})
    tl.add("m", 10.0, 11.0, "3")  # change started at 10, seen applied at 11
    tl.add("m", 20.0, 21.0, "3")  # a failed reload: latest unchanged
    tl.add("m", 30.0, 31.5, "2")
    assert tl.allowed("m", 1, 2) == {"2"}
    assert tl.allowed("m", 9, 10.5) == {"2", "3"}
    assert tl.allowed("m", 11.2, 19) == {"3"}
    assert tl.allowed("m", 10.5, 12) == {"2", "3"}
    assert tl.allowed("m", 25, 29) == {"3"}
    assert tl.allowed("m", 32, 40) == {"2"}
    recs = [("s", "m", "", 11.2, 11.3, "2"), ("s", "m", "", 11.2, 11.3, "3"), ("s", "m", "2", 11.2, 11.3, "2"),
            ("s", "m", "", 32, 33, "3")]
    assert len(tl.violations(recs)) == 2


def latest_ready(c, model) -> str:
    rows = model_rows(c, model)
    ready = [int(v) for v, (s, _) in rows.items() if s == "READY"]
    return str(max(ready)) if ready else ""


@pytest.mark.timeout(300)
def test_poll_reloads_under_load_without_a_failed_request(make_repo, switchyard, tmp_path):
    repo = make_repo(["fraud_mlp", "simple"])
    staging = tmp_path / "staging"
    staging.mkdir()
    fraud_dir, simple_dir = repo / "fraud_mlp", repo / "simple"
    srv = switchyard(repo, *POLL)
    c = srv.client()
    assert model_rows(c, "fraud_mlp") == {"1": ("READY", ""), "2": ("READY", "")}
    sources = {"1": 1, "2": 2}
    gen = LoadGenerator(srv, sources)
    timeline = Timeline({"fraud_mlp": "2", "simple": "1"})
    gen.start()
    wait_for(lambda: all(gen.count(stream=f"{p}-{i}") >= 3 for i, (p, _, _) in enumerate(gen.STREAMS)),
             "every load generator stream to get answers")
    simple_cfg = h.simple_config("simple")
    steps = []

    def step(model, what, edit, applied, latest):
        """Makes one edit, waits for it to take effect, records it on the timeline."""
        errors_before = len(gen.errors)
        t_start = time.monotonic()
        edit()
        wait_for(applied, f"step {len(steps) + 1}: {what}", timeout=20)
        t_ready = time.monotonic()
        timeline.add(model, t_start, t_ready, latest)
        steps.append((what, round(t_ready - t_start, 2)))
        # the newest version answers right away, and nothing failed on the way
        assert latest_ready(c, model) == latest, (what, model_rows(c, model))
        if model == "fraud_mlp":
            r = c.infer("fraud_mlp", fraud_inputs_grpc({"features": gen.fraud_x[0][0]}), client_timeout=TIMEOUT)
        else:
            r = simple_infer_grpc(c)
        assert r.get_response().model_version == latest, (what, r.get_response().model_version)
        assert len(gen.errors) == errors_before, (what, gen.errors[errors_before:])

    def rows_are(model, expected):
        def check():
            return model_rows(c, model) == expected
        return check

    def reason_has(model, text):
        def check():
            rows = model_rows(c, model)
            return rows and all(s != "READY" or text in r for s, r in rows.values()) and any(
                s == "READY" for s, _ in rows.values())
        return check

    def config_is(model, pred):
        return lambda: pred(c.get_model_config(model, client_timeout=TIMEOUT).config) and all(
            s != "READY" or r == "" for s, r in model_rows(c, model).values())

    def add_fraud(v, src):
        sources[str(v)] = src  # known before any request can reach it
        add_version_atomic(fraud_dir, v, FRAUD_ONNX[src].read_bytes(), staging)

    U, R = "UNAVAILABLE", "READY"
    unloaded = (U, "unloaded")
    # 1. a new version: the newest one takes the unversioned traffic once READY
    step("fraud_mlp", "add fraud_mlp/3", lambda: add_fraud(3, 1),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, "")}), "3")
    # 2. simple: dynamic batching with a queue delay
    simple_cfg_2 = simple_cfg + "dynamic_batching { max_queue_delay_microseconds: 300 }\n"
    step("simple", "simple: max_queue_delay", lambda: write_atomic(simple_dir / "config.pbtxt", simple_cfg_2, staging),
         config_is("simple", lambda k: k.dynamic_batching.max_queue_delay_microseconds == 300), "1")
    # 3. another version
    step("fraud_mlp", "add fraud_mlp/4", lambda: add_fraud(4, 2),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, ""), "4": (R, "")}), "4")
    # 4. remove the newest version: back to 3
    step("fraud_mlp", "remove fraud_mlp/4", lambda: remove_version_atomic(fraud_dir, 4, staging),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, ""), "4": unloaded}), "3")
    # 5. simple: two instances
    simple_cfg_5 = simple_cfg_2.replace("count: 1", "count: 2")
    step("simple", "simple: instance_group count 2",
         lambda: write_atomic(simple_dir / "config.pbtxt", simple_cfg_5, staging),
         config_is("simple", lambda k: k.instance_group[0].count == 2), "1")
    # 6. a garbage config.pbtxt: the reload fails, the old load keeps serving
    fraud_good = (fraud_dir / "config.pbtxt").read_text()
    step("fraud_mlp", "garbage fraud_mlp/config.pbtxt",
         lambda: write_atomic(fraud_dir / "config.pbtxt", "name: \"fraud_mlp\"\ninput [ { {{ garbage", staging),
         reason_has("fraud_mlp", RELOAD_FAILED), "3")
    assert all(s == R for v, (s, _) in model_rows(c, "fraud_mlp").items() if v != "4")
    # 7. fix it
    step("fraud_mlp", "fix fraud_mlp/config.pbtxt",
         lambda: write_atomic(fraud_dir / "config.pbtxt", fraud_good, staging),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, ""), "4": unloaded}), "3")
    # 8. a corrupt model file in a new version directory: the reload fails, 3 keeps serving
    step("fraud_mlp", "corrupt fraud_mlp/5/model.onnx",
         lambda: add_version_atomic(fraud_dir, 5, b"\x08\x01garbage" * 50, staging),
         reason_has("fraud_mlp", RELOAD_FAILED), "3")
    assert "version 5" in model_rows(c, "fraud_mlp")["3"][1]
    assert "5" not in model_rows(c, "fraud_mlp")
    # 9. remove it
    step("fraud_mlp", "remove fraud_mlp/5", lambda: remove_version_atomic(fraud_dir, 5, staging),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, ""), "4": unloaded}), "3")
    # 10. simple: preferred batch sizes
    simple_cfg_10 = simple_cfg_5.replace("dynamic_batching { max_queue_delay_microseconds: 300 }",
                                         "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 200 }")
    step("simple", "simple: preferred_batch_size",
         lambda: write_atomic(simple_dir / "config.pbtxt", simple_cfg_10, staging),
         config_is("simple", lambda k: list(k.dynamic_batching.preferred_batch_size) == [2, 4]), "1")
    # 11. fraud_mlp: dynamic batching and two instances
    fraud_11 = fraud_config("dynamic_batching { max_queue_delay_microseconds: 500 }").replace("count: 1", "count: 2")
    step("fraud_mlp", "fraud_mlp: dynamic batching, 2 instances",
         lambda: write_atomic(fraud_dir / "config.pbtxt", fraud_11, staging),
         config_is("fraud_mlp", lambda k: k.dynamic_batching.max_queue_delay_microseconds == 500
                   and k.instance_group[0].count == 2), "3")
    # 12. a broken simple config (an unknown field)
    step("simple", "broken simple/config.pbtxt",
         lambda: write_atomic(simple_dir / "config.pbtxt", simple_cfg_10 + "no_such_field: 1\n", staging),
         reason_has("simple", RELOAD_FAILED), "1")
    assert c.get_model_config("simple").config.instance_group[0].count == 2
    # 13. fixed, back to one instance
    step("simple", "fix simple/config.pbtxt",
         lambda: write_atomic(simple_dir / "config.pbtxt", simple_cfg_10.replace("count: 2", "count: 1"), staging),
         config_is("simple", lambda k: k.instance_group[0].count == 1), "1")
    # 14. a new newest version
    step("fraud_mlp", "add fraud_mlp/6", lambda: add_fraud(6, 2),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": (R, ""), "4": unloaded, "6": (R, "")}), "6")
    # 15. remove a middle version
    step("fraud_mlp", "remove fraud_mlp/3", lambda: remove_version_atomic(fraud_dir, 3, staging),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": unloaded, "4": unloaded, "6": (R, "")}), "6")
    # 16. version policy: latest 2 (versions 2 and 6; the versioned stream asks for 2)
    fraud_16 = fraud_11.replace("version_policy: { all { } }", "version_policy: { latest { num_versions: 2 } }")
    step("fraud_mlp", "fraud_mlp: latest 2",
         lambda: write_atomic(fraud_dir / "config.pbtxt", fraud_16, staging),
         rows_are("fraud_mlp", {"1": unloaded, "2": (R, ""), "3": unloaded, "4": unloaded, "6": (R, "")}), "6")
    # 17. simple: version 2 (latest policy): v1 is replaced by v2
    step("simple", "add simple/2", lambda: add_version_atomic(simple_dir, 2, SIMPLE_ONNX.read_bytes(), staging),
         rows_are("simple", {"1": unloaded, "2": (R, "")}), "2")
    # 18. simple: a corrupt version 3 fails the reload; 2 keeps serving
    step("simple", "corrupt simple/3/model.onnx",
         lambda: add_version_atomic(simple_dir, 3, b"not an onnx file" * 20, staging),
         reason_has("simple", RELOAD_FAILED), "2")
    # 19. remove it
    step("simple", "remove simple/3", lambda: remove_version_atomic(simple_dir, 3, staging),
         rows_are("simple", {"1": unloaded, "2": (R, "")}), "2")
    # 20. fraud_mlp: back to the original config (all versions)
    step("fraud_mlp", "fraud_mlp: original config",
         lambda: write_atomic(fraud_dir / "config.pbtxt", fraud_good, staging),
         rows_are("fraud_mlp", {"1": (R, ""), "2": (R, ""), "3": unloaded, "4": unloaded, "6": (R, "")}), "6")
    assert len(steps) == 20
    time.sleep(0.3)
    gen.finish()
    print(f"poll reloads: {len(gen.records)} requests, {len(gen.errors)} errors, steps {steps}")
    assert not gen.errors, f"{len(gen.errors)} failed requests of {len(gen.records) + len(gen.errors)}:\n" + \
        "\n".join(gen.errors[:20])
    for i, (p, m, v) in enumerate(gen.STREAMS):
        assert gen.count(stream=f"{p}-{i}") >= 20, (p, m, v, gen.count(stream=f"{p}-{i}"))
    bad = timeline.violations(gen.records)
    assert not bad, f"{len(bad)} responses from the wrong version:\n" + "\n".join(bad[:20]) + f"\nsteps: {steps}"
    # every fraud_mlp version that was ever newest answered some requests
    answered = {r[5] for r in gen.records if r[1] == "fraud_mlp" and not r[2]}
    assert {"2", "3", "4", "6"} <= answered, answered
    assert {"1", "2"} <= {r[5] for r in gen.records if r[1] == "simple"}
    c.close()


@pytest.mark.timeout(300)
def test_explicit_reloads_under_load_without_a_failed_request(make_repo, switchyard):
    repo = make_repo(["fraud_mlp", "simple"])
    srv = switchyard(repo, "--model-control-mode", "explicit", "--load-model", "fraud_mlp",
                     "--load-model", "simple")
    c, hc = srv.client(), srv.http_client()
    sources = {"1": 1, "2": 2}
    gen = LoadGenerator(srv, sources)
    timeline = Timeline({"fraud_mlp": "2", "simple": "1"})
    gen.start()
    wait_for(lambda: all(gen.count(stream=f"{p}-{i}") >= 3 for i, (p, _, _) in enumerate(gen.STREAMS)),
             "every load generator stream to get answers")
    fraud_policy = {"version_policy": {"all": {}}, "max_batch_size": 256}
    latest = {"fraud_mlp": "2", "simple": "1"}
    done = []

    def reload(model, api, config=None, before=None, new_latest=None, check=None):
        errors_before = len(gen.errors)
        t_start = time.monotonic()
        if before:
            before()
        if config is None:
            api.load_model(model)
        else:
            api.load_model(model, config=json.dumps(config))
        t_ready = time.monotonic()
        if new_latest:
            latest[model] = new_latest
        timeline.add(model, t_start, t_ready, latest[model])
        done.append(model)
        # synchronous: in service the moment the call returns
        rows = model_rows(c, model)
        assert rows[latest[model]] == ("READY", ""), rows
        if check:
            assert check(c.get_model_config(model).config), (model, config)
        assert len(gen.errors) == errors_before, gen.errors[errors_before:]

    def add_fraud3():
        sources["3"] = 1
        shutil.copytree(repo / "fraud_mlp" / "1", repo / "fraud_mlp" / "3")

    for i in range(20):
        api = c if i % 2 == 0 else hc
        k = i % 10
        if k == 0:
            reload("simple", api)
        elif k == 1:
            reload("fraud_mlp", api)
        elif k == 2:
            reload("simple", api, {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 100 + i}},
                   check=lambda cfg, i=i: cfg.dynamic_batching.max_queue_delay_microseconds == 100 + i)
        elif k == 3:
            reload("fraud_mlp", api, {**fraud_policy, "instance_group": [{"count": 2, "kind": "KIND_CPU"}]},
                   check=lambda cfg: cfg.instance_group[0].count == 2)
        elif k == 4:
            reload("fraud_mlp", api, before=add_fraud3, new_latest="3")
        elif k == 5:
            reload("simple", api, {"max_batch_size": 6}, check=lambda cfg: cfg.max_batch_size == 6)
        elif k == 6:
            reload("fraud_mlp", api, before=lambda: shutil.rmtree(repo / "fraud_mlp" / "3"), new_latest="2")
        elif k == 7:
            reload("simple", api, {"max_batch_size": 8, "instance_group": [{"count": 2}]},
                   check=lambda cfg: cfg.instance_group[0].count == 2)
        elif k == 8:
            reload("fraud_mlp", api, fraud_policy, check=lambda cfg: cfg.max_batch_size == 256)
        else:
            reload("simple", api, check=lambda cfg: cfg.max_batch_size == 8 and not cfg.HasField("dynamic_batching"))
        time.sleep(0.1)
    assert len(done) == 20

    # a failed reload (an unknown field; then a config that parses but cannot load) keeps the old
    before_cfg = c.get_model_config("fraud_mlp").config
    for api in (c, hc):
        e = grpc_error(api.load_model, "fraud_mlp", config=json.dumps({**fraud_policy, "bogus_field": 1}))
        assert "failed to load 'fraud_mlp'" in e.message(), e
        e = grpc_error(api.load_model, "fraud_mlp", config=json.dumps(
            {**fraud_policy, "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [31]}]}))
        assert "failed to load 'fraud_mlp'" in e.message(), e
        rows = model_rows(c, "fraud_mlp")
        assert {v: s for v, (s, _) in rows.items()} == {"1": "READY", "2": "READY", "3": "UNAVAILABLE"}, rows
        assert rows["2"][1].startswith(RELOAD_FAILED), rows
        assert c.get_model_config("fraud_mlp").config == before_cfg
    time.sleep(0.5)  # traffic on the kept load
    n_before_finish = gen.count()
    gen.finish()
    print(f"explicit reloads: {len(gen.records)} requests, {len(gen.errors)} errors")
    assert not gen.errors, f"{len(gen.errors)} failed requests of {len(gen.records) + len(gen.errors)}:\n" + \
        "\n".join(gen.errors[:20])
    for i, (p, m, v) in enumerate(gen.STREAMS):
        assert gen.count(stream=f"{p}-{i}") >= 20, (p, m, v, gen.count(stream=f"{p}-{i}"))
    assert n_before_finish > 100
    bad = timeline.violations(gen.records)
    assert not bad, f"{len(bad)} responses from the wrong version:\n" + "\n".join(bad[:20])
    assert {"2", "3"} <= {r[5] for r in gen.records if r[1] == "fraud_mlp" and not r[2]}
    c.close()
    hc.close()


# ------------------------------------------------------------------- shutdown with requests in flight


SLOW_CONFIG = """
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 100000
input [ { name: "x" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def make_slow_model(repo: Path) -> None:
    """Compute-bound: 40 x (MatMul 256x256 + Tanh) per row, reduced to one number per row."""
    d = repo / "slow"
    h.write_slow_model(d, width=256, depth=40)
    (d / "config.pbtxt").write_text(SLOW_CONFIG)


def size_slow_request(c, enough: float, aim: float) -> tuple[int, float]:
    """Grows a slow-model request until one takes at least `enough` seconds (aiming at `aim`);
    returns its rows and how long the last one took."""
    rows = 64
    for _ in range(6):
        t0 = time.monotonic()
        slow_infer(c, rows)
        took = time.monotonic() - t0
        if took >= enough:
            break
        rows = min(20000, int(rows * max(2.0, aim / max(took, 0.005))))
    return rows, took


def slow_infer(c, rows, timeout=TIMEOUT):
    t = grpcclient.InferInput("x", [rows, 256], "FP32")
    t.set_data_from_numpy(np.full((rows, 256), 0.01, dtype=np.float32))
    r = c.infer("slow", [t], client_timeout=timeout)
    y = r.as_numpy("y")
    assert y.shape == (rows, 1) and np.all(np.isfinite(y)) and np.allclose(y, y[0])
    return r


@pytest.mark.timeout(180)
def test_sigterm_drains_in_flight_requests(make_repo, switchyard):
    repo = make_repo([])
    make_slow_model(repo)
    h.copy_model(repo, "simple")
    srv = switchyard(repo, "--model-control-mode", "explicit", "--load-model", "slow",
                     "--ort-intra-op-threads", "1", "--exit-timeout-secs", "60")
    c = srv.client()
    # size the requests so that 16 of them (8 per instance) take a few seconds in all
    rows, took = size_slow_request(c, enough=0.25, aim=0.35)
    assert took >= 0.15, f"slow model too fast to test the drain ({rows} rows took {took:.3f} s)"

    n = 16
    results, errors, done_at = {}, {}, {}
    lock = threading.Lock()
    started = threading.Barrier(n + 1)

    def one(k):
        cl = grpcclient.InferenceServerClient(srv.url)
        cl.is_server_live()  # connected before the signal
        started.wait(timeout=30)
        try:
            r = slow_infer(cl, rows, timeout=120)
            with lock:
                results[k] = r
        except InferenceServerException as e:
            with lock:
                errors[k] = f"{e.status()}: {e.message()} ({time.monotonic() - t_sig:.2f} s after SIGTERM)"
        except Exception as e:  # noqa: BLE001
            with lock:
                errors[k] = repr(e)
        finally:
            with lock:
                done_at[k] = time.monotonic()
            cl.close()

    t_sig = float("inf")
    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    started.wait(timeout=30)
    # all sixteen in the server: two running (one per instance), the rest queued or done
    base = slow_success_count(c)
    wait_for(lambda: slow_pending(srv) + slow_success_count(c) - base >= n - 2,
             "all the requests to reach the server", timeout=20, interval=0.01)
    t_sig = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # new requests are refused while the old ones drain
    refused = []
    fresh = grpcclient.InferenceServerClient(srv.url)
    for cl in (c, fresh):  # an open connection and a new one
        try:
            simple_like = grpcclient.InferInput("x", [1, 256], "FP32")
            simple_like.set_data_from_numpy(np.zeros((1, 256), np.float32))
            cl.infer("slow", [simple_like], client_timeout=10)
            refused.append(False)
        except InferenceServerException as e:
            assert e.status() in ("StatusCode.UNAVAILABLE",), e
            refused.append(True)
    fresh.close()
    try:
        r = requests.post(http_url(srv, "/v2/models/slow/infer"), json={"inputs": [
            {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.0] * 256}]}, timeout=10)
        assert r.status_code == 503, (r.status_code, r.text)
    except requests.ConnectionError:
        pass
    still_running = srv.proc.poll() is None
    t_probe = time.monotonic()
    assert refused == [True, True]

    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an in-flight request never completed"
    rc = srv.wait_exit(timeout=60)
    late = sum(1 for k in done_at if done_at[k] > t_probe)
    print(f"drain: {rows} rows/request, {late} finished after the refusals, "
          f"done at {sorted(round(v - t_sig, 2) for v in done_at.values())} s after SIGTERM")
    assert not errors, errors
    assert len(results) == n
    # the test only means something if requests were still running after the refusals
    assert still_running and late >= 4, (still_running, late, rows, sorted(v - t_sig for v in done_at.values()))
    assert rc == 0, srv.log()
    c.close()


def slow_success_count(c) -> int:
    (s,) = c.get_inference_statistics("slow", client_timeout=TIMEOUT).model_stats
    return s.inference_stats.success.count


def slow_pending(srv) -> int:
    """nv_inference_pending_request_count of slow (requests queued, not yet running)."""
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    m = re.search(r'^nv_inference_pending_request_count\{[^}]*model="slow"[^}]*\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


@pytest.mark.timeout(180)
def test_reload_and_unload_let_in_flight_requests_finish(make_repo, switchyard):
    """A reload swaps in the new load at once (it does not wait for the old one's queue); an unload
    refuses new requests; requests that were already queued or running finish on the old load."""
    repo = make_repo([])
    make_slow_model(repo)
    srv = switchyard(repo, "--model-control-mode", "explicit", "--load-model", "slow",
                     "--ort-intra-op-threads", "1")
    c = srv.client()
    rows, _ = size_slow_request(c, enough=0.2, aim=0.3)
    n = 8
    for action in ("reload", "unload"):
        results, errors, done_at = {}, {}, {}
        lock = threading.Lock()

        def one(k):
            cl = grpcclient.InferenceServerClient(srv.url)
            try:
                r = slow_infer(cl, rows, timeout=120)
                with lock:
                    results[k] = r.get_response().model_version
            except InferenceServerException as e:
                with lock:
                    errors[k] = f"{e.status()}: {e.message()}"
            finally:
                with lock:
                    done_at[k] = time.monotonic()
                cl.close()

        base = slow_success_count(c)
        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        wait_for(lambda: slow_pending(srv) + slow_success_count(c) - base >= n - 2,
                 "all the requests to reach the server", timeout=20, interval=0.01)
        t_call = time.monotonic()
        if action == "reload":
            c.load_model("slow")
        else:
            c.unload_model("slow")
        t_returned = time.monotonic()
        if action == "unload":
            e = grpc_error(slow_infer, c, 1)
            assert e.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), e
            assert model_rows(c, "slow") == {"1": ("UNAVAILABLE", "unloaded")}
        else:
            assert model_rows(c, "slow") == {"1": ("READY", "")}
            slow_infer(c, 1)  # the new load serves next to the old one's queue
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert not errors, (action, errors)
        assert sorted(results) == list(range(n)) and set(results.values()) == {"1"}
        finished_after = sum(1 for v in done_at.values() if v > t_returned)
        assert finished_after >= n // 2, (action, finished_after, t_returned - t_call,
                                          sorted(round(v - t_call, 2) for v in done_at.values()))
    c.close()


# ----------------------------------------------------- instance-count changes applied in place


def instance_threads(srv, model: str) -> list[str]:
    """Names of the server's instance threads of `model` (comm is cut at 15 characters)."""
    names = []
    for task in Path(f"/proc/{srv.proc.pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread exited while we looked
            continue
        if comm.startswith(f"{model}-v"):
            names.append(comm)
    return sorted(names)


def fraud_success(c, version: str) -> int:
    (s,) = c.get_inference_statistics("fraud_mlp", version, client_timeout=TIMEOUT).model_stats
    return s.inference_stats.success.count


@pytest.mark.parametrize("mode", ["poll", "explicit"])
def test_instance_count_change_is_applied_in_place_under_load(make_repo, switchyard, mode):
    """Only instance_group.count changes: instances are added or stopped without a reload
    (statistics keep counting, the config shows the new count), and no request fails."""
    repo = make_repo(["fraud_mlp"])
    cfg = repo / "fraud_mlp" / "config.pbtxt"
    args = ["--model-control-mode", mode]
    args += ["--repository-poll-secs", "1"] if mode == "poll" else ["--load-model", "fraud_mlp"]
    srv = switchyard(repo, *args)
    c = srv.client()
    x = h.fraud_inputs(4, seed=3)
    errors, done, stop = [], [0], threading.Event()

    def load():
        cl = srv.client()
        while not stop.is_set():
            try:
                cl.infer("fraud_mlp", fraud_inputs_grpc(x), client_timeout=TIMEOUT)
                done[0] += 1
            except Exception as e:  # every failure is a test failure
                errors.append(repr(e))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: done[0] > 20, "traffic")
        assert len(instance_threads(srv, "fraud_mlp")) == 2  # v1 and v2, one instance each
        for count in (3, 1, 2):
            before = fraud_success(c, "2")
            text = cfg.read_text()
            cfg.write_text(re.sub(r"count: \d+", f"count: {count}", text))
            if mode == "explicit":
                c.load_model("fraud_mlp", client_timeout=TIMEOUT)
            wait_for(lambda: c.get_model_config("fraud_mlp").config.instance_group[0].count == count,
                     f"config count {count}")
            wait_for(lambda: len(instance_threads(srv, "fraud_mlp")) == 2 * count,
                     f"{2 * count} instance threads")
            # Not a reload: the version's statistics kept counting from where they were.
            assert fraud_success(c, "2") >= before
            n = done[0]
            wait_for(lambda: done[0] > n + 20, "traffic after the change")
            rows = model_rows(c, "fraud_mlp")
            assert rows == {"1": ("READY", ""), "2": ("READY", "")}, rows
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors[:5]
    assert "updated in place" in srv.log()


def test_exit_timeout_bounds_shutdown_with_stuck_requests(make_repo, switchyard):
    """Requests that cannot finish (the scheduler test hook holds them in the queue) must not
    keep the process alive past --exit-timeout-secs."""
    repo = make_repo(["simple"])
    srv = switchyard(repo, "--delay-scheduler", "1000", "--exit-timeout-secs", "2")
    c = srv.client()
    results = []
    for i in range(3):
        c.async_infer("simple", h.arange_simple_inputs(), callback=lambda r, e: results.append((r, e)))
    wait_for(lambda: c.get_inference_statistics("simple").model_stats is not None, "stats")
    time.sleep(0.3)
    assert results == []  # held in the queue
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.wait_exit(timeout=15)
    elapsed = time.monotonic() - t0
    assert rc == 0, srv.log()
    assert 2.0 <= elapsed < 8.0, elapsed
    assert "exit timeout reached" in srv.log()

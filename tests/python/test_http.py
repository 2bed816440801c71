"""The KServe v2 HTTP/REST endpoint, through the real clients against the running binary.

* tritonclient.http: health, metadata, config, statistics, repository index, inference with JSON and
  binary tensors, BYTES, request ids, explicit versions, gzip/deflate both ways.
* requests / http.client: the wire itself -- nested and flat ``data``, the binary tensor data
  extension built by hand (``Inference-Header-Content-Length``), raw binary requests, status codes
  and ``{"error": ...}`` bodies, limits (body size, gzip bombs, chunk floods, JSON nesting).
* Restricted API categories (``--http-restricted-api``), perf_analyzer ``-i http``, and a graceful
  SIGTERM drain of in-flight HTTP requests.

Servers: the session ``server`` over model_repository/ for everything that does not need flags;
module-scoped servers (started on first use) for limits, restrictions and extra models. Every
network call has a timeout. Tests marked xfail(strict=True) document server bugs and divergences
from Triton; each names what Triton does.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

import sy_helpers as h

TIMEOUT = 30.0  # every HTTP call
PERF = h.ROOT / "scripts" / "perf_analyzer"
EXAMPLE_VERSIONS = [("fraud_mlp", "1"), ("fraud_mlp", "2"), ("simple", "1"), ("simple_identity", "1"),
                    ("simple_string", "1")]
STAT_KINDS = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
              "cache_miss"]
ADMIN_KEY = "s3cret"  # --http-restricted-api=model-repository,statistics:admin-key=...
INFER_KEY = "t0ken-from-file"  # --http-restricted-api=inference:infer-key=@FILE
# Load/unload with --model-control-mode=none: UNAVAILABLE (503), as Triton's "explicit model
# load / unload is not allowed if polling is enabled".
NO_MODEL_CONTROL = 503


# ------------------------------------------------------------------------------------ helpers


def base(srv) -> str:
    return f"http://{srv.http_url}"


def get(srv, path, **kw) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.get(base(srv) + path, **kw)


def post(srv, path, **kw) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(base(srv) + path, **kw)


def assert_error(resp: requests.Response, status, *substrings: str) -> str:
    """`resp` is `status` (or one of a tuple of them) with a JSON body {"error": "<msg>"}
    containing every substring."""
    ok = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in ok, f"expected {status}, got {resp.status_code}: {resp.content[:500]!r}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    msg = body["error"]
    assert isinstance(msg, str)
    for s in substrings:
        assert s in msg, f"{s!r} not in error message {msg!r}"
    return msg


def assert_alive(srv) -> None:
    """The server still answers health and a real inference."""
    assert srv.proc.poll() is None, f"server exited with {srv.proc.returncode}"
    assert get(srv, "/v2/health/live").status_code == 200
    r = post(srv, "/v2/models/simple/infer", json=simple_json(*simple_rows()))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == list(range(0, 32, 2))


def simple_rows(batch: int = 1):
    """INPUT0 = INPUT1 = 0..15 per row: OUTPUT0 is 0, 2, ..., 30 and OUTPUT1 all zeros."""
    a = np.tile(np.arange(16, dtype=np.int32), (batch, 1))
    return a, a.copy()


def simple_json(a: np.ndarray, b: np.ndarray, nested: bool = False, **extra) -> dict:
    def data(x):
        return x.tolist() if nested else x.reshape(-1).tolist()

    req = {"inputs": [
        {"name": "INPUT0", "shape": list(a.shape), "datatype": "INT32", "data": data(a)},
        {"name": "INPUT1", "shape": list(b.shape), "datatype": "INT32", "data": data(b)},
    ]}
    req.update(extra)
    return req


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    """The binary tensor data extension: JSON header then the blobs; returns (body, headers)."""
    j = json.dumps(header).encode()
    return j + b"".join(blobs), {"Inference-Header-Content-Length": str(len(j)),
                                 "Content-Type": "application/octet-stream"}


def split_binary_response(resp: requests.Response) -> tuple[dict, bytes]:
    """(JSON header, binary tail) of a response that may carry binary outputs."""
    n = resp.headers.get("Inference-Header-Content-Length")
    if n is None:
        return resp.json(), b""
    n = int(n)
    return json.loads(resp.content[:n]), resp.content[n:]


def binary_outputs(header: dict, tail: bytes) -> dict[str, np.ndarray]:
    """Decodes the binary outputs of a response, in output order."""
    out, off = {}, 0
    for o in header["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw = tail[off:off + size]
        off += size
        if o["datatype"] == "BYTES":
            out[o["name"]] = deserialize_bytes_tensor(raw).reshape(o["shape"])
        else:
            dt = h.WIRE_TO_NP[o["datatype"]].newbyteorder("<")
            out[o["name"]] = np.frombuffer(raw, dtype=dt).reshape(o["shape"])
    assert off == len(tail), f"{len(tail) - off} unclaimed bytes after the binary outputs"
    return out


def tc_inputs(inputs: dict[str, np.ndarray], binary=True):
    """tritonclient.http InferInputs; `binary` is a bool or {name: bool}."""
    out = []
    for name, arr in inputs.items():
        b = binary[name] if isinstance(binary, dict) else binary
        i = httpclient.InferInput(name, list(arr.shape), h.wire_type(arr))
        i.set_data_from_numpy(arr, binary_data=b)
        out.append(i)
    return out


def tc_outputs(spec: dict[str, bool]):
    return [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in spec.items()]


def as_bytes(arr: np.ndarray) -> np.ndarray:
    """BYTES outputs come back as bytes (binary) or str (JSON); compare them as bytes."""
    return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(arr)


def string_like_ints(value, path="$"):
    """Every JSON string that looks like an integer (a stringified int64), with its path.
    Model versions are strings by protocol and are skipped."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("version", "versions"):
                found += string_like_ints(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += string_like_ints(v, f"{path}[{i}]")
    elif isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        found.append((path, value))
    return found


def stats_json(srv, model="", version="", headers=None) -> dict:
    path = "/v2/models/stats" if not model else (
        f"/v2/models/{model}/versions/{version}/stats" if version else f"/v2/models/{model}/stats")
    r = get(srv, path, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def chunked_post(srv, path: str, chunks, headers=None) -> tuple[int, dict, bytes]:
    """POSTs `chunks` with Transfer-Encoding: chunked over http.client, one HTTP chunk each.
    The server may answer (and close) before reading everything: a send error is ignored and
    the response read anyway."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=TIMEOUT)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        try:
            conn.send(wire)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def copy_models(dst: Path, models) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for m in models:
        shutil.copytree(h.MODEL_REPOSITORY / m, dst / m)
    return dst


SLOW_CONFIG = """
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 100000
input [ { name: "x" data_type: TYPE_FP32 dims: [ 512 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def make_slow_model(repo: Path) -> Path:
    """A single-input model whose cost is compute: 120 x (MatMul 512x512 + Tanh) per row, summed
    to one number per row (test_queue_policies.slow_repo's construction, wider and deeper, so a
    second of work is a few MB of input)."""
    d = repo / "slow"
    path = h.write_slow_model(d, width=512, depth=120)
    (d / "config.pbtxt").write_text(SLOW_CONFIG)
    return path



def slow_request(rows: int) -> tuple[bytes, dict]:
    x = np.ones((rows, 512), dtype=np.float32)
    header = {"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    return binary_body(header, x.tobytes())


def pending_requests(srv, model: str) -> int:
    text = requests.get(srv.metrics_url, timeout=TIMEOUT).text
    m = re.search(rf'^nv_inference_pending_request_count\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


# ------------------------------------------------------------------------- module servers


@pytest.fixture(scope="module")
def limits_server(module_switchyard):
    return module_switchyard(h.MODEL_REPOSITORY, "--http-max-input-size", "4096", "--http-max-chunks", "100")


@pytest.fixture(scope="module")
def restricted_server(module_switchyard):
    return module_switchyard(
        h.MODEL_REPOSITORY, f"--http-restricted-api=model-repository,statistics:admin-key={ADMIN_KEY}")


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("secret") / "infer-key"
    f.write_text(f"  {INFER_KEY}\n")  # surrounding whitespace is trimmed
    return f


@pytest.fixture(scope="module")
def file_restricted_server(module_switchyard, secret_file):
    return module_switchyard(h.MODEL_REPOSITORY, f"--http-restricted-api=inference:Infer-Key=@{secret_file}")


DB_CONFIG_EXTRA = """
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { default_timeout_microseconds: 1099511627776 allow_timeout_override: true }
}
"""


@pytest.fixture(scope="module")
def extras_server(module_switchyard, tmp_path_factory):
    """simple + simple_db (dynamic batching with 64-bit config values) + broken (fails to load)."""
    repo = copy_models(tmp_path_factory.mktemp("extras") / "repo", ["simple"])
    h.copy_model(repo, "simple", "simple_db", config=h.simple_config("simple_db", DB_CONFIG_EXTRA))
    broken = h.copy_model(repo, "simple", "broken", config=h.simple_config("broken"))
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    return module_switchyard(repo, "--exit-on-error=false")


# ============================================================ 1. health, metadata, config


def test_server_live_and_ready(http_client, server):
    assert http_client.is_server_live() is True
    assert http_client.is_server_ready() is True
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = get(server, path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code, r.content)


@pytest.mark.parametrize("model,version,expected", [
    ("simple", "", True), ("simple", "1", True), ("fraud_mlp", "2", True), ("simple_identity", "", True),
    ("simple", "2", False), ("fraud_mlp", "3", False), ("no_such_model", "", False), ("no_such_model", "1", False),
])
def test_model_ready(http_client, server, model, version, expected):
    assert http_client.is_model_ready(model, version) is expected
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
    r = get(server, path)
    if expected:
        assert r.status_code == 200 and r.content == b""
    else:
        assert_error(r, 400, "Model version not ready")


def test_server_metadata(http_client, server):
    md = http_client.get_server_metadata()
    assert md["name"] == "triton"
    assert isinstance(md["version"], str) and md["version"]
    assert "statistics" in md["extensions"] and "binary_tensor_data" in md["extensions"]
    assert len(set(md["extensions"])) == len(md["extensions"])
    r = get(server, "/v2")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == md


@pytest.mark.parametrize("model,versions,inputs,outputs", [
    ("simple", ["1"], [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])],
     [("OUTPUT0", "INT32", [-1, 16]), ("OUTPUT1", "INT32", [-1, 16])]),
    ("simple_identity", ["1"], [("INPUT0", "BYTES", [-1, -1])], [("OUTPUT0", "BYTES", [-1, -1])]),
    ("fraud_mlp", ["1", "2"], [("features", "FP32", [-1, 30])],
     [("probabilities", "FP32", [-1, 2]), ("label", "INT64", [-1, 1])]),
])
def test_model_metadata(http_client, server, model, versions, inputs, outputs):
    md = http_client.get_model_metadata(model)
    assert md["name"] == model and md["platform"] == "onnxruntime_onnx"
    assert md["versions"] == versions and all(isinstance(v, str) for v in md["versions"])
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["outputs"]] == outputs
    for t in md["inputs"] + md["outputs"]:
        assert all(type(d) is int for d in t["shape"]), t  # numbers, not proto3-JSON strings
    assert get(server, f"/v2/models/{model}/versions/{versions[-1]}").json() == md


def test_model_metadata_unknown_version_and_model(server):
    assert_error(get(server, "/v2/models/fraud_mlp/versions/9"), 404, "fraud_mlp", "9")
    assert_error(get(server, "/v2/models/no_such_model"), 404, "Request for unknown model", "no_such_model")
    with pytest.raises(InferenceServerException) as ei:
        httpclient.InferenceServerClient(server.http_url).get_model_metadata("no_such_model")
    assert ei.value.status() == "404"


def test_model_config_json_rendering(http_client, server):
    cfg = http_client.get_model_config("simple")
    assert cfg["name"] == "simple" and cfg["platform"] == "onnxruntime_onnx"
    assert type(cfg["max_batch_size"]) is int and cfg["max_batch_size"] == 8
    assert "maxBatchSize" not in cfg and "instanceGroup" not in cfg  # snake_case proto names
    i0 = cfg["input"][0]
    assert i0["name"] == "INPUT0" and i0["data_type"] == "TYPE_INT32" and i0["dims"] == [16]
    assert type(i0["dims"][0]) is int
    assert i0["is_shape_tensor"] is False and i0["format"] == "FORMAT_NONE"  # defaults printed
    assert cfg["output"][1]["data_type"] == "TYPE_INT32" and cfg["output"][1]["label_filename"] == ""
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU" and type(cfg["instance_group"][0]["count"]) is int
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    raw = get(server, "/v2/models/simple/config")
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "application/json"
    assert raw.json() == cfg
    assert string_like_ints(raw.json()) == []


def test_model_config_version_qualified(http_client, server):
    for v in ("1", "2"):
        cfg = http_client.get_model_config("fraud_mlp", v)
        assert cfg["name"] == "fraud_mlp" and cfg["version_policy"] == {"all": {}}
        assert [o["data_type"] for o in cfg["output"]] == ["TYPE_FP32", "TYPE_INT64"]
    assert_error(get(server, "/v2/models/simple/versions/2/config"), 404, "simple")


def test_model_config_64_bit_fields_are_numbers(extras_server):
    r = get(extras_server, "/v2/models/simple_db/config")
    assert r.status_code == 200, r.text
    db = r.json()["dynamic_batching"]
    assert db["max_queue_delay_microseconds"] == 100  # uint64 in the proto
    assert db["preferred_batch_size"] == [4]
    assert db["default_queue_policy"]["default_timeout_microseconds"] == 1 << 40
    assert db["default_queue_policy"]["allow_timeout_override"] is True
    assert string_like_ints(r.json()) == []


# ======================================================================== 2. statistics


def check_stat_entry(s: dict) -> None:
    assert isinstance(s["name"], str) and isinstance(s["version"], str)
    for k in ("last_inference", "inference_count", "execution_count"):
        assert type(s[k]) is int, (k, s[k])
    assert sorted(s["inference_stats"]) == sorted(STAT_KINDS), s["inference_stats"]
    for kind in STAT_KINDS:
        d = s["inference_stats"][kind]
        assert set(d) == {"count", "ns"} and type(d["count"]) is int and type(d["ns"]) is int, (kind, d)
    assert isinstance(s["batch_stats"], list)
    for b in s["batch_stats"]:
        assert type(b["batch_size"]) is int
        for kind in ("compute_input", "compute_infer", "compute_output"):
            assert type(b[kind]["count"]) is int and type(b[kind]["ns"]) is int


def test_statistics_one_model_version_and_all(http_client, server):
    one = http_client.get_inference_statistics("simple")
    assert [(s["name"], s["version"]) for s in one["model_stats"]] == [("simple", "1")]
    v = http_client.get_inference_statistics("fraud_mlp", "2")
    assert [(s["name"], s["version"]) for s in v["model_stats"]] == [("fraud_mlp", "2")]
    both = http_client.get_inference_statistics("fraud_mlp")
    assert [s["version"] for s in both["model_stats"]] == ["1", "2"]
    every = http_client.get_inference_statistics()
    assert sorted((s["name"], s["version"]) for s in every["model_stats"]) == EXAMPLE_VERSIONS
    raw = stats_json(server)
    assert sorted((s["name"], s["version"]) for s in raw["model_stats"]) == EXAMPLE_VERSIONS
    for s in raw["model_stats"]:
        check_stat_entry(s)
    assert string_like_ints(raw) == []


def test_statistics_unknown_model_and_version(server):
    assert_error(get(server, "/v2/models/no_such_model/stats"), 404, "no_such_model")
    assert_error(get(server, "/v2/models/fraud_mlp/versions/3/stats"), 404, "fraud_mlp")


def test_statistics_grow_after_http_inferences(http_client, server):
    (before,) = stats_json(server, "simple")["model_stats"]
    batches = [1, 3, 8]
    for i, b in enumerate(batches):
        http_client.infer("simple", tc_inputs(h.simple_inputs(b, seed=i)))
    (after,) = stats_json(server, "simple")["model_stats"]
    check_stat_entry(after)
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert after["inference_count"] - before["inference_count"] == sum(batches)
    assert after["execution_count"] - before["execution_count"] == len(batches)
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[kind]["count"] - s0[kind]["count"] == len(batches), kind
    assert s1["success"]["ns"] > s0["success"]["ns"]
    assert after["last_inference"] > 0 and after["last_inference"] >= before["last_inference"]
    bs = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    bs0 = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    assert all(bs.get(b, 0) - bs0.get(b, 0) == 1 for b in batches), (bs0, bs)
    # per version: a version-1 request leaves version 2 alone
    v1 = stats_json(server, "fraud_mlp", "1")["model_stats"][0]["inference_count"]
    v2 = stats_json(server, "fraud_mlp", "2")["model_stats"][0]["inference_count"]
    http_client.infer("fraud_mlp", tc_inputs(h.fraud_inputs(5)), model_version="1")
    assert stats_json(server, "fraud_mlp", "1")["model_stats"][0]["inference_count"] == v1 + 5
    assert stats_json(server, "fraud_mlp", "2")["model_stats"][0]["inference_count"] == v2


# ================================================================== 3. repository index


def test_repository_index(http_client, server):
    idx = http_client.get_model_repository_index()
    assert isinstance(idx, list)
    assert sorted((m["name"], m["version"], m["state"]) for m in idx) == [
        (n, v, "READY") for n, v in EXAMPLE_VERSIONS]
    for body in (None, b"", b"{}", b'{"ready": false}', b'{"ready": true}'):
        r = post(server, "/v2/repository/index", data=body)
        assert r.status_code == 200, (body, r.text)
        assert r.json() == idx, body  # a bare JSON array, not {"models": [...]}


@pytest.mark.parametrize("body", [b'{"ready": "yes"}', b'{"ready": 1}', b'{"ready": null}', b'{"ready": [true]}'])
def test_repository_index_ready_must_be_bool(server, body):
    assert_error(post(server, "/v2/repository/index", data=body), 400, "ready")


def test_repository_index_bad_json(server):
    assert_error(post(server, "/v2/repository/index", data=b"{not json"), 400)


def test_repository_index_ready_filter(extras_server):
    every = post(extras_server, "/v2/repository/index").json()
    rows = {m["name"]: m for m in every}
    assert set(rows) == {"simple", "simple_db", "broken"}, every
    assert rows["simple"]["state"] == "READY" and rows["simple_db"]["state"] == "READY"
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"].get("reason"), rows["broken"]
    assert "reason" not in rows["simple"]  # Triton leaves out an empty reason
    ready = post(extras_server, "/v2/repository/index", json={"ready": True}).json()
    assert sorted(m["name"] for m in ready) == ["simple", "simple_db"]
    assert all(m["state"] == "READY" for m in ready)


def test_repository_index_with_repository_name(server):
    r = post(server, "/v2/repository/any_name/index")
    assert r.status_code == 200 and isinstance(r.json(), list)


# ======================================================================== 4. inference


BINARY_IN = {"json": False, "binary": True, "mixed": {"INPUT0": False, "INPUT1": True}}
BINARY_OUT = {"json": {"OUTPUT0": False, "OUTPUT1": False}, "binary": {"OUTPUT0": True, "OUTPUT1": True},
              "mixed": {"OUTPUT0": True, "OUTPUT1": False}, "default": None}


@pytest.mark.parametrize("inp", sorted(BINARY_IN))
@pytest.mark.parametrize("out", sorted(BINARY_OUT))
def test_simple_json_and_binary_tensors(http_client, inp, out):
    inputs = h.simple_inputs(3, seed=7)
    want = h.reference("simple", inputs)
    outputs = tc_outputs(BINARY_OUT[out]) if BINARY_OUT[out] else None
    r = http_client.infer("simple", tc_inputs(inputs, BINARY_IN[inp]), outputs=outputs)
    resp = r.get_response()
    spec = BINARY_OUT[out] or {"OUTPUT0": True, "OUTPUT1": True}  # tritonclient's default: binary
    for o in resp["outputs"]:
        is_binary = "data" not in o
        assert is_binary == spec[o["name"]], o
        if is_binary:
            assert o["parameters"]["binary_data_size"] == 3 * 16 * 4
    for name in ("OUTPUT0", "OUTPUT1"):
        got = r.as_numpy(name)
        assert got.dtype == np.int32 and np.array_equal(got, want[name]), name


def test_simple_string_both_encodings(http_client):
    inputs = h.string_inputs(2, seed=3)
    want = h.reference("simple_string", inputs)
    for b_in in (False, True):
        for b_out in (False, True):
            r = http_client.infer("simple_string", tc_inputs(inputs, b_in),
                                  outputs=tc_outputs({"OUTPUT0": b_out, "OUTPUT1": b_out}))
            for name in ("OUTPUT0", "OUTPUT1"):
                got = as_bytes(r.as_numpy(name))
                assert got.shape == (2, 16) and np.array_equal(got, want[name]), (b_in, b_out, name)


def test_identity_unicode_both_encodings(http_client):
    vals = ["", "ascii", "héllo wörld", "日本語", "🚀 rocket", "tab\tnew\nline", 'quote " \\ back', "x" * 3000]
    arr = h.bytes_array(vals, (2, 4))
    for b_in in (False, True):
        for b_out in (False, True):
            r = http_client.infer("simple_identity", tc_inputs({"INPUT0": arr}, b_in),
                                  outputs=tc_outputs({"OUTPUT0": b_out}))
            got = as_bytes(r.as_numpy("OUTPUT0"))
            assert got.shape == (2, 4) and got.reshape(-1).tolist() == [v.encode() for v in vals], (b_in, b_out)


def test_request_id_echoed(http_client, server):
    r = http_client.infer("simple", tc_inputs(h.simple_inputs(1)), request_id="req-42 ✓")
    assert r.get_response()["id"] == "req-42 ✓"
    r = http_client.infer("simple", tc_inputs(h.simple_inputs(1)))
    assert "id" not in r.get_response()  # no id sent: none echoed
    raw = post(server, "/v2/models/simple/infer", json=simple_json(*simple_rows(), id="abc")).json()
    assert raw["id"] == "abc" and raw["model_name"] == "simple" and raw["model_version"] == "1"


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("binary", [False, True])
def test_fraud_mlp_fp32_against_onnxruntime(http_client, server, version, binary):
    inputs = h.fraud_inputs(17, seed=int(version))
    want = h.reference("fraud_mlp", inputs, version=version)
    r = http_client.infer("fraud_mlp", tc_inputs(inputs, binary), model_version=version,
                          outputs=tc_outputs({"probabilities": binary, "label": binary}))
    assert r.get_response()["model_version"] == version
    probs = r.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (17, 2)
    np.testing.assert_allclose(probs, want["probabilities"], rtol=1e-5, atol=1e-5)
    assert r.as_numpy("label").dtype == np.int64
    assert np.array_equal(r.as_numpy("label"), want["label"])
    # the explicit version path, by hand
    raw = post(server, f"/v2/models/fraud_mlp/versions/{version}/infer", json={"inputs": [
        {"name": "features", "shape": [17, 30], "datatype": "FP32",
         "data": inputs["features"].tolist()}]})
    assert raw.status_code == 200, raw.text
    assert raw.json()["model_version"] == version
    out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in raw.json()["outputs"]}
    np.testing.assert_allclose(out["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-5)


def test_async_infer_with_client_concurrency(server):
    """64 async requests over 8 connections: every response matches its request."""
    c = server.http_client(concurrency=8)
    try:
        base_row = np.arange(16, dtype=np.int32).reshape(1, 16)
        futures = []
        for k in range(64):
            inputs = {"INPUT0": base_row + k, "INPUT1": base_row}
            futures.append((k, c.async_infer("simple", tc_inputs(inputs, binary=k % 2 == 0), request_id=str(k))))
        for k, fut in futures:
            r = fut.get_result(timeout=TIMEOUT)
            assert r.get_response()["id"] == str(k)
            assert np.array_equal(r.as_numpy("OUTPUT0"), 2 * base_row + k)
            assert np.array_equal(r.as_numpy("OUTPUT1"), np.full((1, 16), k, dtype=np.int32))
    finally:
        c.close()


def test_fraud_mlp_latest_version_is_2(http_client):
    r = http_client.infer("fraud_mlp", tc_inputs(h.fraud_inputs(2)))
    assert r.get_response()["model_version"] == "2"


@pytest.mark.parametrize("req_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("resp_alg", [None, "gzip", "deflate"])
def test_compression_through_tritonclient(http_client, req_alg, resp_alg):
    inputs = h.simple_inputs(8, seed=11)
    want = h.reference("simple", inputs)
    for binary in (False, True):
        r = http_client.infer("simple", tc_inputs(inputs, binary),
                              outputs=tc_outputs({"OUTPUT0": binary, "OUTPUT1": not binary}),
                              request_compression_algorithm=req_alg, response_compression_algorithm=resp_alg)
        for name in ("OUTPUT0", "OUTPUT1"):
            assert np.array_equal(r.as_numpy(name), want[name]), (binary, name)


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("GZIP", gzip.compress), ("identity", lambda b: b)])
def test_request_compression_raw(server, encoding, compress):
    body = json.dumps(simple_json(*simple_rows(2))).encode()
    r = post(server, "/v2/models/simple/infer", data=compress(body), headers={"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2, 16]


@pytest.mark.parametrize("accept,expected", [
    ("gzip", "gzip"), ("deflate", "deflate"), ("identity", None), ("br", None), ("gzip;q=0, deflate", "deflate")])
def test_response_compression_raw(server, accept, expected):
    body = json.dumps(simple_json(*simple_rows(2))).encode()
    r = post(server, "/v2/models/simple/infer", data=body, headers={"Accept-Encoding": accept}, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.status_code == 200
    assert r.headers.get("Content-Encoding") == expected, r.headers
    plain = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: lambda b: b}[expected](raw)
    assert json.loads(plain)["outputs"][0]["data"][:3] == [0, 2, 4]


def test_compressed_binary_response_header_length(server):
    """With gzip, Inference-Header-Content-Length still counts the uncompressed JSON."""
    a, b = simple_rows(1)
    req = simple_json(a, b, parameters={"binary_data_output": True})
    r = post(server, "/v2/models/simple/infer", json=req, headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("Content-Encoding") == "gzip" and r.status_code == 200
    header, tail = split_binary_response(r)  # requests has inflated the body
    out = binary_outputs(header, tail)
    assert out["OUTPUT0"].tolist() == [list(range(0, 32, 2))]


def test_response_compression_honours_q_values(server):
    body = json.dumps(simple_json(*simple_rows(1))).encode()
    r = post(server, "/v2/models/simple/infer", data=body,
             headers={"Accept-Encoding": "gzip;q=0.2, deflate;q=0.9"})
    assert r.headers.get("Content-Encoding") == "deflate"


# ============================================================= 5. raw wire-level requests


def test_nested_and_flat_data_agree(server):
    a, b = h.simple_inputs(3, seed=5)["INPUT0"], h.simple_inputs(3, seed=6)["INPUT1"]
    flat = post(server, "/v2/models/simple/infer", json=simple_json(a, b))
    nested = post(server, "/v2/models/simple/infer", json=simple_json(a, b, nested=True))
    assert flat.status_code == nested.status_code == 200, (flat.text, nested.text)
    assert flat.json() == nested.json()
    want = h.reference("simple", {"INPUT0": a, "INPUT1": b})
    for o in flat.json()["outputs"]:
        assert o["datatype"] == "INT32" and o["shape"] == [3, 16]
        assert "parameters" not in o  # no binary parameters on JSON outputs
        assert o["data"] == want[o["name"]].reshape(-1).tolist()  # output data is flat


def test_json_only_response_headers(server):
    r = post(server, "/v2/models/simple/infer", json=simple_json(*simple_rows()),
             headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert "Inference-Header-Content-Length" not in r.headers and "Content-Encoding" not in r.headers


def test_binary_extension_by_hand(server):
    a, b = h.simple_inputs(2, seed=9)["INPUT0"], h.simple_inputs(2, seed=10)["INPUT1"]
    header = {
        "id": "bin-1",
        "inputs": [
            {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": b.reshape(-1).tolist()},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
    }
    body, headers = binary_body(header, h.to_raw(a))
    headers["Accept-Encoding"] = "identity"
    r = post(server, "/v2/models/simple/infer", data=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    jh, tail = split_binary_response(r)
    assert jh["id"] == "bin-1"
    assert [o["name"] for o in jh["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert jh["outputs"][0]["parameters"] == {"binary_data_size": 2 * 16 * 4} and "data" not in jh["outputs"][0]
    assert "data" in jh["outputs"][1]  # per-output binary_data wins over the default (JSON)
    want = h.reference("simple", {"INPUT0": a, "INPUT1": b})
    assert np.array_equal(binary_outputs(jh, tail)["OUTPUT0"], want["OUTPUT0"])
    assert jh["outputs"][1]["data"] == want["OUTPUT1"].reshape(-1).tolist()


def test_binary_data_output_default_and_override(server):
    req = simple_json(*simple_rows(), parameters={"binary_data_output": True},
                      outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": False}}])
    r = post(server, "/v2/models/simple/infer", json=req)
    assert r.status_code == 200, r.text
    jh, tail = split_binary_response(r)
    assert "data" not in jh["outputs"][0] and jh["outputs"][1]["data"] == [0] * 16
    assert binary_outputs(jh, tail)["OUTPUT0"].tolist() == [list(range(0, 32, 2))]


def test_bytes_binary_input_by_hand(server):
    vals = ["", "héllo", "x" * 100]
    arr = h.bytes_array(vals, (1, 3))
    raw = h.to_raw(arr)
    header = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(raw)}}]}
    body, headers = binary_body(header, raw)
    r = post(server, "/v2/models/simple_identity/infer", data=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == vals


def test_raw_binary_request_bytes_model(server):
    """simple_identity has exactly one input: the whole body is its one BYTES element."""
    payload = "raw ✓ body".encode()
    r = post(server, "/v2/models/simple_identity/infer", data=payload,
             headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    jh, tail = split_binary_response(r)
    assert jh["outputs"][0]["shape"] == [1, 1]  # batch 1, one element
    assert binary_outputs(jh, tail)["OUTPUT0"].tolist() == [[payload]]


def test_raw_binary_request_fp32_model(server):
    """fraud_mlp has exactly one FP32 input [30]: a 120-byte body is one row; all outputs binary."""
    inputs = h.fraud_inputs(1, seed=4)
    want = h.reference("fraud_mlp", inputs, version=2)
    r = post(server, "/v2/models/fraud_mlp/infer", data=inputs["features"].tobytes(),
             headers={"Inference-Header-Content-Length": "0"})
    assert r.status_code == 200, r.text
    jh, tail = split_binary_response(r)
    assert all("data" not in o for o in jh["outputs"])
    out = binary_outputs(jh, tail)
    np.testing.assert_allclose(out["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(out["label"], want["label"])
    # two rows' worth of bytes do not fit the batch-1 shape
    r2 = post(server, "/v2/models/fraud_mlp/infer", data=inputs["features"].tobytes() * 2,
              headers={"Inference-Header-Content-Length": "0"})
    assert_error(r2, 400)


def test_raw_binary_request_gzip(server):
    r = post(server, "/v2/models/simple_identity/infer", data=gzip.compress(b"zipped raw"),
             headers={"Inference-Header-Content-Length": "0", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert binary_outputs(*split_binary_response(r))["OUTPUT0"].tolist() == [[b"zipped raw"]]


def test_raw_binary_request_needs_a_single_input_model(server):
    assert_error(post(server, "/v2/models/simple/infer", data=bytes(128),
                      headers={"Inference-Header-Content-Length": "0"}),
                 400, "raw binary request needs a model with exactly one input", "'simple' has 2")


STATUS_CASES = {
    # name: (method, path, body, headers, status, message substrings)
    "unknown_model": ("POST", "/v2/models/no_such_model/infer", "simple", None, 404,
                      ["Request for unknown model", "no_such_model"]),
    "unknown_version": ("POST", "/v2/models/simple/versions/7/infer", "simple", None, 404, ["simple", "7"]),
    "wrong_method_infer": ("GET", "/v2/models/simple/infer", None, None, 405, ["Method Not Allowed"]),
    "wrong_method_health": ("POST", "/v2/health/live", None, None, 405, ["Method Not Allowed"]),
    "wrong_method_index": ("GET", "/v2/repository/index", None, None, 405, ["Method Not Allowed"]),
    "wrong_method_config": ("DELETE", "/v2/models/simple/config", None, None, 405, ["Method Not Allowed"]),
    "unknown_path": ("GET", "/v2/bogus", None, None, 404, ["Not Found"]),
    "unknown_model_subpath": ("GET", "/v2/models/simple/bogus", None, None, 404, ["Not Found"]),
    "trailing_slash": ("GET", "/v2/", None, None, 404, ["Not Found"]),
    "non_numeric_version": ("GET", "/v2/models/simple/versions/v1", None, None, 404, ["Not Found"]),
    "non_numeric_version_infer": ("POST", "/v2/models/simple/versions/v1/infer", "simple", None, 404, ["Not Found"]),
    "bad_json": ("POST", "/v2/models/simple/infer", b'{"inputs": [', None, 400, ["JSON"]),
    "not_an_object": ("POST", "/v2/models/simple/infer", b'"inputs"', None, 400, ["JSON"]),
    "empty_body": ("POST", "/v2/models/simple/infer", b"", None, 400, []),
    "load_without_model_control": ("POST", "/v2/repository/models/simple/load", None, None, NO_MODEL_CONTROL,
                                   ["--model-control-mode=none"]),
    "unload_without_model_control": ("POST", "/v2/repository/models/simple/unload", None, None, NO_MODEL_CONTROL,
                                     ["--model-control-mode=none"]),
    "load_named_repository": ("POST", "/v2/repository/other/models/simple/load", None, None, 501, ["other"]),
    "shared_memory_unimplemented": ("GET", "/v2/systemsharedmemory/status", None, None, 501, []),
    "logging_unimplemented": ("GET", "/v2/logging", None, None, 501, []),
}


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_status_codes_and_error_bodies(server, case):
    method, path, body, headers, status, subs = STATUS_CASES[case]
    if body == "simple":
        body = json.dumps(simple_json(*simple_rows())).encode()
    r = requests.request(method, base(server) + path, data=body, headers=headers, timeout=TIMEOUT)
    msg = assert_error(r, status, *subs)
    if status == 404 and "Not Found" in subs:
        assert msg == "Not Found"
    if status == 405:
        assert r.json() == {"error": "Method Not Allowed"}


def bad_input(**override):
    """simple's JSON request with INPUT1 replaced field by field."""
    a, b = simple_rows()
    req = simple_json(a, b)
    req["inputs"][1].update(override)
    return req


BAD_REQUESTS = {
    "shape_data_mismatch_short": (bad_input(data=list(range(15))), ["15", "16"]),
    "shape_data_mismatch_long": (bad_input(data=list(range(17))), ["more data elements"]),
    "unknown_datatype": (bad_input(datatype="FLOAT32"), ["FLOAT32"]),
    "wrong_datatype": (bad_input(datatype="FP32"), ["INT32"]),
    "value_out_of_range": (bad_input(data=[2**31] * 16), ["out of range"]),
    "float_for_int": (bad_input(data=[1.5] * 16), ["INT32"]),
    "string_for_int": (bad_input(data=["1"] * 16), ["INT32"]),
    "no_data": (bad_input(data=None), ["INPUT1"]),
    "negative_dim": (bad_input(shape=[-1, 16]), ["INPUT1"]),
    "overflowing_shape": (bad_input(shape=[16, 2**60 + 2]), ["INPUT1"]),
    "huge_batch": (bad_input(shape=[2**32 + 1, 16]), ["INPUT1"]),
    "data_and_binary_size": (bad_input(parameters={"binary_data_size": 64}), ["binary_data_size"]),
    "binary_output_flag_not_bool": ({**simple_json(*simple_rows()), "parameters": {"binary_data_output": "yes"}},
                                    ["binary_data_output"]),
    "unknown_output": ({**simple_json(*simple_rows()), "outputs": [{"name": "NOPE"}]}, ["NOPE"]),
    "duplicate_output": ({**simple_json(*simple_rows()), "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]},
                         ["OUTPUT0"]),
    "missing_input": ({"inputs": simple_json(*simple_rows())["inputs"][:1]}, ["INPUT1"]),
    "id_not_string": ({**simple_json(*simple_rows()), "id": 5}, []),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_infer_requests_are_400(server, case):
    req, subs = BAD_REQUESTS[case]
    assert_error(post(server, "/v2/models/simple/infer", json=req), 400, *subs)


def test_unsupported_content_encoding(server):
    body = json.dumps(simple_json(*simple_rows())).encode()
    r = post(server, "/v2/models/simple/infer", data=body, headers={"Content-Encoding": "br"})
    assert_error(r, 400, "br")
    accepted = {e.strip() for e in r.headers.get("Accept-Encoding", "").split(",")}
    assert {"gzip", "deflate"} <= accepted, r.headers


def test_corrupt_gzip_body(server):
    r = post(server, "/v2/models/simple/infer", data=b"\x1f\x8b not really gzip",
             headers={"Content-Encoding": "gzip"})
    assert_error(r, 400, "decompress")


@pytest.mark.parametrize("value", ["99999", "abc", "-1", "", "1.5", "+10", "99999999999999999999"])
def test_bad_inference_header_content_length(server, value):
    body = json.dumps(simple_json(*simple_rows())).encode()
    r = post(server, "/v2/models/simple/infer", data=body, headers={"Inference-Header-Content-Length": value})
    assert_error(r, 400, "Inference-Header-Content-Length")


def test_binary_data_size_larger_than_body(server):
    a, _ = simple_rows()
    header = bad_input(data=None, parameters={"binary_data_size": 64})
    body, headers = binary_body(header, h.to_raw(a)[:40])
    assert_error(post(server, "/v2/models/simple/infer", data=body, headers=headers), 400, "INPUT1", "64")
    huge = bad_input(data=None, parameters={"binary_data_size": 2**64 - 1})
    body, headers = binary_body(huge, h.to_raw(a))
    assert_error(post(server, "/v2/models/simple/infer", data=body, headers=headers), 400, "INPUT1")


def test_binary_data_size_without_header_length(server):
    """No Inference-Header-Content-Length: the whole body is JSON, so nothing is left for binary."""
    body = json.dumps(bad_input(data=None, parameters={"binary_data_size": 64})).encode()
    assert_error(post(server, "/v2/models/simple/infer", data=body), 400, "INPUT1")


def test_trailing_unclaimed_binary_bytes(server):
    a, _ = simple_rows()
    header = bad_input(data=None, parameters={"binary_data_size": 64})
    body, headers = binary_body(header, h.to_raw(a), b"\0" * 12)
    assert_error(post(server, "/v2/models/simple/infer", data=body, headers=headers), 400, "12 bytes")


@pytest.mark.parametrize("where", ["data", "parameters", "top_level"])
def test_deeply_nested_json_is_refused(server, where):
    deep = "[" * 10_000 + "1" + "]" * 10_000
    if where == "data":
        body = '{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"INT32","data":' + deep + "}]}"
    elif where == "parameters":
        body = '{"parameters":{"x":' + deep + '},"inputs":[]}'
    else:
        body = deep
    assert_error(post(server, "/v2/models/simple/infer", data=body.encode()), 400, "nesting")
    assert_error(post(server, "/v2/repository/index", data=deep.encode()), 400)  # the index parses JSON too
    assert_alive(server)


def test_keep_alive_connection_survives_errors(server):
    """Errors answered on one keep-alive connection (http.client: no silent reconnect) neither
    close nor desynchronise it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        good = json.dumps(simple_json(*simple_rows())).encode()
        calls = [("GET", "/v2/models/simple/infer", None, 405), ("GET", "/v2/nope", None, 404),
                 ("POST", "/v2/models/simple/infer", b"{bad", 400),
                 ("POST", "/v2/models/no_such_model/infer", good, 404),
                 ("POST", "/v2/repository/models/simple/load", b'{"parameters":{}}', NO_MODEL_CONTROL),
                 ("GET", "/v2/health/ready", None, 200), ("POST", "/v2/models/simple/infer", good, 200)] * 2
        for method, path, body, status in calls:
            conn.request(method, path, body=body)
            r = conn.getresponse()
            text = r.read()
            assert r.status == status, (method, path, r.status, text)
            assert r.getheader("Connection") != "close", (method, path)
    finally:
        conn.close()


def request_with_late_body(conn: http.client.HTTPConnection, path: str, body: bytes, headers=None):
    """POSTs with the body sent 50 ms after the headers (as a streaming client would); returns
    (status, error message)."""
    conn.putrequest("POST", path)
    conn.putheader("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    time.sleep(0.05)
    conn.send(body)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}").get("error")


@pytest.mark.parametrize("path,status", [("/v2/health/live", 405), ("/v2/nope", 404),
                                         ("/v2/models/simple/infer", 403)])
def test_early_error_reply_does_not_silently_drop_the_connection(file_restricted_server, path, status):
    conn = http.client.HTTPConnection("127.0.0.1", file_restricted_server.http_port, timeout=TIMEOUT)
    try:
        assert request_with_late_body(conn, path, b"x" * 100)[0] == status
        # http.client reopens by itself only when the reply said 'Connection: close'
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_unknown_model_is_404_even_with_a_bad_body(server):
    assert_error(post(server, "/v2/models/no_such_model/infer", data=b"{bad json"), 404, "no_such_model")


# ============================================================================== 6. limits


def test_body_over_max_input_size(limits_server):
    r = post(limits_server, "/v2/models/simple/infer", data=b"x" * 5000)
    assert_error(r, 400, "4096", "--http-max-input-size")
    assert_alive(limits_server)


def test_chunked_body_over_max_input_size(limits_server):
    status, headers, body = chunked_post(limits_server, "/v2/models/simple/infer", [b"x" * 1000] * 5)
    assert status == 400 and "4096" in json.loads(body)["error"], body
    assert_alive(limits_server)


def test_body_under_max_input_size_is_served(limits_server):
    body = json.dumps(simple_json(*simple_rows(4))).encode()
    assert len(body) < 4096
    r = post(limits_server, "/v2/models/simple/infer", data=body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("encoding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compression_bomb_small_limit(limits_server, encoding, compress):
    bomb = compress(b"\0" * (3 << 20))  # 3 MiB of zeros in ~3 KiB
    assert len(bomb) < 4096
    r = post(limits_server, "/v2/models/simple/infer", data=bomb, headers={"Content-Encoding": encoding})
    assert_error(r, 400, "4096")
    assert_alive(limits_server)


def test_gzip_bomb_default_limit(server):
    """100 MB of zeros (~100 KB gzip) inflates past the default 64 MiB limit."""
    bomb = gzip.compress(b"\0" * (100 << 20), 6)
    assert len(bomb) < 1 << 20
    r = post(server, "/v2/models/simple/infer", data=bomb, headers={"Content-Encoding": "gzip"})
    assert_error(r, 400, str(1 << 26))
    assert_alive(server)


@pytest.mark.parametrize("gzipped", [False, True])
def test_chunk_flood_small_limit(limits_server, gzipped):
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    status, rh, body = chunked_post(limits_server, "/v2/models/simple/infer", [b"x"] * 200, headers)
    assert status == 400 and "more than 100 chunks" in json.loads(body)["error"], (status, body)
    assert rh.get("connection") == "close"
    assert_alive(limits_server)


def test_chunked_upload_under_chunk_limit(limits_server):
    body = json.dumps(simple_json(*simple_rows())).encode()
    n = len(body) // 99 + 1  # <= 100 chunks
    chunks = [body[i:i + n] for i in range(0, len(body), n)]
    assert len(chunks) <= 100
    status, _, resp = chunked_post(limits_server, "/v2/models/simple/infer", chunks)
    assert status == 200, resp
    assert json.loads(resp)["outputs"][0]["data"] == list(range(0, 32, 2))


def test_chunk_flood_default_limit(server):
    status, _, body = chunked_post(server, "/v2/models/simple/infer", [b" "] * 70_000)
    assert status == 400 and "65536 chunks" in json.loads(body)["error"], (status, body)
    assert_alive(server)
    # one-byte chunks under the limit still make a valid request
    good = json.dumps(simple_json(*simple_rows())).encode()
    status, _, body = chunked_post(server, "/v2/models/simple/infer", [good[i:i + 1] for i in range(len(good))])
    assert status == 200, body


# ==================================================================== 7. restricted APIs

RESTRICTED_MSG = {"error": "This API is restricted, expecting header 'admin-key'"}
RESTRICTED_CALLS = [
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/simple/stats"),
    ("GET", "/v2/models/simple/versions/1/stats"),
    ("GET", "/v2/models/fraud_mlp/versions/2/stats"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/simple/load"),
    ("POST", "/v2/repository/models/simple/unload"),
    ("POST", "/v2/repository/other/models/simple/load"),
]


@pytest.mark.parametrize("method,path", RESTRICTED_CALLS)
def test_restricted_without_or_with_wrong_header(restricted_server, method, path):
    url = base(restricted_server) + path
    for headers in (None, {"admin-key": "wrong"}, {"admin-key": ADMIN_KEY.upper()}, {"admin-key": ADMIN_KEY + "x"},
                    {"admin_key": ADMIN_KEY}, {"other-key": ADMIN_KEY}):
        r = requests.request(method, url, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 403, (headers, r.status_code, r.text)
        assert r.json() == RESTRICTED_MSG and r.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("method,path", RESTRICTED_CALLS)
def test_restricted_with_the_right_header(restricted_server, method, path):
    for key in ("admin-key", "Admin-Key", "ADMIN-KEY"):  # header names are case-insensitive
        r = requests.request(method, base(restricted_server) + path, headers={key: ADMIN_KEY}, timeout=TIMEOUT)
        # past the restriction: load/unload are refused without model control, the rest works
        if "/other/" in path:
            assert r.status_code == 501, r.text
        elif path.endswith("load"):
            assert r.status_code == NO_MODEL_CONTROL, r.text
        else:
            assert r.status_code == 200, r.text


def test_restricted_through_tritonclient(restricted_server):
    c = restricted_server.http_client()
    try:
        with pytest.raises(InferenceServerException) as ei:
            c.get_inference_statistics("simple")
        assert ei.value.status() == "403" and "admin-key" in ei.value.message()
        with pytest.raises(InferenceServerException):
            c.get_model_repository_index()
        stats = c.get_inference_statistics("simple", headers={"admin-key": ADMIN_KEY})
        assert stats["model_stats"][0]["name"] == "simple"
        assert len(c.get_model_repository_index(headers={"admin-key": ADMIN_KEY})) == len(EXAMPLE_VERSIONS)
        # unrestricted categories need no header
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("simple")
        assert c.get_server_metadata()["name"] == "triton"
        assert c.get_model_metadata("simple")["name"] == "simple"
        assert c.get_model_config("simple")["name"] == "simple"
        r = c.infer("simple", tc_inputs(h.simple_inputs(2)))
        assert np.array_equal(r.as_numpy("OUTPUT0"), h.reference("simple", h.simple_inputs(2))["OUTPUT0"])
    finally:
        c.close()


BIG_FRAUD_ROWS = (32 << 20) // (30 * 4)  # a 32 MB binary request body


def test_restricted_reply_reaches_tritonclient_with_a_big_body(file_restricted_server):
    c = file_restricted_server.http_client()
    try:
        with pytest.raises(InferenceServerException) as ei:
            c.infer("fraud_mlp", tc_inputs(h.fraud_inputs(BIG_FRAUD_ROWS)))
        assert ei.value.status() == "403"
    finally:
        c.close()


def test_size_limit_reply_reaches_tritonclient_with_a_big_body(limits_server):
    c = limits_server.http_client()
    try:
        with pytest.raises(InferenceServerException) as ei:
            c.infer("fraud_mlp", tc_inputs(h.fraud_inputs(BIG_FRAUD_ROWS)))
        assert ei.value.status() == "400" and "--http-max-input-size" in ei.value.message()
    finally:
        c.close()


def test_http_restriction_does_not_touch_grpc(restricted_server):
    c = restricted_server.client()
    try:
        assert c.get_inference_statistics("simple").model_stats[0].name == "simple"
    finally:
        c.close()


def test_restriction_is_checked_before_the_method(restricted_server):
    r = get(restricted_server, "/v2/repository/index")
    assert r.status_code == 403 and r.json() == RESTRICTED_MSG


def test_inference_restricted_with_a_secret_file(file_restricted_server, secret_file):
    srv = file_restricted_server
    body = json.dumps(simple_json(*simple_rows())).encode()
    expected = {"error": "This API is restricted, expecting header 'infer-key'"}
    for headers in (None, {"infer-key": "wrong"}, {"infer-key": f"@{secret_file}"}):
        r = post(srv, "/v2/models/simple/infer", data=body, headers=headers)
        assert r.status_code == 403 and r.json() == expected, (headers, r.text)
    r = post(srv, "/v2/models/simple/infer", data=body, headers={"Infer-Key": INFER_KEY})
    assert r.status_code == 200, r.text
    for path in ("/v2/models/simple/versions/1/infer", "/v2/models/fraud_mlp/infer", "/v2/models/no_such/infer"):
        assert post(srv, path, data=body).status_code == 403, path
    # tritonclient with a binary body: 403 without the key, served with it
    c = srv.http_client()
    try:
        big = h.fraud_inputs(256)
        with pytest.raises(InferenceServerException) as ei:
            c.infer("fraud_mlp", tc_inputs(big))
        assert ei.value.status() == "403", ei.value
        r = c.infer("fraud_mlp", tc_inputs(big), headers={"infer-key": INFER_KEY})
        assert r.as_numpy("probabilities").shape == (256, 2)
        # other categories are open: health, metadata, stats, index
        assert c.is_server_ready() and c.get_model_metadata("simple")["name"] == "simple"
        assert c.get_inference_statistics("simple")["model_stats"]
        assert c.get_model_repository_index()
    finally:
        c.close()
    # the secret itself never appears on the command line
    cmdline = Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes()
    assert INFER_KEY.encode() not in cmdline


# ======================================================================= 8. perf_analyzer


@pytest.mark.perf
def test_perf_analyzer_http(server):
    before = stats_json(server, "simple")["model_stats"][0]["inference_count"]
    cmd = [str(PERF), "-i", "http", "-u", server.http_url, "-m", "simple",
           "--measurement-mode", "count_windows", "--measurement-request-count", "150",
           "--stability-percentage", "100", "--max-trials", "10", "--concurrency-range", "1:2"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=h.ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"perf_analyzer timed out: {' '.join(cmd)}\n{e.stdout}\n{e.stderr}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"perf_analyzer exit code {proc.returncode}\n{out}"
    assert "Avg HTTP time" in out, out  # really the HTTP client
    assert "Server:" in out and "Inference count" in out and "queue" in out, out
    rates = [float(x) for x in re.findall(r"Concurrency: \d+, throughput: ([0-9.]+) infer/sec", out)]
    assert len(rates) == 2 and min(rates) > 0, out
    counts = [int(n) for n in re.findall(r"Inference count: (\d+)", out)]
    assert counts and min(counts) > 0, out
    after = stats_json(server, "simple")["model_stats"][0]["inference_count"]
    assert after - before >= max(counts)


# ================================================================== 9. graceful shutdown


def test_sigterm_drains_in_flight_http_requests(switchyard, tmp_path):
    """One long request runs on the only instance while 19 more wait in the queue; SIGTERM then
    turns readiness off and refuses new work, yet all 20 in-flight requests complete with 200."""
    repo = tmp_path / "repo"
    onnx_path = make_slow_model(repo)
    srv = switchyard(repo, "--ort-intra-op-threads", "1")
    url = base(srv) + "/v2/models/slow/infer"

    def timed(rows):
        body, headers = slow_request(rows)
        t0 = time.monotonic()
        r = requests.post(url, data=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return time.monotonic() - t0

    timed(50)  # warm-up
    # The fastest of three runs, so a busy moment during calibration cannot make the big request short.
    per_row = max(min(timed(300) for _ in range(3)) / 300, 1e-5)
    big_rows = int(min(max(2.5 / per_row, 400), 30_000))
    small_rows = int(min(max(0.04 / per_row, 1), 2_000))

    results: dict[int, requests.Response | Exception] = {}

    def send(i, rows):
        body, headers = slow_request(rows)
        try:
            results[i] = requests.post(url, data=body, headers=headers, timeout=60)
        except Exception as e:  # noqa: BLE001 -- recorded and asserted below
            results[i] = e

    threads = [threading.Thread(target=send, args=(0, big_rows))]
    threads[0].start()
    time.sleep(0.3)  # the big request is executing
    for i in range(1, 20):
        threads.append(threading.Thread(target=send, args=(i, small_rows)))
        threads[-1].start()
    deadline = time.monotonic() + 10
    while pending_requests(srv, "slow") < 19:
        assert time.monotonic() < deadline, f"only {pending_requests(srv, 'slow')} requests queued"
        assert not results, f"a request finished before the others were queued ({big_rows} rows too fast?)"
        time.sleep(0.02)

    srv.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        try:
            ready = requests.get(base(srv) + "/v2/health/ready", timeout=2).status_code
        except requests.ConnectionError:
            ready = "refused"
        if ready != 200:
            break
        assert time.monotonic() < deadline, "still ready 5 s after SIGTERM"
        time.sleep(0.02)
    assert ready in (400, "refused"), ready
    assert threads[0].is_alive(), "the in-flight requests finished before readiness went off"
    # no new work is accepted while draining
    try:
        body, headers = slow_request(1)
        late = requests.post(url, data=body, headers=headers, timeout=10).status_code
    except requests.ConnectionError:
        late = "refused"
    assert late in (503, "refused"), late

    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an in-flight request never completed"
    want_small = h.reference("slow", {"x": np.ones((1, 512), np.float32)}, path=onnx_path)["y"][0, 0]
    for i, r in sorted(results.items()):
        assert not isinstance(r, Exception), f"request {i}: {r!r}"
        assert r.status_code == 200, (i, r.status_code, r.text)
        jh, tail = split_binary_response(r)
        y = binary_outputs(jh, tail)["y"]
        assert y.shape == (big_rows if i == 0 else small_rows, 1)
        np.testing.assert_allclose(y[:, 0], want_small, rtol=1e-4)
    assert len(results) == 20
    assert srv.wait_exit(30) == 0, srv.log()

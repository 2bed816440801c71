"""Inference results against onnxruntime (Python) on the same .onnx files and inputs.

FP32 outputs are compared with np.array_equal: the server runs the very same ONNX Runtime
library (ORT_DYLIB_PATH points at the Python package's libonnxruntime) on the same file, so the
results are expected to be bit-identical for the same batch.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

import sy_helpers as h

MAX_BATCH = {"simple": 8, "simple_string": 8, "simple_identity": 8, "fraud_mlp": 256}


tc_inputs = h.grpc_inputs


def identity_inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = ["", "a", "héllo wörld", "日本語テキスト", "emoji 🚀✨", "tab\tand\nnewline", "x" * 300, "0"]
    n = 5
    vals = [pool[int(k)] for k in rng.integers(0, len(pool), size=batch * n)]
    return {"INPUT0": h.bytes_array(vals, (batch, n))}


def model_inputs(model: str, batch: int, seed: int = 0):
    return {
        "simple": lambda: h.simple_inputs(batch, seed),
        "simple_string": lambda: h.string_inputs(batch, seed),
        "simple_identity": lambda: identity_inputs(batch, seed),
        "fraud_mlp": lambda: h.fraud_inputs(batch, seed),
    }[model]()


def assert_same(got: dict, want: dict):
    assert set(got) == set(want), (set(got), set(want))
    for name in want:
        g, w = got[name], want[name]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert g.dtype == w.dtype or (g.dtype == object and w.dtype == object), (name, g.dtype, w.dtype)
        assert np.array_equal(g, w), f"{name} differs from onnxruntime:\n{g}\nvs\n{w}"


# --------------------------------------------------------------------- correctness


@pytest.mark.parametrize("model", sorted(MAX_BATCH))
@pytest.mark.parametrize("batch", ["1", "3", "max"])
def test_matches_onnxruntime(client, model, batch):
    b = MAX_BATCH[model] if batch == "max" else int(batch)
    inputs = model_inputs(model, b, seed=b)
    result = client.infer(model, tc_inputs(inputs))
    want = h.reference(model, inputs, version=2 if model == "fraud_mlp" else 1)
    got = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response(as_json=True)["outputs"]}
    assert_same(got, want)


def test_simple_arithmetic_wraps_like_int32(stub):
    a = np.array([[2**31 - 1, -(2**31), 7, -5] + [0] * 12], dtype=np.int32)
    b = np.array([[1, 1, 3, 2] + [0] * 12], dtype=np.int32)
    out = h.decode_response(h.infer(stub, h.infer_request("simple", {"INPUT0": a, "INPUT1": b})))
    assert out["OUTPUT0"][0, :4].tolist() == [-(2**31), -(2**31) + 1, 10, -3]
    assert out["OUTPUT1"][0, :4].tolist() == [2**31 - 2, 2**31 - 1, 4, -7]


def test_simple_string_arithmetic(stub):
    a = h.bytes_array(["3", "-5"] + ["0"] * 14)
    b = h.bytes_array(["4", "2"] + ["1"] * 14)
    out = h.decode_response(h.infer(stub, h.infer_request("simple_string", {"INPUT0": a, "INPUT1": b})))
    assert list(out["OUTPUT0"][0, :3]) == [b"7", b"-3", b"1"]
    assert list(out["OUTPUT1"][0, :3]) == [b"-1", b"-7", b"-1"]


# -------------------------------------------------------------------- fraud versions


def test_fraud_mlp_versions(stub):
    inputs = h.fraud_inputs(64, seed=7)
    got = {}
    for v in ("1", "2"):
        resp = h.infer(stub, h.infer_request("fraud_mlp", inputs, version=v))
        assert resp.model_version == v
        got[v] = h.decode_response(resp)
        assert_same(got[v], h.reference("fraud_mlp", inputs, version=v))
        probs = got[v]["probabilities"]
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(got[v]["label"][:, 0], probs.argmax(axis=1))
    assert not np.array_equal(got["1"]["probabilities"], got["2"]["probabilities"])
    # Default version is the latest (2).
    resp = h.infer(stub, h.infer_request("fraud_mlp", inputs))
    assert resp.model_version == "2"
    assert_same(h.decode_response(resp), got["2"])


def test_fraud_versions_disagree_on_some_labels(stub):
    inputs = h.fraud_inputs(256, seed=3)
    labels = {
        v: h.decode_response(h.infer(stub, h.infer_request("fraud_mlp", inputs, version=v)))["label"]
        for v in ("1", "2")
    }
    assert labels["1"].shape == (256, 1) and labels["1"].dtype == np.int64
    assert set(np.unique(labels["2"])) <= {0, 1}
    assert (labels["1"] != labels["2"]).any()


# ------------------------------------------------------------- response structure


def test_response_fields(stub):
    inputs = h.simple_inputs(2)
    resp = h.infer(stub, h.infer_request("simple", inputs, request_id="req-42/ü"))
    assert resp.model_name == "simple"
    assert resp.model_version == "1"
    assert resp.id == "req-42/ü"
    assert [o.name for o in resp.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert [o.datatype for o in resp.outputs] == ["INT32", "INT32"]
    assert [list(o.shape) for o in resp.outputs] == [[2, 16], [2, 16]]
    assert len(resp.raw_output_contents) == 2
    assert all(len(r) == 2 * 16 * 4 for r in resp.raw_output_contents)
    for o in resp.outputs:  # never typed contents in responses
        assert not o.HasField("contents") or o.contents.ByteSize() == 0


def test_request_id_empty_when_not_sent(stub):
    assert h.infer(stub, h.infer_request("simple", h.simple_inputs(1))).id == ""


def test_tritonclient_request_id(client):
    result = client.infer("simple", tc_inputs(h.simple_inputs(1)), request_id="abc-123")
    resp = result.get_response()
    assert resp.id == "abc-123" and resp.model_version == "1"


@pytest.mark.parametrize("wanted", [["OUTPUT1"], ["OUTPUT0"], ["OUTPUT1", "OUTPUT0"]])
def test_requested_output_filtering(stub, wanted):
    inputs = h.simple_inputs(3, seed=5)
    resp = h.infer(stub, h.infer_request("simple", inputs, outputs=wanted))
    assert [o.name for o in resp.outputs] == wanted
    assert len(resp.raw_output_contents) == len(wanted)
    out = h.decode_response(resp)
    ref = h.reference("simple", inputs)
    for name in wanted:
        assert np.array_equal(out[name], ref[name])


def test_requested_output_filtering_tritonclient(client):
    inputs = h.fraud_inputs(4, seed=11)
    result = client.infer("fraud_mlp", tc_inputs(inputs), outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.as_numpy("probabilities") is None
    assert np.array_equal(result.as_numpy("label"), h.reference("fraud_mlp", inputs, 2)["label"])


# ----------------------------------------------------------------- typed contents


@pytest.mark.parametrize(
    "model,field",
    [
        ("simple", "int_contents"),
        ("simple_string", "bytes_contents"),
        ("simple_identity", "bytes_contents"),
        ("fraud_mlp", "fp32_contents"),
    ],
)
def test_typed_contents_equal_raw(stub, model, field):
    inputs = model_inputs(model, 3, seed=21)
    typed_req = h.infer_request(model, inputs, typed=True)
    assert not typed_req.raw_input_contents
    assert all(len(getattr(i.contents, field)) > 0 for i in typed_req.inputs)
    typed = h.infer(stub, typed_req)
    raw = h.infer(stub, h.infer_request(model, inputs))
    assert len(typed.raw_output_contents) == len(typed.outputs)  # still answered in raw
    assert_same(h.decode_response(typed), h.decode_response(raw))
    assert_same(h.decode_response(typed), h.reference(model, inputs, version=2 if model == "fraud_mlp" else 1))


# ----------------------------------------------------------------------- parameters


def test_enable_empty_final_response_parameter_accepted(stub):
    req = h.infer_request("simple", h.simple_inputs(1), params={"triton_enable_empty_final_response": True})
    out = h.decode_response(h.infer(stub, req))
    assert out["OUTPUT0"].shape == (1, 16)
    req = h.infer_request("simple", h.simple_inputs(1), params={"triton_enable_empty_final_response": False})
    assert len(h.infer(stub, req).outputs) == 2


def test_custom_and_known_parameters_accepted(stub):
    params = {
        "my_custom_int": 5,
        "my_custom_string": "x",
        "my_custom_bool": True,
        "priority": 0,
        "timeout": 10_000_000,
        "sequence_id": 0,
    }
    out = h.decode_response(h.infer(stub, h.infer_request("simple", h.simple_inputs(1), params=params)))
    assert out["OUTPUT1"].shape == (1, 16)


def test_priority_and_timeout_via_tritonclient(client):
    result = client.infer("simple", tc_inputs(h.simple_inputs(1)), priority=1, timeout=5_000_000)
    assert result.as_numpy("OUTPUT0").shape == (1, 16)


# --------------------------------------------------------------------------- BYTES


def test_identity_unicode_and_empty_strings(stub):
    vals = ["", "ascii", "héllo", "日本語", "🚀 rocket", "", " spaces ", "x" * 10000]
    arr = h.bytes_array(vals, (2, 4))
    out = h.decode_response(h.infer(stub, h.infer_request("simple_identity", {"INPUT0": arr})))
    assert out["OUTPUT0"].shape == (2, 4)
    assert out["OUTPUT0"].reshape(-1).tolist() == [v.encode() for v in vals]


def test_identity_all_empty_strings(client):
    arr = h.bytes_array([""] * 6, (3, 2))
    result = client.infer("simple_identity", tc_inputs({"INPUT0": arr}))
    assert result.as_numpy("OUTPUT0").tolist() == [[b"", b""]] * 3


def test_identity_variable_length_dim(stub):
    for n in (1, 2, 17):
        arr = h.bytes_array([f"v{i}" for i in range(n)], (1, n))
        out = h.decode_response(h.infer(stub, h.infer_request("simple_identity", {"INPUT0": arr})))
        assert out["OUTPUT0"].shape == (1, n)
        assert np.array_equal(out["OUTPUT0"], arr)


def test_identity_zero_element_tensor(stub):
    req = pb.ModelInferRequest(model_name="simple_identity")
    req.inputs.append(h.input_tensor("INPUT0", "BYTES", [2, 0]))
    req.raw_input_contents.append(b"")
    resp = h.infer(stub, req)
    assert [list(o.shape) for o in resp.outputs] == [[2, 0]]
    assert list(resp.raw_output_contents) == [b""]


@pytest.mark.parametrize(
    "value,word",
    [(b"\xff\xfe binary", "UTF-8"), (b"a\x00b", "NUL")],
    ids=["non_utf8", "nul_byte"],
)
def test_identity_bytes_onnx_runtime_cannot_hold(stub, value, word):
    """docs/triton-differences.md: BYTES going into an ONNX Runtime string tensor must be UTF-8
    without NUL bytes; anything else is INVALID_ARGUMENT naming the problem (Triton's ORT
    backend passes C strings: it would truncate at a NUL and pass non-UTF-8 bytes through)."""
    arr = h.bytes_array([b"ok", value], (1, 2))
    err = h.rpc_error(stub.ModelInfer, h.infer_request("simple_identity", {"INPUT0": arr}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert word in err.details() and "1" in err.details(), err.details()
    ok = h.bytes_array(["still", "fine"], (1, 2))
    assert np.array_equal(h.decode_response(h.infer(stub, h.infer_request("simple_identity", {"INPUT0": ok})))["OUTPUT0"], ok)


def test_backend_execution_error_is_reported_and_server_survives(stub):
    """simple_string parses its strings as integers: "abc" makes ONNX Runtime fail at run time.
    The error comes back as a gRPC error (Triton: INTERNAL) and later requests still work."""
    (before,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple_string"), timeout=30).model_stats
    bad = {"INPUT0": h.bytes_array(["abc"] * 16), "INPUT1": h.bytes_array(["1"] * 16)}
    err = h.rpc_error(stub.ModelInfer, h.infer_request("simple_string", bad))
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    assert err.details()
    (after,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple_string"), timeout=30).model_stats
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count
    good = h.string_inputs(1, seed=3)
    assert_same(h.decode_response(h.infer(stub, h.infer_request("simple_string", good))),
                h.reference("simple_string", good))


def test_large_identity_request_20mib(stub):
    big = ("0123456789abcdef" * (20 * 1024 * 1024 // 16)).encode()
    arr = h.bytes_array([big, "tail"], (1, 2))
    resp = h.infer(stub, h.infer_request("simple_identity", {"INPUT0": arr}), timeout=60)
    out = h.decode_response(resp)
    assert out["OUTPUT0"].shape == (1, 2)
    assert len(out["OUTPUT0"][0, 0]) == len(big) and out["OUTPUT0"][0, 0] == big
    assert out["OUTPUT0"][0, 1] == b"tail"


def test_large_identity_request_tritonclient(client):
    big = "z" * (6 * 1024 * 1024)  # over gRPC's 4 MiB default
    result = client.infer("simple_identity", tc_inputs({"INPUT0": h.bytes_array([big], (1, 1))}))
    assert result.as_numpy("OUTPUT0")[0, 0] == big.encode()


# -------------------------------------------------------------- concurrency, async


def test_concurrent_requests(server):
    threads, per_thread = 8, 50
    errors = []

    def worker(t: int):
        c = server.client()
        try:
            for i in range(per_thread):
                b = 1 + (t + i) % 8
                inputs = h.simple_inputs(b, seed=t * 1000 + i)
                r = c.infer("simple", tc_inputs(inputs), request_id=f"{t}-{i}", client_timeout=30)
                a0, a1 = inputs["INPUT0"], inputs["INPUT1"]
                with np.errstate(over="ignore"):
                    ok = (
                        r.get_response().id == f"{t}-{i}"
                        and np.array_equal(r.as_numpy("OUTPUT0"), a0 + a1)
                        and np.array_equal(r.as_numpy("OUTPUT1"), a0 - a1)
                    )
                if not ok:
                    errors.append(f"thread {t} request {i}: wrong answer")
            return per_thread
        finally:
            c.close()

    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(worker, range(threads), timeout=100))
    assert not errors, errors[:5]
    assert done == threads * per_thread


def test_concurrent_requests_mixed_models(stub):
    jobs = []
    for i in range(40):
        model = ["simple", "simple_string", "fraud_mlp", "simple_identity"][i % 4]
        inputs = model_inputs(model, 1 + i % 3, seed=100 + i)
        jobs.append((model, inputs))

    def run(job):
        model, inputs = job
        return h.decode_response(h.infer(stub, h.infer_request(model, inputs)))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs, timeout=100))
    for (model, inputs), got in zip(jobs, results):
        assert_same(got, h.reference(model, inputs, version=2 if model == "fraud_mlp" else 1))


def test_async_infer(client):
    done: queue.Queue = queue.Queue()
    sent = []
    for i in range(10):
        inputs = h.simple_inputs(1 + i % 4, seed=500 + i)
        sent.append(inputs)
        client.async_infer(
            "simple",
            tc_inputs(inputs),
            callback=lambda result, error, i=i: done.put((i, result, error)),
            request_id=str(i),
            client_timeout=30,
        )
    seen = set()
    for _ in range(10):
        i, result, error = done.get(timeout=30)
        assert error is None, error
        assert result.get_response().id == str(i)
        ref = h.reference("simple", sent[i])
        assert np.array_equal(result.as_numpy("OUTPUT0"), ref["OUTPUT0"])
        assert np.array_equal(result.as_numpy("OUTPUT1"), ref["OUTPUT1"])
        seen.add(i)
    assert seen == set(range(10))


def test_raw_stub_future(stub):
    inputs = h.fraud_inputs(16, seed=9)
    fut = stub.ModelInfer.future(h.infer_request("fraud_mlp", inputs, version="1"), timeout=30)
    assert_same(h.decode_response(fut.result(timeout=30)), h.reference("fraud_mlp", inputs, 1))

"""Malformed inference requests, built with raw stubs so every field is under control.

Each case checks the gRPC status code and message substrings that name the tensor, the bound or
the value; after each case (and after all of them) the server must still answer a good request.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

import sy_helpers as h

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

ROW = bytes(64)  # one [16] INT32 row


def simple_req(shape0=(1, 16), data0=None, shape1=(1, 16), data1=None, dtype0="INT32", dtype1="INT32", **kw):
    req = pb.ModelInferRequest(model_name=kw.pop("model", "simple"), model_version=kw.pop("version", ""))
    req.inputs.append(h.input_tensor("INPUT0", dtype0, shape0))
    req.inputs.append(h.input_tensor("INPUT1", dtype1, shape1))
    req.raw_input_contents.append(ROW if data0 is None else data0)
    req.raw_input_contents.append(ROW if data1 is None else data1)
    for k, v in kw.pop("params", {}).items():
        h.set_param(req.parameters[k], v)
    for o in kw.pop("outputs", ()):
        req.outputs.add().name = o
    assert not kw, kw
    return req


def identity_req(shape, payload: bytes):
    req = pb.ModelInferRequest(model_name="simple_identity")
    req.inputs.append(h.input_tensor("INPUT0", "BYTES", shape))
    req.raw_input_contents.append(payload)
    return req


def sb(*elements: bytes) -> bytes:
    return h.serialize_bytes(list(elements))


def _missing_input():
    req = pb.ModelInferRequest(model_name="simple")
    req.inputs.append(h.input_tensor("INPUT0", "INT32", [1, 16]))
    req.raw_input_contents.append(ROW)
    return req


def _unknown_input():
    req = simple_req()
    req.inputs.append(h.input_tensor("INPUT7", "INT32", [1, 16]))
    req.raw_input_contents.append(ROW)
    return req


def _duplicate_input():
    req = simple_req()
    req.inputs.append(h.input_tensor("INPUT0", "INT32", [1, 16]))
    req.raw_input_contents.append(ROW)
    return req


def _mixed_raw_and_typed():
    req = simple_req()
    req.inputs[1].contents.int_contents.extend(range(16))
    return req


def _raw_count_short():
    req = simple_req()
    del req.raw_input_contents[1]
    return req


def _typed_count_mismatch():
    req = pb.ModelInferRequest(model_name="simple")
    for name, n in (("INPUT0", 16), ("INPUT1", 15)):
        c = pb.InferTensorContents()
        c.int_contents.extend(range(n))
        req.inputs.append(h.input_tensor(name, "INT32", [1, 16], c))
    return req


def _typed_wrong_field():
    req = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        c = pb.InferTensorContents()
        c.fp32_contents.extend([1.0] * 16)  # INT32 input, FP32 contents
        req.inputs.append(h.input_tensor(name, "INT32", [1, 16], c))
    return req


def _no_data_at_all():
    req = pb.ModelInferRequest(model_name="simple")
    req.inputs.append(h.input_tensor("INPUT0", "INT32", [1, 16]))
    req.inputs.append(h.input_tensor("INPUT1", "INT32", [1, 16]))
    return req


def _typed_bytes_count_mismatch():
    req = pb.ModelInferRequest(model_name="simple_identity")
    c = pb.InferTensorContents()
    c.bytes_contents.extend([b"a", b"b"])
    req.inputs.append(h.input_tensor("INPUT0", "BYTES", [1, 3], c))
    return req


# (id, request builder, code, substrings)
CASES = [
    ("byte_size_short", lambda: simple_req(data0=bytes(60)), INVALID,
     ["input byte size mismatch", "INPUT0", "64", "60"]),
    ("byte_size_long", lambda: simple_req(data1=bytes(68)), INVALID,
     ["input byte size mismatch", "INPUT1", "64", "68"]),
    ("batch_2pow32_plus_1", lambda: simple_req(shape0=(2**32 + 1, 16)), INVALID,
     ["batch-size", "8"]),
    ("element_count_overflow", lambda: simple_req(shape0=(16, 2**60 + 2)), INVALID,
     ["causes total element count to exceed maximum size", "INPUT0"]),
    ("negative_dim", lambda: simple_req(shape0=(1, -16)), INVALID, ["INPUT0", "-16"]),
    ("negative_batch", lambda: simple_req(shape0=(-1, 16)), INVALID, ["INPUT0", "-1"]),
    ("zero_batch", lambda: simple_req(shape0=(0, 16), data0=b"", shape1=(0, 16), data1=b""), INVALID,
     ["batch-size"]),
    ("batch_over_max", lambda: simple_req(shape0=(9, 16), data0=ROW * 9, shape1=(9, 16), data1=ROW * 9), INVALID,
     ["batch-size must be <= 8", "simple"]),
    ("batch_mismatch_across_inputs", lambda: simple_req(shape1=(2, 16), data1=ROW * 2), INVALID,
     ["batch", "INPUT1"]),
    ("shape_rank_too_high", lambda: simple_req(shape0=(1, 4, 4)), INVALID,
     ["unexpected shape for input 'INPUT0'", "[-1,16]"]),
    ("shape_wrong_dim", lambda: simple_req(shape0=(1, 8), data0=bytes(32)), INVALID,
     ["unexpected shape for input 'INPUT0'", "[-1,16]", "[1,8]"]),
    ("shape_missing_batch_dim", lambda: simple_req(shape0=(16,)), INVALID, ["INPUT0"]),
    ("scalar_shape", lambda: simple_req(shape0=(), data0=bytes(4)), INVALID, ["INPUT0"]),
    ("wrong_datatype", lambda: simple_req(dtype0="FP32"), INVALID,
     ["data-type is 'FP32', but model 'simple' expects 'INT32'", "INPUT0"]),
    ("unknown_datatype", lambda: simple_req(dtype1="FLOAT32"), INVALID, ["INPUT1"]),
    ("empty_datatype", lambda: simple_req(dtype1=""), INVALID, ["INPUT1"]),
    ("missing_input", _missing_input, INVALID, ["missing required input(s)", "INPUT1"]),
    ("unknown_input", _unknown_input, INVALID, ["unexpected inference input", "INPUT7"]),
    ("duplicate_input", _duplicate_input, INVALID, ["INPUT0"]),
    ("unknown_output", lambda: simple_req(outputs=["OUTPUT9"]), INVALID,
     ["unexpected inference output", "OUTPUT9"]),
    ("duplicate_output", lambda: simple_req(outputs=["OUTPUT0", "OUTPUT0"]), INVALID, ["OUTPUT0"]),
    ("raw_and_typed_mixed", _mixed_raw_and_typed, INVALID,
     ["contents field must not be specified when using raw_input_contents", "INPUT1"]),
    # Triton: "unable to find data for input tensor 'INPUT1'"; naming the counts is as good.
    ("raw_entry_count_short", _raw_count_short, INVALID, ["simple", ("INPUT1", "raw_input_contents")]),
    ("typed_element_count_mismatch", _typed_count_mismatch, INVALID, ["INPUT1"]),
    ("typed_contents_wrong_field", _typed_wrong_field, INVALID, ["INPUT0"]),
    ("no_data", _no_data_at_all, INVALID, ["INPUT0"]),
    ("bytes_truncated_prefix", lambda: identity_req([1, 2], sb(b"abc") + b"\x05\x00"), INVALID, ["INPUT0"]),
    ("bytes_truncated_data", lambda: identity_req([1, 2], sb(b"abc") + struct.pack("<I", 10) + b"xy"), INVALID,
     ["INPUT0"]),
    ("bytes_trailing_garbage", lambda: identity_req([1, 2], sb(b"a", b"b") + b"\x01"), INVALID, ["INPUT0"]),
    ("bytes_too_few_elements", lambda: identity_req([1, 3], sb(b"a", b"b")), INVALID,
     ["INPUT0", "3", "2"]),
    ("bytes_too_many_elements", lambda: identity_req([1, 1], sb(b"a", b"b")), INVALID,
     ["INPUT0", "1", "2"]),
    ("bytes_typed_count_mismatch", _typed_bytes_count_mismatch, INVALID, ["INPUT0"]),
    ("unknown_model", lambda: simple_req(model="no_such_model"), NOT_FOUND,
     ["Request for unknown model", "no_such_model"]),
    ("unknown_version", lambda: simple_req(version="7"), NOT_FOUND, ["simple", "7"]),
    ("non_numeric_version", lambda: simple_req(version="abc"), INVALID,
     ["version should be an integral value", "abc"]),
    ("reserved_parameter", lambda: simple_req(params={"triton_foo": True}), INVALID, ["triton_"]),
    ("empty_final_response_not_bool", lambda: simple_req(params={"triton_enable_empty_final_response": 1}),
     INVALID, ["triton_enable_empty_final_response"]),
    ("priority_string", lambda: simple_req(params={"priority": "high"}), INVALID, ["priority"]),
    ("priority_bool", lambda: simple_req(params={"priority": True}), INVALID, ["priority"]),
    ("priority_negative", lambda: simple_req(params={"priority": -1}), INVALID, ["priority"]),
    ("timeout_string", lambda: simple_req(params={"timeout": "100"}), INVALID, ["timeout"]),
    ("timeout_double", lambda: simple_req(params={"timeout": 1.5}), INVALID, ["timeout"]),
    ("sequence_start_not_bool", lambda: simple_req(params={"sequence_start": 1}), INVALID, ["sequence_start"]),
    ("sequence_id_bool", lambda: simple_req(params={"sequence_id": True}), INVALID, ["sequence_id"]),
]


def assert_still_serving(stub):
    inputs = h.simple_inputs(2, seed=99)
    out = h.decode_response(h.infer(stub, h.infer_request("simple", inputs)))
    with np.errstate(over="ignore"):
        assert np.array_equal(out["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])


@pytest.mark.parametrize("build,code,substrings", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(stub, build, code, substrings):
    h.assert_rpc_error(stub.ModelInfer, build(), code, *substrings)
    assert_still_serving(stub)


@pytest.mark.parametrize("key", ["my_param", "sequence_id"])
def test_uint64_parameter_rejected(stub, key):
    req = simple_req(params={key: ("uint64", 5)})
    h.assert_rpc_error(stub.ModelInfer, req, INVALID, key)


def test_version_zero_is_an_unknown_version(stub):
    resp = stub.ModelReady(pb.ModelReadyRequest(name="simple", version="0"), timeout=h.RPC_TIMEOUT_S)
    assert resp.ready is False
    h.assert_rpc_error(stub.ModelInfer, simple_req(version="0"), NOT_FOUND, "simple", "0")


@pytest.mark.xfail(
    strict=True,
    reason="switchyard treats version string '-1' as 'latest'; Triton's gRPC front end "
    "(GetModelVersionFromString) rejects negative versions with INVALID_ARGUMENT "
    "\"invalid model version specified '-1' , version should be an integral value > 0\"",
)
def test_negative_version_string_is_invalid(stub):
    h.assert_rpc_error(stub.ModelInfer, simple_req(version="-1"), INVALID, "-1", "integral value")


def test_good_requests_after_all_bad_ones(stub, client):
    for _id, build, _code, _subs in CASES:
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(build(), timeout=h.RPC_TIMEOUT_S)
    assert client.is_server_live() and client.is_server_ready()
    assert_still_serving(stub)
    for model in ("simple_string", "simple_identity", "fraud_mlp"):
        assert client.is_model_ready(model)


def test_non_numeric_version_on_metadata_rpc(stub):
    # Version strings are validated the same way outside ModelInfer.
    h.assert_rpc_error(
        stub.ModelMetadata, pb.ModelMetadataRequest(name="simple", version="abc"), INVALID,
        "version should be an integral value",
    )


def test_oversized_bytes_element_length(stub):
    # A length prefix claiming ~4 GiB must be rejected without allocating it.
    payload = struct.pack("<I", 0xFFFFFFF0) + b"abc"
    h.assert_rpc_error(stub.ModelInfer, identity_req([1, 1], payload), INVALID, "INPUT0")
    assert_still_serving(stub)


def test_huge_declared_bytes_count(stub):
    # Shape claims 2^40 strings, payload holds one: rejected cheaply, no allocation by shape.
    h.assert_rpc_error(stub.ModelInfer, identity_req([1, 2**40], sb(b"a")), INVALID, "INPUT0")
    assert_still_serving(stub)


def test_20mib_request_size_mismatch_fails_cleanly(stub):
    # A big but malformed request: 20 MiB of INT32 for a [1,16] tensor.
    big = bytes(20 * 1024 * 1024)
    h.assert_rpc_error(stub.ModelInfer, simple_req(data0=big), INVALID, "input byte size mismatch", "INPUT0")
    assert_still_serving(stub)


def test_20mib_valid_identity_request_succeeds(stub):
    s = b"q" * (20 * 1024 * 1024)
    resp = h.infer(stub, identity_req([1, 1], sb(s)), timeout=60)
    out = h.decode_response(resp)
    assert out["OUTPUT0"].shape == (1, 1) and out["OUTPUT0"][0, 0] == s

"""Every Triton datatype round-trips through an ONNX Identity model served by Switchyard."""

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

TYPES = {
    "BOOL": (TensorProto.BOOL, "TYPE_BOOL", np.bool_),
    "UINT8": (TensorProto.UINT8, "TYPE_UINT8", np.uint8),
    "UINT16": (TensorProto.UINT16, "TYPE_UINT16", np.uint16),
    "UINT32": (TensorProto.UINT32, "TYPE_UINT32", np.uint32),
    "UINT64": (TensorProto.UINT64, "TYPE_UINT64", np.uint64),
    "INT8": (TensorProto.INT8, "TYPE_INT8", np.int8),
    "INT16": (TensorProto.INT16, "TYPE_INT16", np.int16),
    "INT32": (TensorProto.INT32, "TYPE_INT32", np.int32),
    "INT64": (TensorProto.INT64, "TYPE_INT64", np.int64),
    "FP16": (TensorProto.FLOAT16, "TYPE_FP16", np.float16),
    "FP32": (TensorProto.FLOAT, "TYPE_FP32", np.float32),
    "FP64": (TensorProto.DOUBLE, "TYPE_FP64", np.float64),
    "BYTES": (TensorProto.STRING, "TYPE_STRING", np.object_),
    "BF16": (TensorProto.BFLOAT16, "TYPE_BF16", np.float32),
}


def identity_model(path, onnx_type):
    x = helper.make_tensor_value_info("IN", onnx_type, ["batch", "n"])
    y = helper.make_tensor_value_info("OUT", onnx_type, ["batch", "n"])
    graph = helper.make_graph([helper.make_node("Identity", ["IN"], ["OUT"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def typed_server(tmp_path_factory, request):
    from conftest import start_server  # the shared launcher

    repo = tmp_path_factory.mktemp("typed-repo")
    for wire, (onnx_type, cfg_type, _) in TYPES.items():
        d = repo / f"id_{wire.lower()}"
        (d / "1").mkdir(parents=True)
        identity_model(d / "1" / "model.onnx", onnx_type)
        (d / "config.pbtxt").write_text(
            f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f'input [ {{ name: "IN" data_type: {cfg_type} dims: [ -1 ] }} ]\n'
            f'output [ {{ name: "OUT" data_type: {cfg_type} dims: [ -1 ] }} ]\n'
        )
    srv = start_server(repo, tmp_path_factory.mktemp("typed-logs"), name="typed")
    yield srv
    assert srv.stop() == 0


def sample(wire, dtype, shape):
    rng = np.random.default_rng(7)
    if wire == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if wire == "BYTES":
        words = ["", "a", "héllo", "ünïcødé", "x" * 300, "42"]
        return np.array([[words[(i + j) % len(words)].encode() for j in range(shape[1])] for i in range(shape[0])], dtype=np.object_)
    if wire in ("FP16", "FP32", "FP64", "BF16"):
        data = rng.normal(size=shape).astype(dtype)
        data.flat[0] = np.inf
        data.flat[1] = -0.0
        return data
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("wire", list(TYPES))
def test_identity_round_trip(typed_server, wire):
    _, _, dtype = TYPES[wire]
    data = sample(wire, dtype, (3, 5))
    c = typed_server.client()
    meta = c.get_model_metadata(f"id_{wire.lower()}")
    assert meta.inputs[0].datatype == wire and list(meta.inputs[0].shape) == [-1, -1]
    inp = grpcclient.InferInput("IN", list(data.shape), wire)
    inp.set_data_from_numpy(data)
    r = c.infer(f"id_{wire.lower()}", [inp])
    out = r.as_numpy("OUT")
    assert r.get_output("OUT").datatype == wire
    assert list(out.shape) == [3, 5]
    if wire == "BF16":
        # The client truncates FP32 to BF16 on the way in; compare with that truncation.
        expected = (data.view(np.uint32) & 0xFFFF0000).view(np.float32)
        assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))
    elif wire == "BYTES":
        assert out.tolist() == data.tolist()
    else:
        assert out.dtype == dtype
        assert np.array_equal(out.view(np.uint8), data.view(np.uint8))

"""Helpers shared by the tests: raw gRPC stubs, request building, reference inference."""

from __future__ import annotations

import functools
import re
import shutil
import struct
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
RPC_TIMEOUT_S = 30.0
MAX_MSG = 2**31 - 1
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MSG),
    ("grpc.max_receive_message_length", MAX_MSG),
]

NP_TO_WIRE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}
WIRE_TO_NP = {v: k for k, v in NP_TO_WIRE.items()}


def make_stub(url: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url, options=GRPC_OPTIONS))


def health_check(url: str, service: str = "") -> int:
    """grpc.health.v1.Health/Check by hand (grpcio-health-checking is not installed):
    HealthCheckRequest{string service = 1} -> HealthCheckResponse{ServingStatus status = 1}.
    Returns the status enum (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING)."""
    svc = service.encode()
    req = (b"\x0a" + _varint(len(svc)) + svc) if svc else b""
    with grpc.insecure_channel(url) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")  # bytes in, bytes out
        data = check(req, timeout=RPC_TIMEOUT_S)
    if not data:
        return 0  # proto3 default
    assert data[0] == 0x08, f"unexpected HealthCheckResponse bytes {data!r}"
    value, shift = 0, 0
    for b in data[1:]:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ------------------------------------------------------------------------------ requests


def wire_type(arr: np.ndarray) -> str:
    return NP_TO_WIRE[arr.dtype]


def to_raw(arr: np.ndarray) -> bytes:
    """Triton's raw encoding: little-endian row-major; BYTES as u32 length + data."""
    if arr.dtype == np.dtype(object):
        return serialize_bytes(arr.reshape(-1))
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def serialize_bytes(elements) -> bytes:
    """BYTES wire form: each element as u32 little-endian length + data, no terminator."""
    out = []
    for e in elements:
        b = e if isinstance(e, bytes) else str(e).encode("utf-8")
        out.append(struct.pack("<I", len(b)) + b)
    return b"".join(out)


def input_tensor(name, datatype, shape, contents=None):
    t = pb.ModelInferRequest().InferInputTensor()
    t.name = name
    t.datatype = datatype
    t.shape.extend(int(d) for d in shape)
    if contents is not None:
        t.contents.CopyFrom(contents)
    return t


def infer_request(model, inputs=None, version="", outputs=(), request_id="", params=None, typed=False):
    """A ModelInferRequest from {name: ndarray}; raw contents unless `typed`."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, arr in (inputs or {}).items():
        if typed:
            req.inputs.append(input_tensor(name, wire_type(arr), arr.shape, typed_contents(arr)))
        else:
            req.inputs.append(input_tensor(name, wire_type(arr), arr.shape))
            req.raw_input_contents.append(to_raw(arr))
    for o in outputs:
        req.outputs.add().name = o
    for k, v in (params or {}).items():
        set_param(req.parameters[k], v)
    return req


def set_param(p, v):
    """Sets an InferParameter from a Python value, or from ("uint64"|"double", value)."""
    if isinstance(v, tuple):
        kind, val = v
        setattr(p, f"{kind}_param", val)
    elif isinstance(v, bool):
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    elif isinstance(v, float):
        p.double_param = v
    else:
        p.string_param = v


def typed_contents(arr: np.ndarray) -> pb.InferTensorContents:
    c = pb.InferTensorContents()
    flat = arr.reshape(-1)
    wt = wire_type(arr)
    if wt in ("INT8", "INT16", "INT32"):
        c.int_contents.extend(int(x) for x in flat)
    elif wt == "INT64":
        c.int64_contents.extend(int(x) for x in flat)
    elif wt in ("UINT8", "UINT16", "UINT32"):
        c.uint_contents.extend(int(x) for x in flat)
    elif wt == "UINT64":
        c.uint64_contents.extend(int(x) for x in flat)
    elif wt == "FP32":
        c.fp32_contents.extend(float(x) for x in flat)
    elif wt == "FP64":
        c.fp64_contents.extend(float(x) for x in flat)
    elif wt == "BOOL":
        c.bool_contents.extend(bool(x) for x in flat)
    elif wt == "BYTES":
        c.bytes_contents.extend(x if isinstance(x, bytes) else str(x).encode() for x in flat)
    else:
        raise ValueError(wt)
    return c


def decode_response(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """raw_output_contents -> {name: ndarray}; asserts one raw entry per output."""
    assert len(resp.raw_output_contents) == len(resp.outputs), (
        f"{len(resp.raw_output_contents)} raw_output_contents for {len(resp.outputs)} outputs"
    )
    out = {}
    for o, raw in zip(resp.outputs, resp.raw_output_contents):
        shape = tuple(o.shape)
        if o.datatype == "BYTES":
            arr = deserialize_bytes_tensor(raw) if raw else np.empty(0, dtype=object)
            out[o.name] = arr.reshape(shape)
        else:
            out[o.name] = np.frombuffer(raw, dtype=WIRE_TO_NP[o.datatype].newbyteorder("<")).reshape(shape)
    return out


def grpc_inputs(inputs: dict[str, np.ndarray]):
    """tritonclient.grpc InferInputs (raw contents) from {name: ndarray}."""
    import tritonclient.grpc as grpcclient

    out = []
    for name, arr in inputs.items():
        i = grpcclient.InferInput(name, list(arr.shape), wire_type(arr))
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def arange_simple_inputs():
    """`simple`'s two inputs, both 0..15 (so OUTPUT0 = 2 x arange, OUTPUT1 = 0)."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    return grpc_inputs({"INPUT0": a, "INPUT1": a})


def infer(stub, req, timeout=RPC_TIMEOUT_S) -> pb.ModelInferResponse:
    return stub.ModelInfer(req, timeout=timeout)


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Calls a stub method that must fail; returns the RpcError."""
    kwargs.setdefault("timeout", RPC_TIMEOUT_S)
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{getattr(fn, '_method', fn)} succeeded but an error was expected")


def assert_rpc_error(fn, req, code: grpc.StatusCode, *substrings: str) -> str:
    err = rpc_error(fn, req)
    msg = err.details() or ""
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {msg!r}"
    for s in substrings:
        if isinstance(s, tuple):  # any one of them
            assert any(x in msg for x in s), f"none of {s!r} in error message {msg!r}"
        else:
            assert s in msg, f"{s!r} not in error message {msg!r}"
    return msg


# ------------------------------------------------------------------------ reference runs


@functools.lru_cache(maxsize=None)
def ort_session(model_path: str) -> ort.InferenceSession:
    return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def model_file(model: str, version: int | str = 1) -> Path:
    return MODEL_REPOSITORY / model / str(version) / "model.onnx"


def reference(model: str, inputs: dict[str, np.ndarray], version: int | str = 1, path: Path | None = None):
    """Runs the same .onnx file in onnxruntime (Python); BYTES in/out as bytes objects."""
    sess = ort_session(str(path or model_file(model, version)))
    feed = {}
    for k, v in inputs.items():
        if v.dtype == np.dtype(object):
            v = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(v) if v.size else v
        feed[k] = v
    names = [o.name for o in sess.get_outputs()]
    res = sess.run(names, feed)
    out = {}
    for n, r in zip(names, res):
        if r.dtype == np.dtype(object) and r.size:
            r = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object])(r)
        out[n] = r
    return out


# ---------------------------------------------------------------------------- data makers


def simple_inputs(batch: int, seed: int = 0, extremes: bool = True):
    rng = np.random.default_rng(seed)
    a = rng.integers(-(2**31), 2**31, size=(batch, 16), dtype=np.int64).astype(np.int32)
    b = rng.integers(-(2**31), 2**31, size=(batch, 16), dtype=np.int64).astype(np.int32)
    if extremes:  # wrap-around in int32 arithmetic must match ORT's
        a[0, :4] = [2**31 - 1, -(2**31), 0, 1]
        b[0, :4] = [1, 1, -(2**31), -(2**31)]
    return {"INPUT0": a, "INPUT1": b}


def string_inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.integers(-100000, 100000, size=(batch, 16))
    b = rng.integers(-100000, 100000, size=(batch, 16))
    enc = np.vectorize(lambda x: str(int(x)).encode(), otypes=[object])
    return {"INPUT0": enc(a), "INPUT1": enc(b)}


def fraud_inputs(batch: int, seed: int = 0):
    """FP32 [batch, 30] features of very different scales, as the model's data has."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-1, 3, size=30)
    return {"features": (rng.normal(size=(batch, 30)) * scales).astype(np.float32)}


def bytes_array(values, shape=None) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v.encode("utf-8") if isinstance(v, str) else v
    return arr.reshape(shape if shape is not None else (1, len(values)))


# ---------------------------------------------------------------------- repository editing


def copy_model(repo: Path, src: str, dst: str | None = None, config: str | None = None, versions=None) -> Path:
    """Copies example model `src` to `repo/dst`. `config` replaces config.pbtxt (None keeps it
    with the name rewritten); `versions` maps new version dir names to source version numbers."""
    dst = dst or src
    d = repo / dst
    d.mkdir(parents=True)
    src_dir = MODEL_REPOSITORY / src
    for v, sv in (versions or {"1": 1}).items():
        (d / v).mkdir()
        shutil.copy(src_dir / str(sv) / "model.onnx", d / v / "model.onnx")
    text = config if config is not None else (src_dir / "config.pbtxt").read_text()
    if config is None:
        text = re.sub(r'^name:\s*"[^"]*"', f'name: "{dst}"', text, count=1, flags=re.M)
    (d / "config.pbtxt").write_text(text)
    return d


def simple_config(name: str, extra: str = "") -> str:
    """simple's config under another name, with `extra` appended (or substituted)."""
    text = (MODEL_REPOSITORY / "simple" / "config.pbtxt").read_text()
    text = re.sub(r'^name:\s*"[^"]*"', f'name: "{name}"', text, count=1, flags=re.M)
    return text + "\n" + extra + "\n"


def write_slow_model(model_dir: Path, width: int = 256, depth: int = 40) -> Path:
    """A compute-bound ONNX model in `model_dir/1/model.onnx`: `depth` x (MatMul width x width
    + Tanh) per row, summed to one number per row (a tiny output, so a big request costs
    compute, not transfer). Input "x" FP32 [N, width], output "y" FP32 [N, 1]. The caller
    writes config.pbtxt."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (model_dir / "1").mkdir(parents=True)
    w = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("ReduceSum", [prev, "axes"], ["y"], keepdims=1))
    graph = helper.make_graph(
        nodes, model_dir.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = model_dir / "1" / "model.onnx"
    onnx.save(model, path)
    return path


def fraud_repo_with(make_repo, deployment: str | None, params: dict[str, str] | None = None) -> Path:
    """A repository holding fraud_mlp (v1, v2) with `deployment` as its deployment.toml (none if
    None) and `params` added to its config as string parameters (e.g. fault injection)."""
    repo = make_repo(["fraud_mlp"])
    if deployment is not None:
        (repo / "fraud_mlp" / "deployment.toml").write_text(deployment)
    if params:
        cfg = repo / "fraud_mlp" / "config.pbtxt"
        text = cfg.read_text()
        for k, v in params.items():
            text += f'\nparameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
        cfg.write_text(text + "\n")
    return repo

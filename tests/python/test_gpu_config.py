"""GPU settings of config.pbtxt through the real server on a machine without CUDA.

A KIND_GPU model (with Triton's `tensorrt` accelerator block) fails its load with the CUDA
probe's precise reason while the CPU models next to it serve; a `tensorrt` block on a model
whose instances are all KIND_CPU has no effect (as in Triton's ONNX Runtime backend); invalid
accelerator settings fail the load naming key and value, whatever the instance kind.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

import sy_helpers as h

FRAUD_CONFIG = (h.MODEL_REPOSITORY / "fraud_mlp" / "config.pbtxt").read_text()


def fraud_config(name: str, kind: str = "KIND_CPU", accelerator: str = "", cuda: str = "") -> str:
    text = re.sub(r'^name:\s*"[^"]*"', f'name: "{name}"', FRAUD_CONFIG, count=1, flags=re.M)
    text = text.replace("kind: KIND_CPU", f"kind: {kind}")
    assert f"kind: {kind}" in text
    opt = ""
    if accelerator:
        opt += f"execution_accelerators {{ gpu_execution_accelerator: [ {{ {accelerator} }} ] }}\n"
    if cuda:
        opt += f"cuda {{ {cuda} }}\n"
    return text + (f"optimization {{\n{opt}}}\n" if opt else "")


def trt(precision: str, extra: str = "") -> str:
    return f'name: "tensorrt" parameters {{ key: "precision_mode" value: "{precision}" }} {extra}'


def libcuda_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


# name -> config text (the model is fraud_mlp's version 1 under that name)
MODELS = {
    "fraud_gpu": fraud_config("fraud_gpu", "KIND_GPU", trt("FP16"), "graphs: true"),
    "fraud_gpu_int8": fraud_config(
        "fraud_gpu_int8",
        "KIND_GPU",
        trt("INT8", 'parameters { key: "int8_calibration_table_name" value: "calibration.json" }'),
    ),
    "fraud_cpu_trt": fraud_config("fraud_cpu_trt", "KIND_CPU", trt("FP16"), "graphs: true"),
    "bad_precision": fraud_config("bad_precision", "KIND_CPU", trt("FP8")),
    "calib_escape": fraud_config(
        "calib_escape",
        "KIND_GPU",
        trt("INT8", 'parameters { key: "int8_calibration_table_name" value: "../fraud_mlp/config.pbtxt" }'),
    ),
    "unknown_accelerator": fraud_config("unknown_accelerator", "KIND_GPU", 'name: "openvino"'),
    "unknown_parameter": fraud_config(
        "unknown_parameter", "KIND_CPU", trt("FP16", 'parameters { key: "fp16_mode" value: "1" }')
    ),
}


@pytest.fixture(scope="module")
def gpu_server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("gpu-repo")
    h.copy_model(repo, "fraud_mlp", versions={"1": 1})
    for name, config in MODELS.items():
        h.copy_model(repo, "fraud_mlp", name, config=config)
    (repo / "fraud_gpu_int8" / "calibration.json").write_text("{}")
    return module_switchyard(repo, "--exit-on-error=false")


def index(srv) -> dict[str, tuple[str, str]]:
    resp = srv.stub().RepositoryIndex(pb.RepositoryIndexRequest(), timeout=h.RPC_TIMEOUT_S)
    return {m.name: (m.state, m.reason) for m in resp.models}


def check_serves(srv, model: str) -> None:
    x = h.fraud_inputs(5, seed=3)
    out = h.decode_response(h.infer(srv.stub(), h.infer_request(model, x)))
    ref = h.reference("fraud_mlp", x)
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=1e-6, atol=1e-7)
    assert np.array_equal(out["label"], ref["label"])


def test_gpu_model_is_unavailable_with_the_probe_reason_and_cpu_model_serves(gpu_server):
    rows = index(gpu_server)
    state, reason = rows["fraud_gpu"]
    assert state == "UNAVAILABLE", rows["fraud_gpu"]
    assert "instance group 'fraud_gpu_0' asks for KIND_GPU (tensorrt FP16, CUDA graphs), but " in reason, reason
    if not libcuda_loads():
        assert "no CUDA driver (libcuda.so.1 not found)" in reason, reason
    else:  # a machine with a driver: whatever is missing, or the executor not there yet
        assert "CUDA" in reason or "GPU executor" in reason, reason
    assert rows["fraud_mlp"][0] == "READY", rows["fraud_mlp"]
    check_serves(gpu_server, "fraud_mlp")
    assert not gpu_server.client().is_model_ready("fraud_gpu")


def test_int8_model_with_calibration_inside_its_directory_fails_only_for_the_gpu(gpu_server):
    state, reason = index(gpu_server)["fraud_gpu_int8"]
    assert state == "UNAVAILABLE"
    assert "asks for KIND_GPU (tensorrt INT8), but " in reason, reason


def test_tensorrt_block_on_cpu_instances_has_no_effect_like_triton(gpu_server):
    assert index(gpu_server)["fraud_cpu_trt"][0] == "READY"
    check_serves(gpu_server, "fraud_cpu_trt")


@pytest.mark.parametrize(
    "model, substrings",
    [
        ("bad_precision", ["precision_mode = 'FP8'", "unsupported precision mode"]),
        ("calib_escape", ["int8_calibration_table_name", "'../fraud_mlp/config.pbtxt'"]),
        ("unknown_accelerator", ["unknown Execution Accelerator 'openvino'"]),
        ("unknown_parameter", ["unknown parameter 'fp16_mode'"]),
    ],
)
def test_invalid_accelerator_settings_fail_the_load_naming_key_and_value(gpu_server, model, substrings):
    state, reason = index(gpu_server)[model]
    assert state == "UNAVAILABLE", (model, state, reason)
    assert "gpu_execution_accelerator[0]" in reason, reason
    for s in substrings:
        assert s in reason, (s, reason)
    # A settings error is reported before (and instead of) any GPU problem.
    assert "libcuda" not in reason, reason

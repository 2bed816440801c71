"""Switchyard's own engine through the whole server, on the CPU runner of programs.

A model with `parameters { key: "switchyard_engine_cpu" value: { string_value: "true" } }`
is compiled by Switchyard's engine (import, fusion, precision from the `tensorrt` block),
lowered per input shape into the programs a GPU instance runs, and executed by
`kernels::program_cpu` — the kernels' semantics, step by step. With `cuda { graphs: true }`
batches are padded to buckets (powers of two up to max_batch_size) and the extra rows are cut
from the outputs, as on a GPU. So everything of the GPU serving path except the device
itself is exercised here through tritonclient (gRPC and HTTP) against ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import sy_helpers as h

FRAUD_CONFIG = (h.MODEL_REPOSITORY / "fraud_mlp" / "config.pbtxt").read_text()
ENGINE_CPU = 'parameters { key: "switchyard_engine_cpu" value: { string_value: "true" } }\n'
ENCODER = h.ROOT / "tests" / "data" / "tiny_encoder.onnx"
HELDOUT = np.load(h.ROOT / "tests" / "python" / "data" / "fraud_heldout.npy")
BINARY = h.ROOT / "target" / "release" / "switchyard"
CALIBRATION_ROWS = 400


def calibrate(model: Path, data: list, out: Path, *extra: str) -> subprocess.CompletedProcess:
    # `switchyard calibrate` on perf_analyzer-style input data.
    src = out.parent / "calib_input.json"
    src.write_text(json.dumps({"data": data}))
    return subprocess.run([str(BINARY), "calibrate", str(model), "--input-data", str(src), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120)


def fraud_config(name: str, precision: str = "") -> str:
    text = re.sub(r'^name:\s*"[^"]*"', f'name: "{name}"', FRAUD_CONFIG, count=1, flags=re.M)
    opt = "cuda { graphs: true }\n"
    if precision:
        opt += (
            "execution_accelerators { gpu_execution_accelerator: [ { name: \"tensorrt\" "
            f'parameters {{ key: "precision_mode" value: "{precision}" }} }} ] }}\n'
        )
    return text + f"optimization {{\n{opt}}}\n" + ENGINE_CPU + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"


def encoder_config(name: str, engine: bool) -> str:
    text = f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }}
]
output [
  {{ name: "last_hidden_state" data_type: TYPE_FP32 dims: [ -1, 16 ] }},
  {{ name: "embedding" data_type: TYPE_FP32 dims: [ 16 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
    if engine:
        text += "optimization { cuda { graphs: true } }\n" + ENGINE_CPU
    return text


@pytest.fixture(scope="module")
def server(module_switchyard, tmp_path_factory):
    repo = tmp_path_factory.mktemp("engine-cpu-repo")
    h.copy_model(repo, "fraud_mlp", versions={"1": 1})
    h.copy_model(repo, "fraud_mlp", "fraud_engine", config=fraud_config("fraud_engine"))
    h.copy_model(repo, "fraud_mlp", "fraud_engine_fp16", config=fraud_config("fraud_engine_fp16", "FP16"))
    # INT8: the table made by `switchyard calibrate` from the first rows of the held-out set,
    # written in perf_analyzer's --input-data format.
    int8 = fraud_config("fraud_engine_int8", "INT8").replace(
        'value: "INT8" }', 'value: "INT8" } parameters { key: "int8_calibration_table_name" value: "calibration.json" }')
    h.copy_model(repo, "fraud_mlp", "fraud_engine_int8", config=int8)
    rows = [{"features": {"content": [float(v) for v in r], "shape": [30]}} for r in HELDOUT[:CALIBRATION_ROWS]]
    done = calibrate(repo / "fraud_engine_int8" / "1" / "model.onnx", rows, repo / "fraud_engine_int8" / "calibration.json")
    assert done.returncode == 0, done.stderr
    assert "3 GEMMs in INT8; 0 stay in FP16" in done.stdout, done.stdout
    for name, engine in [("encoder_ort", False), ("encoder_engine", True)]:
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(ENCODER, repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(encoder_config(name, engine))
    return module_switchyard(repo)


def fraud_infer(client, model: str, x: np.ndarray, http: bool = False) -> dict[str, np.ndarray]:
    mod = httpclient if http else grpcclient
    inp = mod.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(model, [inp])
    return {n: r.as_numpy(n) for n in ("probabilities", "label")}


def test_engine_models_load_and_report_the_model_io(server):
    client = server.client()
    for m in ("fraud_engine", "fraud_engine_fp16", "encoder_engine"):
        assert client.is_model_ready(m), m
    meta = client.get_model_metadata("encoder_engine", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert "Switchyard engine ready" in server.log()


@pytest.mark.parametrize("http", [False, True])
def test_fp32_engine_answers_as_onnx_runtime_at_every_batch_size(server, http):
    client = server.http_client() if http else server.client()
    # 3, 5 and 17 rows are padded to buckets 4, 8 and 32; the padding never shows.
    for rows in (1, 3, 5, 17):
        x = HELDOUT[rows: 2 * rows] if rows > 1 else HELDOUT[:1]
        got = fraud_infer(client, "fraud_engine", x, http)
        want = fraud_infer(client, "fraud_mlp", x, http)
        assert got["probabilities"].shape == (len(x), 2)
        assert got["label"].shape == (len(x), 1)
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
        assert np.array_equal(got["label"], want["label"]), rows


def label_agreement(client, model: str, x: np.ndarray, chunk: int) -> float:
    """Share of `x`'s rows where `model` decides as fraud_mlp on ONNX Runtime."""
    agree = 0
    for start in range(0, len(x), chunk):
        rows = x[start: start + chunk]
        got = fraud_infer(client, model, rows)["label"]
        want = fraud_infer(client, "fraud_mlp", rows)["label"]
        agree += int((got == want).sum())
    return agree / len(x)


def test_fp16_engine_decisions_match_onnx_runtime_on_the_held_out_set(server):
    rate = label_agreement(server.client(), "fraud_engine_fp16", HELDOUT, 250)
    print(f"fraud_mlp FP16 engine through the server: {rate * 100:.2f} % of labels as ONNX Runtime")
    assert rate >= 0.999, rate


def test_concurrent_requests_batched_together_each_get_their_own_rows(server):
    client = server.client()
    chunks = [HELDOUT[i * 3: i * 3 + 1 + i % 3] for i in range(12)]

    def one(x):
        return fraud_infer(server.client(), "fraud_engine", x), fraud_infer(client, "fraud_mlp", x)

    with ThreadPoolExecutor(max_workers=6) as pool:
        for x, (got, want) in zip(chunks, pool.map(one, chunks)):
            assert got["probabilities"].shape == (len(x), 2)
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    stats = client.get_inference_statistics("fraud_engine", as_json=True)
    batches = stats["model_stats"][0]["batch_stats"]
    assert batches, stats


def encoder_inputs(batch: int, seq: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for b in range(batch):
        mask[b, seq - b % max(seq // 2, 1):] = 0
    return ids, mask


def encoder_infer(client, model, ids, mask):
    a = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids)
    b = grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")
    b.set_data_from_numpy(mask)
    r = client.infer(model, [a, b])
    return r.as_numpy("last_hidden_state"), r.as_numpy("embedding")


def test_tiny_encoder_engine_answers_as_onnx_runtime(server):
    client = server.client()
    for batch, seq, seed in [(1, 4, 1), (3, 9, 2), (5, 12, 3)]:
        ids, mask = encoder_inputs(batch, seq, seed)
        hid, emb = encoder_infer(client, "encoder_engine", ids, mask)
        want_hid, want_emb = encoder_infer(client, "encoder_ort", ids, mask)
        assert hid.shape == (batch, seq, 16) and emb.shape == (batch, 16)
        np.testing.assert_allclose(hid, want_hid, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(emb, want_emb, rtol=1e-4, atol=1e-5)


def test_an_out_of_range_token_id_is_invalid_argument_and_the_model_keeps_serving(server):
    client = server.client()
    ids, mask = encoder_inputs(2, 5, 4)
    ids[1, 2] = 50  # the vocabulary has 50 entries
    with pytest.raises(InferenceServerException) as e:
        encoder_infer(client, "encoder_engine", ids, mask)
    assert "index 50 is out of range" in str(e.value), str(e.value)
    assert "StatusCode.INVALID_ARGUMENT" in str(e.value.status()), e.value.status()
    ids[1, 2] = 7
    hid, _ = encoder_infer(client, "encoder_engine", ids, mask)
    assert hid.shape == (2, 5, 16)


def test_engine_models_need_no_onnx_runtime(switchyard, tmp_path):
    """A GPU machine may have no ONNX Runtime: engine models load and serve without it."""
    repo = tmp_path / "no-ort-repo"
    repo.mkdir()
    h.copy_model(repo, "fraud_mlp", versions={"1": 1})
    h.copy_model(repo, "fraud_mlp", "fraud_engine", config=fraud_config("fraud_engine"))
    srv = switchyard(repo, "--ort-library", str(tmp_path / "missing" / "libonnxruntime.so"),
                     "--exit-on-error=false")
    client = srv.client()
    assert client.is_model_ready("fraud_engine")
    assert not client.is_model_ready("fraud_mlp")
    x = HELDOUT[:5]
    got = fraud_infer(client, "fraud_engine", x)
    want = h.reference("fraud_mlp", {"features": x})
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(got["label"].reshape(-1), np.asarray(want["label"]).reshape(-1))
    assert "ONNX Runtime is not available" in srv.log()


def test_int8_engine_calibrated_by_switchyard_calibrate_keeps_decisions(server):
    rate = label_agreement(server.client(), "fraud_engine_int8", HELDOUT[CALIBRATION_ROWS:], 200)
    print(f"fraud_mlp INT8 engine through the server: {rate * 100:.2f} % of labels as ONNX Runtime")
    assert rate >= 0.99, rate


def test_calibrate_refuses_bad_input_data_with_a_reason(tmp_path):
    model = h.MODEL_REPOSITORY / "fraud_mlp" / "1" / "model.onnx"
    out = tmp_path / "calibration.json"
    bad = calibrate(model, [{"wrong_name": [1.0] * 30}], out)
    assert bad.returncode == 2 and "no input 'features'" in bad.stderr, bad.stderr
    short = calibrate(model, [{"features": {"content": [1.0] * 29, "shape": [30]}}], out)
    assert short.returncode == 2 and "holds 30 values, content has 29" in short.stderr, short.stderr
    method = calibrate(model, [{"features": [1.0] * 30}], out, "--method", "median")
    assert method.returncode == 2 and "expected max or percentile:P" in method.stderr, method.stderr
    assert not out.exists()
    ok = calibrate(model, [{"features": [float(i) for i in range(30)]}], out, "--method", "percentile:99.9")
    assert ok.returncode == 0, ok.stderr
    table = json.loads(out.read_text())
    assert table["format"] == "switchyard-int8-calibration" and table["version"] == 2
    assert table["method"] == "percentile:99.9" and len(table["tensors"]) == 3

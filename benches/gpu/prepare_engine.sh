#!/usr/bin/env bash
# Prepares .gpu-carry-engine/ (ignored by git) for the SECOND device call of issue 6's GPU
# checks: Switchyard's engine on MiniLM (accuracy against ONNX Runtime, throughput) and the
# same model served by Switchyard with perf_analyzer.
#
#   bash benches/gpu/prepare_engine.sh
#   device run, carry [".gpu-carry-engine"], command:  MODE=engine bash benches/gpu/run.sh
#
# .gpu-carry-engine/engine.tar.gz (one file, ~55 MB: a call carries at most 64 MiB) holds
#   minilm.f16.onnx    all-MiniLM-L6-v2 as benches/minilm/export.sh exports it, initializers
#                      stored as FLOAT16 (45 MB; the FP32 file, 91 MB, would not fit)
#   data.json          token ids, ONNX Runtime FP32's embeddings for them (same half-rounded
#                      weights), calibration sentences (benches/gpu/minilm_engine_data.py)
#   input_data.json    perf_analyzer's real-sentence requests at seq 128 (from the export)
#   bin/engine_bench   examples/engine_bench.rs      } built here (x86-64, glibc <= 2.34),
#   bin/switchyard     the server                     } stripped
#   bin/perf_analyzer  tritonclient 2.50.0's, with lib/libcudart.so.12 and lib/libb64.so.0d
# plus .gpu-carry-engine/build-root (the absolute repository path the binaries were built in).
# Needs .venv-minilm (benches/minilm/export.sh creates it, with the export) and
# `bash scripts/deps.sh test` (NVRTC for the --cpu check, perf_analyzer).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
CARRY="$ROOT/.gpu-carry-engine"
REPO="${MINILM_REPO:-/tmp/minilm_repo}"
[[ -f "$REPO/minilm/1/model.onnx" ]] || bash "$ROOT/benches/minilm/export.sh" "$REPO"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
"$ROOT/.venv-minilm/bin/python" "$ROOT/benches/gpu/minilm_engine_data.py" \
    "$REPO/minilm/1/model.onnx" "$STAGE"
cp "$REPO/input_data.json" "$STAGE/"
cargo build --release --bin switchyard --example engine_bench
strip -o "$STAGE/bin/engine_bench" "$ROOT/target/release/examples/engine_bench"
strip -o "$STAGE/bin/switchyard" "$ROOT/target/release/switchyard"
strip -o "$STAGE/bin/perf_analyzer" "$ROOT/.deps/perf_analyzer/perf_analyzer"
cp "$ROOT/.deps/cuda/lib/libcudart.so.12" "$STAGE/lib/"
cp "$(readlink -f /lib/x86_64-linux-gnu/libb64.so.0d)" "$STAGE/lib/libb64.so.0d"
# The same pipeline on the CPU runner first: a model the engine cannot compile, or a wrong
# answer, is found here rather than in device time.
if [[ "${SKIP_CPU_CHECK:-0}" != 1 ]]; then
    "$STAGE/bin/engine_bench" --cpu --widen-f16 --model "$STAGE/minilm.f16.onnx" \
        --data "$STAGE/data.json" --out "$STAGE/cpu-check" --precisions fp32,fp16,int8
    cat "$STAGE/cpu-check/engine_accuracy.csv"
fi
rm -rf "$CARRY"
mkdir -p "$CARRY"
tar -C "$STAGE" -czf "$CARRY/engine.tar.gz" .
echo "$ROOT" > "$CARRY/build-root"
du -sh "$CARRY"
size=$(stat -c %s "$CARRY/engine.tar.gz")
(( size < 64 * 1024 * 1024 - 65536 )) || { echo "prepare_engine: $size bytes, over a call's 64 MiB carry" >&2; exit 1; }

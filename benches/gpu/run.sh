#!/usr/bin/env bash
# Issue 6's GPU checks and benchmarks, in ONE call on a lent GPU machine (H100/H200, CUDA 13,
# PyTorch 2.11+cu130 in its python3, no registry). Prepare first, on the developer machine:
#
#   bash benches/gpu/prepare.sh                      # fills .gpu-carry/ (ignored by git)
#   device run, carry [".gpu-carry"], command:  bash benches/gpu/run.sh
#
# Writes to $OUT (or ./gpu-out): summary.tsv (one line per section: section, status, detail),
# env.txt, roofline.csv, minilm_torch.csv (+ _roofline.json), kernels.log, sanitizer.log;
# with MODE=engine: engine.log, engine_accuracy.csv, engine_bench.csv.
#
# Two calls (a call carries at most 64 MiB, and MiniLM's weights travel once per call):
#   1. bash benches/gpu/prepare.sh;        carry [".gpu-carry"]         bash benches/gpu/run.sh
#   2. bash benches/gpu/prepare_engine.sh; carry [".gpu-carry-engine"]  MODE=engine bash benches/gpu/run.sh
#
# Sections and what they prove:
#   env        nvidia-smi, torch, CUDA libraries found                       REAL
#   roofline   FP16/BF16/INT8 matmul rate, device-to-device bandwidth        REAL
#   torch      MiniLM seq 128, batch 1/8/32/128, eager FP32/FP16, compile    REAL (baselines)
#   kernels    the kernels crate's tests and tests/engine_gpu.rs with a GPU   REAL
#   engine-kernel-outputs  every Step kind on the GPU vs program_cpu          REAL (gpu_program.rs)
#   engine-accuracy  fraud_mlp FP32/FP16/INT8, tiny encoder FP32/FP16, GPU vs
#              the CPU runner (which tests/engine_lower.rs ties to ORT)      REAL (engine_gpu.rs)
#   sanitizer  compute-sanitizer over those test binaries                    REAL
# MODE=engine (a second call, carrying .gpu-carry-engine from prepare_engine.sh):
#   engine-minilm-accuracy  MiniLM FP16 (rel. L2 error < 1e-2) and INT8 (cosine >= 0.99) on
#              the GPU vs ONNX Runtime FP32's embeddings                       REAL
#   engine-bench  MiniLM seq 128, batch 1/8/32/128, FP16 and INT8, median/p90 latency and
#              sequences/s through a captured CUDA graph (engine_bench.csv)    REAL
#   server-perf-analyzer  the same model served by Switchyard (KIND_GPU, FP16, CUDA graphs,
#              dynamic batching), perf_analyzer -i grpc at batch 1/8/32 and concurrency 32,
#              GPU metrics collected (pa_*.csv, perf_analyzer.log, server.log) REAL
#
# Time: roofline under a minute; torch about 1 min eager + ~30 s per torch.compile shape (4
# FP16 shapes; FP32 compile only with TORCH_COMPILE_FP32=1); kernels + sanitizer a minute or
# two. Under the 10-minute limit of one call; each section has its own timeout.
#
# Exit status: 0 if every section passed, 1 if one failed.
set -uo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
HERE="$ROOT/benches/gpu"
CARRY="$ROOT/.gpu-carry"
OUT="${OUT:-$ROOT/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
printf 'section\tstatus\tdetail\n' > "$SUMMARY"
real_failed=0
missing=0
export PYTHONUNBUFFERED=1

record() {  # section status detail
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$SUMMARY"
    echo "== $1: $2 $3"
    case "$2" in
        PASS) ;;
        NOT_IMPLEMENTED) missing=$((missing + 1)) ;;
        *) real_failed=$((real_failed + 1)) ;;
    esac
}

# CUDA 13 libraries live in the Python wheels (site-packages/nvidia/...): put every folder
# holding a lib*.so.13* on the loader path, for cudarc (libcuda comes from the driver).
SITE="$("$PY" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)"
if [[ -d "$SITE/nvidia" ]]; then
    LIBDIRS="$(find "$SITE/nvidia" -name 'lib*.so.1[0-9]*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
    export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# ---- env -------------------------------------------------------------------------------
{
    date -u
    nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,power.limit,clocks.sm --format=csv 2>&1
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' 2>&1
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ls "$CARRY" 2>&1
} > "$OUT/env.txt" 2>&1
HAVE_GPU=0
if nvidia-smi -L >/dev/null 2>&1; then
    HAVE_GPU=1
    record env PASS "$(nvidia-smi -L | head -1)"
else
    record env FAIL "nvidia-smi sees no GPU"
fi

# ---- MODE=engine: the second call, carrying .gpu-carry-engine (prepare_engine.sh) ----------
if [[ "${MODE:-base}" == engine ]]; then
    ECARRY="$ROOT/.gpu-carry-engine"
    ENG="${ENGINE_WORK:-/tmp/sy-engine}"
    rm -rf "$ENG" && mkdir -p "$ENG"
    if [[ ! -f "$ECARRY/engine.tar.gz" ]] || ! tar -C "$ENG" -xzf "$ECARRY/engine.tar.gz"; then
        record engine-minilm-accuracy FAIL ".gpu-carry-engine/engine.tar.gz missing or unreadable: run benches/gpu/prepare_engine.sh and carry it"
    else
        # NVRTC and the CUDA 13 libraries come from the wheels (LD_LIBRARY_PATH above).
        mkdir -p "$ENG/repo/minilm_gpu/1"
        if timeout 420 "$ENG/bin/engine_bench" --widen-f16 --model "$ENG/minilm.f16.onnx" \
            --write-widened "$ENG/repo/minilm_gpu/1/model.onnx" \
            --data "$ENG/data.json" --out "$OUT" --seq 128 --batches 1,8,32,128 \
            --precisions fp16,int8 > "$OUT/engine.log" 2>&1; then
            # The issue's bars: FP16 relative error < 1e-2, INT8 cosine >= 0.99.
            verdict="$(awk -F, 'NR > 1 && $1 == "FP16" && $4 >= 1e-2 { bad = bad " FP16 rel " $4 }
                NR > 1 && $1 == "INT8" && $5 < 0.99 { bad = bad " INT8 cos " $5 }
                END { print bad }' "$OUT/engine_accuracy.csv")"
            if [[ -z "$verdict" ]]; then
                record engine-minilm-accuracy PASS "$(paste -sd';' "$OUT/engine_accuracy.csv")"
            else
                record engine-minilm-accuracy FAIL "over the bar:$verdict"
            fi
            record engine-bench PASS "$(grep -c . "$OUT/engine_bench.csv") lines in engine_bench.csv (compare with the torch rows of the first call)"
        else
            record engine-minilm-accuracy FAIL "engine_bench failed (see engine.log)"
        fi
        # ---- the same model through the server: KIND_GPU, FP16, CUDA graphs -------------
        if [[ -s "$ENG/repo/minilm_gpu/1/model.onnx" ]]; then
            cat > "$ENG/repo/minilm_gpu/config.pbtxt" <<'CFG'
name: "minilm_gpu"
platform: "onnxruntime_onnx"
max_batch_size: 128
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ 128 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ 128 ] },
  { name: "token_type_ids" data_type: TYPE_INT64 dims: [ 128 ] }
]
output [ { name: "embedding" data_type: TYPE_FP32 dims: [ 384 ] } ]
instance_group [ { count: 1 kind: KIND_GPU } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
optimization {
  execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt"
    parameters { key: "precision_mode" value: "FP16" } } ] }
  cuda { graphs: true }
}
CFG
            "$ENG/bin/switchyard" --model-repository "$ENG/repo" --engine-cache-dir "$ENG/cache" \
                --grpc-port 8001 --http-port 8000 --metrics-port 8002 > "$OUT/server.log" 2>&1 &
            SERVER=$!
            ready=0
            for _ in $(seq 1 240); do
                if "$PY" -c 'import urllib.request as u; u.urlopen("http://localhost:8000/v2/models/minilm_gpu/ready", timeout=1)' 2>/dev/null; then
                    ready=1; break
                fi
                kill -0 "$SERVER" 2>/dev/null || break
                sleep 0.5
            done
            if [[ $ready == 1 ]]; then
                export LD_LIBRARY_PATH="$ENG/lib:$LD_LIBRARY_PATH"
                ok=1
                : > "$OUT/perf_analyzer.log"
                # batch b at concurrency 1 (the engine rows' shapes), then batch 1 at
                # concurrency 32 (dynamic batching); GPU metrics collected in the first.
                for run in "8 1 --collect-metrics --metrics-url localhost:8002/metrics" "1 1" "32 1" "1 32"; do
                    set -- $run
                    b=$1; c=$2; shift 2
                    timeout 90 "$ENG/bin/perf_analyzer" -m minilm_gpu -i grpc -u localhost:8001 \
                        --input-data "$ENG/input_data.json" -b "$b" --concurrency-range "$c:$c" \
                        --measurement-interval 3000 --max-trials 8 --stability-percentage 25 -f "$OUT/pa_b${b}_c${c}.csv" "$@" \
                        >> "$OUT/perf_analyzer.log" 2>&1 || ok=0
                done
                if grep -q "Unable to parse 'nv_gpu" "$OUT/perf_analyzer.log"; then
                    record gpu-metrics FAIL "perf_analyzer could not parse Switchyard's nv_gpu_* metrics (see perf_analyzer.log)"
                else
                    record gpu-metrics PASS "perf_analyzer --collect-metrics parsed nv_gpu_* (see pa_b8_c1.csv)"
                fi
                if [[ $ok == 1 ]]; then
                    record server-perf-analyzer PASS "$(grep -h 'Throughput' "$OUT/perf_analyzer.log" | paste -sd';' | cut -c1-300)"
                else
                    record server-perf-analyzer FAIL "see perf_analyzer.log and server.log"
                fi
            else
                record server-perf-analyzer FAIL "the server did not get minilm_gpu ready (see server.log)"
            fi
            kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
        else
            record server-perf-analyzer FAIL "no widened model (engine_bench failed first)"
        fi
    fi
    echo
    column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
    for f in engine_accuracy.csv engine_bench.csv; do
        [[ -f "$OUT/$f" ]] && { echo; column -t -s, "$OUT/$f" 2>/dev/null || cat "$OUT/$f"; }
    done
    if (( real_failed > 0 )); then exit 1; fi
    exit 0
fi

# ---- roofline ----------------------------------------------------------------------------
if timeout 300 "$PY" "$HERE/roofline.py" --out "$OUT/roofline.csv"; then
    record roofline PASS "$(paste -sd';' "$OUT/roofline.csv" | cut -c1-300)"
else
    record roofline FAIL "roofline.py exited $?"
fi

# ---- torch baselines ---------------------------------------------------------------------
WEIGHTS=""
[[ -f "$CARRY/minilm/model.fp16.safetensors" ]] && WEIGHTS="--weights $CARRY/minilm"
[[ -z "$WEIGHTS" ]] && echo "run.sh: .gpu-carry/minilm missing: PyTorch rows use a RANDOM-INIT BERT of MiniLM's shape (throughput only)"
COMPILE_FP32=""
[[ "${TORCH_COMPILE_FP32:-0}" == 1 ]] && COMPILE_FP32="--compile-fp32"
# shellcheck disable=SC2086
if timeout 360 "$PY" "$HERE/torch_minilm.py" $WEIGHTS $COMPILE_FP32 --out "$OUT/minilm_torch.csv" --roofline "$OUT/roofline.csv"; then
    record torch PASS "$(grep -c . "$OUT/minilm_torch.csv") lines in minilm_torch.csv"
else
    record torch FAIL "torch_minilm.py failed (see its output; compile failures are rows, not this)"
fi

# ---- Switchyard's kernels crate with a GPU present ---------------------------------------
if ls "$CARRY"/bin/* >/dev/null 2>&1; then
    # The NVRTC test loads NVRTC from <build root>/.deps/nvrtc/lib (a path compiled in):
    # point that path at the wheel's NVRTC here.
    BUILD_ROOT="$(cat "$CARRY/build-root")"
    # The test binaries read the repository (models, held-out data) at the path they were
    # built in: make that path lead here.
    if [[ ! -e "$BUILD_ROOT" ]]; then
        mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$ROOT" "$BUILD_ROOT"
    fi
    NVRTC_DIR="$(find "$SITE/nvidia" -name 'libnvrtc.so.13*' -printf '%h\n' 2>/dev/null | head -1)"
    if [[ -n "$NVRTC_DIR" && ! -e "$BUILD_ROOT/.deps/nvrtc/lib" ]]; then
        # (kernels/ too: the compiled-in path is <build root>/kernels/../.deps/nvrtc/lib)
        mkdir -p "$BUILD_ROOT/kernels" "$BUILD_ROOT/.deps/nvrtc" \
            && ln -s "$NVRTC_DIR" "$BUILD_ROOT/.deps/nvrtc/lib"
    fi
    ok=1
    : > "$OUT/kernels.log"
    for t in "$CARRY"/bin/*; do
        chmod +x "$t"
        # SWITCHYARD_EXPECT_GPU: the probe and NVML tests then demand that CUDA, cuBLAS(Lt),
        # NVRTC and NVML all load and print what they found (--nocapture).
        SWITCHYARD_EXPECT_GPU=1 timeout 120 "$t" --test-threads=1 --nocapture \
            >> "$OUT/kernels.log" 2>&1 || ok=0
    done
    # These tests also pass without a GPU (they then check the refusals): only a run that saw
    # a GPU counts here.
    if [[ $HAVE_GPU == 0 ]]; then
        record kernels FAIL "tests ran without a GPU, which proves nothing here (see kernels.log)"
    elif [[ $ok == 1 ]] && grep -q 'probing_this_machine_never_panics ... ok' "$OUT/kernels.log"; then
        record kernels PASS "kernels crate and engine_gpu tests passed with a GPU"
    else
        record kernels FAIL "see kernels.log"
    fi
    # Every step kind on the GPU vs program_cpu (kernels/tests/gpu_program.rs).
    if grep -q 'every_step_matches_program_cpu ... ok' "$OUT/kernels.log"; then
        record engine-kernel-outputs PASS "every Step kind and element path matches program_cpu (see kernels.log)"
    else
        record engine-kernel-outputs FAIL "gpu_program did not pass (see kernels.log)"
    fi
    # Whole models (tests/engine_gpu.rs): GPU vs the CPU runner, itself tied to ONNX Runtime.
    if grep -q 'fraud_mlp_runs_on_the_gpu_as_on_the_cpu ... ok' "$OUT/kernels.log" \
        && grep -q 'tiny_encoder_runs_on_the_gpu_as_on_the_cpu ... ok' "$OUT/kernels.log"; then
        record engine-accuracy PASS "fraud_mlp FP32/FP16/INT8 and tiny encoder FP32/FP16 match the CPU runner (see kernels.log)"
    else
        record engine-accuracy FAIL "engine_gpu did not pass (see kernels.log)"
    fi
    if command -v compute-sanitizer >/dev/null; then
        ok=1
        : > "$OUT/sanitizer.log"
        for t in "$CARRY"/bin/*; do
            timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 "$t" --test-threads=1 \
                >> "$OUT/sanitizer.log" 2>&1 || ok=0
        done
        if [[ $ok == 1 ]]; then
            record sanitizer PASS "memcheck clean over the kernels and engine_gpu tests"
        else
            record sanitizer FAIL "see sanitizer.log"
        fi
    else
        record sanitizer FAIL "compute-sanitizer not on PATH"
    fi
else
    record kernels FAIL ".gpu-carry/bin missing: run benches/gpu/prepare.sh and carry .gpu-carry"
fi

echo
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
if [[ -f "$OUT/minilm_torch.csv" ]]; then echo; column -t -s, "$OUT/minilm_torch.csv" 2>/dev/null || cat "$OUT/minilm_torch.csv"; fi
if (( real_failed > 0 )); then exit 1; fi
exit 0

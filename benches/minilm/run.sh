#!/usr/bin/env bash
# all-MiniLM-L6-v2 (seq 128) served over gRPC vs in-process ONNX Runtime at its best batch size.
#
#   bash benches/minilm/export.sh              # once: venv + ONNX export + repo in /tmp/minilm_repo
#   bash benches/minilm/run.sh [REPO_DIR]      # REPO_DIR defaults to /tmp/minilm_repo
#
# Builds nothing. Needs `cargo build --release` (target/release/switchyard) and
# `bash scripts/deps.sh test` (.venv with onnxruntime + tritonclient, perf_analyzer).
#
# One switchyard server on free ports serving REPO_DIR (minilm: no batching; minilm_batched:
# dynamic batching, same model.onnx), then:
#   ort_ceiling.py (before; batch 1..64) -> perf_analyzer -i grpc, concurrency 1..64, both
#   models, every request one sequence of 128 real token ids -> ort_ceiling.py (after)
# Prints a Markdown table; the ratio is served infer/s over the ceiling at its best batch
# (mean of the before and after runs). Raw perf_analyzer CSVs/logs, ceiling JSONs, server
# CPU/inference-count probes and the server log go to $OUT/<run id>/ (OUT defaults to
# /tmp/switchyard-bench-minilm; $OUT/latest points at the newest run).
#
# Knobs (environment):
#   CONCURRENCIES="1 2 4 8 16 32 64"
#   MODELS="minilm minilm_batched"
#   MEASURE_MS=4000        perf_analyzer --measurement-interval (time windows)
#   STABILITY=25           perf_analyzer --stability-percentage (retried once at 100 if unstable)
#   MAX_TRIALS=5           perf_analyzer --max-trials
#   CEILING_SECONDS=4      timed loop per batch size of each ort_ceiling.py run
#   BATCHES=1,2,4,8,16,32,64
#   INTRA_OP=0             server --ort-intra-op-threads and ceiling --intra-op-threads (0 = ORT default)
#
# On a small machine perf_analyzer, the server and the ceiling share the same cores (the
# ceiling runs alone, before and after); ratios within one run are what matter.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
HERE="benches/minilm"
PY="$ROOT/.venv/bin/python"
PA="$ROOT/scripts/perf_analyzer"
BIN="$ROOT/target/release/switchyard"
REPO="$(readlink -f -- "${1:-/tmp/minilm_repo}")"
DATA="$REPO/input_data.json"
SEQ=128

CONCURRENCIES="${CONCURRENCIES:-1 2 4 8 16 32 64}"
MODELS="${MODELS:-minilm minilm_batched}"
MEASURE_MS="${MEASURE_MS:-4000}"
STABILITY="${STABILITY:-25}"
MAX_TRIALS="${MAX_TRIALS:-5}"
CEILING_SECONDS="${CEILING_SECONDS:-4}"
BATCHES="${BATCHES:-1,2,4,8,16,32,64}"
INTRA_OP="${INTRA_OP:-0}"

die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- checks ----
missing=()
[[ -x "$BIN" ]] || missing+=("$BIN (run: cargo build --release)")
[[ -s .deps/ort-lib-path && -f "$(cat .deps/ort-lib-path 2>/dev/null)" ]] \
    || missing+=(".deps/ort-lib-path / libonnxruntime.so (run: bash scripts/deps.sh test)")
[[ -x .deps/perf_analyzer/perf_analyzer ]] || missing+=("perf_analyzer (run: bash scripts/deps.sh test)")
[[ -x "$PY" ]] && "$PY" -c 'import onnxruntime, numpy, tritonclient.grpc' 2>/dev/null \
    || missing+=(".venv with onnxruntime, numpy, tritonclient (run: bash scripts/deps.sh test)")
for m in $MODELS; do
    [[ -f "$REPO/$m/1/model.onnx" && -f "$REPO/$m/config.pbtxt" ]] \
        || missing+=("$REPO/$m (run: bash benches/minilm/export.sh $REPO)")
done
[[ -f "$DATA" ]] || missing+=("$DATA (run: bash benches/minilm/export.sh $REPO)")
if ((${#missing[@]})); then
    printf 'run.sh: missing prerequisites (this script builds nothing):\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
ORT_LIB="$(cat .deps/ort-lib-path)"
# The ceiling runs the file the first model serves (all copies are the same export).
ONNX="$REPO/$(set -- $MODELS; echo "$1")/1/model.onnx"

# ---------------------------------------------------------------- run dir ---
OUT_BASE="${OUT:-/tmp/switchyard-bench-minilm}"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="$OUT_BASE/$RUN_ID"
mkdir -p "$RUN_DIR"
ln -sfn "$RUN_ID" "$OUT_BASE/latest"
echo "run.sh: results in $RUN_DIR" >&2
cp "$REPO/export.json" "$RUN_DIR/" 2>/dev/null || true
{
    echo "date_utc=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "server_binary_mtime=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M:%S UTC')"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "measure_ms=$MEASURE_MS stability=$STABILITY max_trials=$MAX_TRIALS ceiling_seconds=$CEILING_SECONDS intra_op=$INTRA_OP"
} > "$RUN_DIR/machine.txt"
T0=$SECONDS

# ---------------------------------------------------------------- server ----
source "$ROOT/benches/lib.sh"
bench_start_server "$RUN_DIR/server.log" --model-repository "$REPO" --ort-intra-op-threads "$INTRA_OP"
# shellcheck disable=SC2046
bench_wait_ready $(for m in $MODELS; do printf '%s:1 ' "$m"; done) || die "server did not become ready"

# ---------------------------------------------------------------- measure ---
ceiling() {  # when
    echo "run.sh: ORT ceiling ($1), batches $BATCHES, ${CEILING_SECONDS}s each" >&2
    "$PY" "$HERE/ort_ceiling.py" "$ONNX" --input-data "$DATA" --seq "$SEQ" --batches "$BATCHES" \
        --seconds "$CEILING_SECONDS" --intra-op-threads "$INTRA_OP" --label "$1" \
        -o "$RUN_DIR/ceiling-$1.json" >/dev/null
}

probe() { "$PY" benches/grpc/probe.py "$GRPC_PORT" "$SERVER_PID" "$1" 1; }

# After perf_analyzer exits, requests it left queued may still run: wait until the model's
# inference count stops moving so they do not eat into the next measurement.
drain() {  # model
    local prev="" cur
    for _ in $(seq 60); do
        cur="$(probe "$1" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["inference_count"])')"
        [[ "$cur" == "$prev" ]] && return 0
        prev="$cur"; sleep 0.5
    done
    echo "run.sh: [$1] server still busy after 30 s" >&2
}

NOTES="$RUN_DIR/pa-notes.txt"
: > "$NOTES"
# Machine-wide busy CPU ticks (user+nice+system+irq+softirq, all CPUs): with the server's
# (probe) and perf_analyzer's (GNU time) CPU it gives what *other* processes used meanwhile.
stat_busy() { awk '/^cpu /{printf "%d\n", $2+$3+$4+$7+$8}' /proc/stat; }
TIME_BIN=""
[[ -x /usr/bin/time ]] && /usr/bin/time -f "%U" true 2>/dev/null && TIME_BIN=/usr/bin/time
pa() {  # timefile args...: perf_analyzer, appending its user+sys CPU seconds to timefile
    local tf="$1"; shift
    if [[ -n "$TIME_BIN" ]]; then
        timeout 300 "$TIME_BIN" -a -o "$tf" -f "%U %S" "$PA" "$@"
    else
        timeout 300 "$PA" "$@"
    fi
}
perf() {  # model concurrency
    local m="$1" c="$2"
    local base="$RUN_DIR/pa-$m-c$c"
    # Every request: batch 1, seq 128, rows of input_data.json in turn.
    local common=(-i grpc -u "localhost:$GRPC_PORT" -m "$m" -x 1 -b 1
                  --input-data "$DATA" --shape "input_ids:$SEQ" --shape "attention_mask:$SEQ"
                  --shape "token_type_ids:$SEQ"
                  --concurrency-range "$c:$c" --measurement-interval "$MEASURE_MS"
                  --max-trials "$MAX_TRIALS" -f "$base.csv" --verbose-csv)
    echo "run.sh: [$m] perf_analyzer concurrency $c" >&2
    : > "$base.time"
    probe "$m" > "$base.probe" || true
    echo "$(stat_busy) $(date +%s.%N)" > "$base.stat"
    if ! pa "$base.time" "${common[@]}" -s "$STABILITY" >"$base.log" 2>&1; then
        echo "run.sh: [$m] c=$c not stable at ±${STABILITY}%; retrying at ±100%" >&2
        mv "$base.log" "$base.unstable.log"
        drain "$m"
        if pa "$base.time" "${common[@]}" -s 100 >"$base.log" 2>&1; then
            printf '%s\t%s\n' "$m c$c" "unstable at ±${STABILITY}%, measured at ±100%" >> "$NOTES"
        else
            printf '%s\t%s\n' "$m c$c" "perf_analyzer failed (see pa-$m-c$c.log)" >> "$NOTES"
            rm -f "$base.csv"
        fi
    fi
    echo "$(stat_busy) $(date +%s.%N)" >> "$base.stat"
    probe "$m" >> "$base.probe" || true
    drain "$m"
}

ceiling before
for m in $MODELS; do
    for c in $CONCURRENCIES; do perf "$m" "$c"; done
    kill -0 "$SERVER_PID" 2>/dev/null || die "server died during the $m runs (see $RUN_DIR/server.log)"
done
ceiling after
bench_stop_server
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RUN_DIR/machine.txt"
echo "wall_s=$((SECONDS - T0))" >> "$RUN_DIR/machine.txt"

"$PY" "$HERE/summarize.py" "$RUN_DIR"
echo "Raw results: $RUN_DIR"

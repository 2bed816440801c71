#!/usr/bin/env bash
# Dynamic batching benchmark (issue 3): fraud_mlp with and without dynamic batching, served
# through gRPC to perf_analyzer, next to the in-process ONNX Runtime ceiling at the best batch
# size, measured in the same run; then p99 under Poisson and uniform arrivals at 50 % and 80 %
# of the saturated rate.
#
#   cargo build --release && bash scripts/deps.sh test    # once; this script builds nothing
#   bash benches/batching/run.sh                          # about 6 minutes on 2 cores
#
# One server (target/release/switchyard) on free ports over a repository made here in the run
# directory, holding fraud_mlp version 2 twice:
#   fraud_mlp          no dynamic_batching (Triton's default scheduler: one request per execution)
#   fraud_mlp_batched  dynamic_batching { max_queue_delay_microseconds: $DELAY_US }
# both with max_batch_size 256 and one CPU instance (intra-op threads: $INTRA_OP).
# Steps:
#   1. ceiling: benches/grpc/ort_ceiling.py on the same model.onnx at batch 1..256 (before)
#   2. perf_analyzer -i grpc -b $CLIENT_BATCH at each of $CONCURRENCIES, both models
#   3. the saturated rate R = the batched model's best throughput in step 2; perf_analyzer
#      --request-rate-range at 0.5 R and 0.8 R with --request-distribution poisson, then constant
#   4. ceiling again (after); the table uses the best batch's mean of before and after
# Raw CSVs, JSON and the server log go to ${OUT:-/tmp/switchyard-bench}/batching-<run id>/.
#
# Knobs: CONCURRENCIES="1 8 32 128" MEASURE_MS=2000 INTRA_OP=1 DELAY_US=0 CLIENT_BATCH=1
#        CEILING_SECONDS=2 CEILING_BATCHES="1 8 32 64 128 256"
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
PA="$ROOT/scripts/perf_analyzer"
BIN="$ROOT/target/release/switchyard"
CONCURRENCIES="${CONCURRENCIES:-1 8 32 128}"
MEASURE_MS="${MEASURE_MS:-2000}"
INTRA_OP="${INTRA_OP:-1}"
DELAY_US="${DELAY_US:-0}"
CLIENT_BATCH="${CLIENT_BATCH:-1}"
CEILING_SECONDS="${CEILING_SECONDS:-2}"
CEILING_BATCHES="${CEILING_BATCHES:-1 8 32 64 128 256}"
MODEL_FILE="$ROOT/model_repository/fraud_mlp/2/model.onnx"

die() { echo "batching/run.sh: $*" >&2; exit 1; }
[[ -x "$BIN" ]] || die "missing $BIN (run: cargo build --release)"
[[ -x "$PY" ]] || die "missing .venv (run: bash scripts/deps.sh test)"
[[ -s .deps/ort-lib-path ]] || die "missing .deps/ort-lib-path (run: bash scripts/deps.sh test)"
[[ -f "$MODEL_FILE" ]] || die "missing $MODEL_FILE (run: bash scripts/gen_models.sh)"
ORT_LIB="$(cat .deps/ort-lib-path)"

RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="${OUT:-/tmp/switchyard-bench}/batching-$RUN_ID"
mkdir -p "$RUN_DIR"
echo "batching/run.sh: results in $RUN_DIR" >&2

# ------------------------------------------------------------------ repository ----
REPO="$RUN_DIR/repo"
for m in fraud_mlp fraud_mlp_batched; do
    mkdir -p "$REPO/$m/1"
    cp "$MODEL_FILE" "$REPO/$m/1/model.onnx"
    extra=""
    [[ $m == fraud_mlp_batched ]] && extra="dynamic_batching { max_queue_delay_microseconds: $DELAY_US }"
    cat > "$REPO/$m/config.pbtxt" <<EOF
name: "$m"
platform: "onnxruntime_onnx"
max_batch_size: 256
input [ { name: "features" data_type: TYPE_FP32 dims: [ 30 ] } ]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
$extra
EOF
done

# ------------------------------------------------------------------ server --------
source "$ROOT/benches/lib.sh"
bench_start_server "$RUN_DIR/server.log" --model-repository "$REPO" --ort-intra-op-threads "$INTRA_OP"
bench_wait_ready fraud_mlp:1 fraud_mlp_batched:1 || die "server not ready"

# ------------------------------------------------------------------ measure -------
ceiling() {  # when
    for b in $CEILING_BATCHES; do
        echo "batching/run.sh: ceiling batch $b ($1)" >&2
        "$PY" benches/grpc/ort_ceiling.py "$MODEL_FILE" --batch "$b" --seconds "$CEILING_SECONDS" \
            --intra-op-threads "$INTRA_OP" --label "fraud_mlp v2 batch $b $1" \
            -o "$RUN_DIR/ceiling-b$b-$1.json" > /dev/null
    done
}
pa() {  # name args...
    local name="$1"; shift
    echo "batching/run.sh: perf_analyzer $name" >&2
    if ! timeout 300 "$PA" -i grpc -u "localhost:$GRPC_PORT" -b "$CLIENT_BATCH" \
            --measurement-interval "$MEASURE_MS" -s 50 --max-trials 6 \
            -f "$RUN_DIR/pa-$name.csv" "$@" > "$RUN_DIR/pa-$name.log" 2>&1; then
        echo "batching/run.sh: $name not stable at ±50 %; retrying at ±100 %" >&2
        timeout 300 "$PA" -i grpc -u "localhost:$GRPC_PORT" -b "$CLIENT_BATCH" \
            --measurement-interval "$MEASURE_MS" -s 100 --max-trials 6 \
            -f "$RUN_DIR/pa-$name.csv" "$@" > "$RUN_DIR/pa-$name.log" 2>&1 \
            && echo "unstable" > "$RUN_DIR/pa-$name.unstable" \
            || echo "batching/run.sh: $name failed (see pa-$name.log)" >&2
    fi
}

ceiling before
for m in fraud_mlp fraud_mlp_batched; do
    for c in $CONCURRENCIES; do
        pa "$m-c$c" -m "$m" --concurrency-range "$c:$c"
    done
done
SAT="$("$PY" benches/batching/summarize.py "$RUN_DIR" --saturation)"
echo "batching/run.sh: saturated rate of fraud_mlp_batched: $SAT inf/s" >&2
for pct in 50 80; do
    rate=$(( SAT * pct / 100 / CLIENT_BATCH ))
    (( rate > 0 )) || rate=1
    for dist in poisson constant; do
        pa "rate$pct-$dist" -m fraud_mlp_batched --request-rate-range "$rate:$rate" \
            --request-distribution "$dist" --max-threads 64
    done
done
ceiling after

cat > "$RUN_DIR/run.json" <<EOF
{"run_id": "$RUN_ID", "date_utc": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
 "git": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server || echo -dirty)",
 "nproc": $(nproc), "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)",
 "intra_op": $INTRA_OP, "delay_us": $DELAY_US, "client_batch": $CLIENT_BATCH,
 "measure_ms": $MEASURE_MS, "ceiling_seconds": $CEILING_SECONDS, "saturated_rate": $SAT}
EOF
"$PY" benches/batching/summarize.py "$RUN_DIR" | tee "$RUN_DIR/summary.md"

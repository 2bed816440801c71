#!/usr/bin/env bash
# Shadow-mode overhead benchmark (issue 5): the primary's p50/p99 and throughput with no
# shadow, with a healthy shadow copying 100 % of requests, and with a shadow 10x slower than
# the primary — the three side by side in one server, in the same run.
#
#   cargo build --release && bash scripts/deps.sh test    # once; this script builds nothing
#   bash benches/shadow/run.sh                            # about 3 minutes on 2 cores
#
# One server over a repository made here: three copies of fraud_mlp (v1 and v2, one CPU
# instance each), each with `stable = 1` in deployment.toml:
#   fraud_plain   no shadow
#   fraud_shadow  [[shadow]] version 2, sample 100 %, max_in_flight 64, timeout 1000 ms
#   fraud_slow    the same, with version 2 slowed by fault injection (SLOW_MS, ~10x the
#                 primary's p50 at this load), timeout 1000 ms
# perf_analyzer -i grpc at a fixed request rate (RATE, below saturation, so latency is not
# queueing) and at concurrency 1, ROUNDS rounds with the three models interleaved.
# The server writes every compared pair to its divergence log (the default, log = "all") under
# $RUN_DIR/shadow-log, as it would in production.
# Output: a table on stdout; CSVs, logs and the server log under
# ${OUT:-/tmp/switchyard-bench}/shadow-<run id>/.
#
# Knobs: RATE=400 ROUNDS=2 MEASURE_MS=4000 SLOW_MS=5
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
source benches/lib.sh
bench_setup shadow
RATE="${RATE:-400}"
ROUNDS="${ROUNDS:-2}"
MEASURE_MS="${MEASURE_MS:-4000}"
SLOW_MS="${SLOW_MS:-5}"
die() { echo "shadow/run.sh: $*" >&2; exit 1; }
mkdir -p "$RUN_DIR/repo"

for m in fraud_plain fraud_shadow fraud_slow; do
    mkdir -p "$RUN_DIR/repo/$m/1" "$RUN_DIR/repo/$m/2"
    cp model_repository/fraud_mlp/1/model.onnx "$RUN_DIR/repo/$m/1/"
    cp model_repository/fraud_mlp/2/model.onnx "$RUN_DIR/repo/$m/2/"
    sed "s/^name: .*/name: \"$m\"/" model_repository/fraud_mlp/config.pbtxt > "$RUN_DIR/repo/$m/config.pbtxt"
    echo "stable = 1" > "$RUN_DIR/repo/$m/deployment.toml"
done
for m in fraud_shadow fraud_slow; do
    cat >> "$RUN_DIR/repo/$m/deployment.toml" <<EOT
[[shadow]]
version = 2
sample_percent = 100.0
max_in_flight = 64
timeout_ms = 1000
[shadow.compare]
output = "probabilities"
element = 1
threshold = 0.5
EOT
done
cat >> "$RUN_DIR/repo/fraud_slow/config.pbtxt" <<EOT
parameters { key: "switchyard_fault_latency_ms" value: { string_value: "$SLOW_MS" } }
parameters { key: "switchyard_fault_versions" value: { string_value: "2" } }
EOT

bench_start_server "$RUN_DIR/server.log" --model-repository "$RUN_DIR/repo" \
    --shadow-log-dir "$RUN_DIR/shadow-log"
bench_wait_ready fraud_plain:1 fraud_shadow:2 fraud_slow:2 || die "server not ready"
METRICS_PORT="$(grep -o 'Metrics Service at [0-9.:]*' "$RUN_DIR/server.log" | grep -o '[0-9]*$')"

pa() {  # name args...
    local name="$1"; shift
    echo "shadow/run.sh: perf_analyzer $name" >&2
    timeout 300 "$PA" -i grpc -u "localhost:$GRPC_PORT" --measurement-interval "$MEASURE_MS" \
        -s 100 --max-trials 4 --percentile 99 -f "$RUN_DIR/pa-$name.csv" "$@" \
        > "$RUN_DIR/pa-$name.log" 2>&1 || echo "shadow/run.sh: $name failed (see pa-$name.log)" >&2
}
for r in $(seq "$ROUNDS"); do
    for m in fraud_plain fraud_shadow fraud_slow; do
        pa "$m-rate-r$r" -m "$m" --request-rate-range "$RATE:$RATE" --max-threads 32
        pa "$m-c1-r$r" -m "$m" --concurrency-range 1:1
    done
done
curl -s "localhost:$METRICS_PORT/metrics" | grep '^switchyard_shadow_requests_total' > "$RUN_DIR/shadow-counters.txt" || true
"$PY" benches/shadow/summarize.py "$RUN_DIR"

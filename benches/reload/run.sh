#!/usr/bin/env bash
# Reload memory benchmark (issue 4): load and unload a model CYCLES times under light traffic
# and record the server's RSS and the traffic's latency at the start and at the end. Both must
# stay flat (Triton issues #5841, #5944 report growth over repeated loads).
#
#   cargo build --release && bash scripts/deps.sh test    # once; this script builds nothing
#   bash benches/reload/run.sh                            # about 2 minutes on 2 cores
#
# One server (target/release/switchyard, --model-control-mode=explicit) over a repository made
# in the run directory holding `simple` and `fraud_mlp` (v1 and v2, 2 instances each). Light
# traffic: one gRPC client sending `simple` requests back to back with a RATE_HZ pause, for the
# whole run. Each cycle: load fraud_mlp (both versions start, engines load, instance threads
# start), send 4 requests to it, unload it. RSS (VmRSS from /proc) is sampled after every
# cycle; the traffic's p50/p99 are taken over the first and the last WINDOW cycles.
# Output: a table on stdout and JSON + server log under ${OUT:-/tmp/switchyard-bench}/reload-<id>/.
#
# Knobs: CYCLES=500 WINDOW=50 RATE_HZ=50
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
source benches/lib.sh
bench_setup reload
RUN="$RUN_DIR"
CYCLES="${CYCLES:-500}"
WINDOW="${WINDOW:-50}"
RATE_HZ="${RATE_HZ:-50}"
mkdir -p "$RUN/repo"

cp -r model_repository/simple "$RUN/repo/"
cp -r model_repository/fraud_mlp "$RUN/repo/"
# Two instances per version: each cycle starts and stops 4 engines and 4 instance threads.
sed -i 's/count: 1/count: 2/' "$RUN/repo/fraud_mlp/config.pbtxt"
grep -q 'count: 2' "$RUN/repo/fraud_mlp/config.pbtxt" || { echo "cannot set 2 instances" >&2; exit 1; }

bench_start_server "$RUN/server.log" --model-repository "$RUN/repo" \
    --model-control-mode explicit --load-model simple ${SERVER_ARGS:-}
bench_wait_ready simple:1

echo "reload benchmark: $CYCLES cycles, machine: $(nproc) cores, $(uname -r), run dir $RUN"
"$PY" benches/reload/cycle.py --grpc "localhost:$GRPC_PORT" --pid "$SERVER_PID" \
    --cycles "$CYCLES" --window "$WINDOW" --rate-hz "$RATE_HZ" --json "$RUN/result.json"

#!/usr/bin/env bash
# Canary rollback time (issue 5): how long after a gate breach the candidate still receives
# new requests. fraud_mlp v2 is the canary at WEIGHT % with every execution failing (fault
# injection); its error-rate gate (min_requests = MIN) rolls it back. CLIENTS threads send
# unversioned requests back to back and record when each was sent and which version answered.
# The breach time comes from the server (GET /v2/models/fraud_mlp/deployment). Reported:
# canary requests served before the breach, canary requests *sent after* it (those already
# routed when the weight went to zero), and the time from the breach to the last canary
# request's start, over REPEATS fresh servers.
#
#   cargo build --release && bash scripts/deps.sh test    # once
#   bash benches/canary/run.sh                            # about 30 seconds
#
# Knobs: WEIGHT=50 MIN=20 CLIENTS=8 REQUESTS=3000 REPEATS=5
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
source benches/lib.sh
bench_setup canary
WEIGHT="${WEIGHT:-50}" MIN="${MIN:-20}" CLIENTS="${CLIENTS:-8}" REQUESTS="${REQUESTS:-3000}" REPEATS="${REPEATS:-5}"
echo "canary rollback: weight $WEIGHT %, gate min_requests $MIN, $CLIENTS clients, $(nproc) cores" >&2
for r in $(seq "$REPEATS"); do
    repo="$RUN_DIR/repo$r"
    mkdir -p "$repo"
    cp -r model_repository/fraud_mlp "$repo/"
    cat >> "$repo/fraud_mlp/config.pbtxt" <<EOT
parameters { key: "switchyard_fault_error_rate" value: { string_value: "1.0" } }
parameters { key: "switchyard_fault_versions" value: { string_value: "2" } }
EOT
    cat > "$repo/fraud_mlp/deployment.toml" <<EOT
stable = 1
[canary]
version = 2
weight = $WEIGHT.0
[canary.gates]
min_requests = $MIN
max_error_rate = 0.05
EOT
    bench_start_server "$RUN_DIR/server$r.log" --model-repository "$repo"
    bench_wait_ready fraud_mlp:1 fraud_mlp:2
    HTTP_PORT="$(grep -o 'HTTPService at [0-9.:]*' "$RUN_DIR/server$r.log" | grep -o '[0-9]*$')"
    "$PY" benches/canary/drive.py --grpc "localhost:$GRPC_PORT" --http "localhost:$HTTP_PORT" \
        --clients "$CLIENTS" --requests "$REQUESTS" --json "$RUN_DIR/run$r.json"
    bench_stop_server
done
"$PY" benches/canary/drive.py --summarize "$RUN_DIR"

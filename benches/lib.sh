# Shared by the benches/*/run.sh scripts (source it; it defines functions only).
#
#   bench_free_ports                 -> prints three free loopback ports (gRPC, HTTP, metrics)
#   bench_start_server LOG ARGS...   -> starts $BIN with ARGS (ORT_DYLIB_PATH=$ORT_LIB) on free
#                                       ports, logging to LOG; sets SERVER_PID and GRPC_PORT and
#                                       stops the server (SIGTERM, then SIGKILL) on exit
#   bench_wait_ready MODEL:VERSION...-> waits (120 s at most) until the server and those
#                                       versions are ready; fails with the log's tail otherwise
#   bench_setup NAME                 -> sets PY, PA, BIN, ORT_LIB and RUN_DIR
#                                       (${OUT:-/tmp/switchyard-bench}/NAME-<UTC time>, created)
#                                       and stops with a hint if the build or deps are missing
# The server functions need $BIN, $ORT_LIB and $PY (a Python with tritonclient): bench_setup
# sets them, or the caller does.

bench_setup() {
    PY="$ROOT/.venv/bin/python"
    PA="$ROOT/scripts/perf_analyzer"
    BIN="$ROOT/target/release/switchyard"
    [[ -x "$BIN" ]] || { echo "$1: missing $BIN (run: cargo build --release)" >&2; exit 1; }
    [[ -x "$PY" && -s "$ROOT/.deps/ort-lib-path" ]] \
        || { echo "$1: missing .venv or .deps (run: bash scripts/deps.sh test)" >&2; exit 1; }
    ORT_LIB="$(cat "$ROOT/.deps/ort-lib-path")"
    RUN_DIR="${OUT:-/tmp/switchyard-bench}/$1-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$RUN_DIR"
    echo "$1: results in $RUN_DIR" >&2
}

bench_free_ports() {
    "$PY" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

bench_stop_server() {
    if [[ -n "${SERVER_PID:-}" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench: server did not stop on SIGTERM; killing" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}

bench_start_server() {
    local log="$1"; shift
    local http metrics
    read -r GRPC_PORT http metrics < <(bench_free_ports)
    BENCH_SERVER_LOG="$log"
    ORT_DYLIB_PATH="$ORT_LIB" ${BENCH_ENV:-} "$BIN" --grpc-port "$GRPC_PORT" --http-port "$http" \
        --metrics-port "$metrics" "$@" > "$log" 2>&1 &
    SERVER_PID=$!
    trap bench_stop_server EXIT
    trap 'exit 130' INT TERM
}

bench_wait_ready() {
    "$PY" - "$GRPC_PORT" "$SERVER_PID" "$@" <<'EOF' || { tail -20 "$BENCH_SERVER_LOG" >&2; echo "bench: server did not become ready" >&2; return 1; }
import os, sys, time
import tritonclient.grpc as g
port, pid, models = sys.argv[1], int(sys.argv[2]), [m.split(":") for m in sys.argv[3:]]
c = g.InferenceServerClient(f"localhost:{port}")
deadline = time.time() + 120
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited")
    try:
        if c.is_server_ready() and all(c.is_model_ready(m, v) for m, v in models):
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit("timeout")
EOF
}

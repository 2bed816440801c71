#!/usr/bin/env bash
# gRPC serving vs in-process ONNX Runtime ceiling (issue 2).
#
#   bash benches/grpc/run.sh
#
# Builds nothing. Needs `cargo build --release` (target/release/switchyard) and
# `bash scripts/deps.sh test` (.venv with onnxruntime + tritonclient, perf_analyzer).
#
# For each model (simple, fraud_mlp v2), batch 1:
#   ort_ceiling.py (before) -> perf_analyzer -i grpc at each concurrency -> ort_ceiling.py (after)
# against one switchyard server started here on free ports and stopped at the end.
# Prints a Markdown table; raw perf_analyzer CSVs, ceiling JSONs, machine facts and
# the server log go to $OUT/<run id>/ (OUT defaults to /tmp/switchyard-bench;
# $OUT/latest points at the newest run).
#
# Knobs (environment):
#   CONCURRENCIES="1 4 16"   perf_analyzer --concurrency-range N:N for each N
#   MEASURE_MS=1500          perf_analyzer --measurement-interval (time windows)
#   STABILITY=50             perf_analyzer --stability-percentage (retried once at 100 if unstable)
#   MAX_TRIALS=6             perf_analyzer --max-trials
#   CEILING_SECONDS=3        timed loop of each ort_ceiling.py run
#   INTRA_OP=0               server --ort-intra-op-threads and ceiling --intra-op-threads (0 = ORT default)
#   MODELS="simple fraud_mlp"   model names; the served version is pinned (see VERSION_OF below)
#
# Figures from different runs (other machines, other load) are not comparable;
# the served/ceiling ratios within one run are what matter.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
cd "$ROOT"
HERE="benches/grpc"
PY="$ROOT/.venv/bin/python"
PA="$ROOT/scripts/perf_analyzer"
BIN="$ROOT/target/release/switchyard"
REPO="$ROOT/model_repository"

CONCURRENCIES="${CONCURRENCIES:-1 4 16}"
MEASURE_MS="${MEASURE_MS:-1500}"
STABILITY="${STABILITY:-50}"
MAX_TRIALS="${MAX_TRIALS:-6}"
CEILING_SECONDS="${CEILING_SECONDS:-3}"
INTRA_OP="${INTRA_OP:-0}"
MODELS="${MODELS:-simple fraud_mlp}"
# perf_analyzer and the ceiling must run the same file: pin the version served.
declare -A VERSION_OF=([simple]=1 [fraud_mlp]=2)

die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- checks ----
missing=()
[[ -x "$BIN" ]] || missing+=("$BIN (run: cargo build --release)")
[[ -s .deps/ort-lib-path && -f "$(cat .deps/ort-lib-path 2>/dev/null)" ]] \
    || missing+=(".deps/ort-lib-path / libonnxruntime.so (run: bash scripts/deps.sh test)")
[[ -x .deps/perf_analyzer/perf_analyzer ]] || missing+=("perf_analyzer (run: bash scripts/deps.sh test)")
[[ -x "$PY" ]] && "$PY" -c 'import onnxruntime, numpy, tritonclient.grpc' 2>/dev/null \
    || missing+=(".venv with onnxruntime, numpy, tritonclient (run: bash scripts/deps.sh test)")
if ((${#missing[@]})); then
    printf 'run.sh: missing prerequisites (this script builds nothing):\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
stale="$(find server Cargo.toml Cargo.lock -newer "$BIN" -type f 2>/dev/null | head -3 || true)"
if [[ -n "$stale" ]]; then
    echo "run.sh: WARNING: sources newer than $BIN (binary may be stale; run cargo build --release):" >&2
    echo "$stale" | sed 's/^/  /' >&2
fi
ORT_LIB="$(cat .deps/ort-lib-path)"
for m in $MODELS; do
    v="${VERSION_OF[$m]:-1}"
    [[ -f "$REPO/$m/$v/model.onnx" ]] || die "no $REPO/$m/$v/model.onnx"
done

# ---------------------------------------------------------------- run dir ---
OUT_BASE="${OUT:-/tmp/switchyard-bench}"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="$OUT_BASE/$RUN_ID"
mkdir -p "$RUN_DIR"
ln -sfn "$RUN_ID" "$OUT_BASE/latest"
echo "run.sh: results in $RUN_DIR" >&2

# CPU busy fraction (all CPUs) over 1 s, from /proc/stat: a view of the load
# others put on the machine right before/after we measure.
cpu_busy() {
    "$PY" - <<'EOF'
import time
def snap():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle
t0, i0 = snap(); time.sleep(1.0); t1, i1 = snap()
print(f"{100.0 * (1 - (i1 - i0) / max(1, t1 - t0)):.0f}%")
EOF
}
top_procs() { ps -eo pid,pcpu,etimes,comm --sort=-pcpu 2>/dev/null | head -6 || true; }

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_START="$(cpu_busy)"
top_procs > "$RUN_DIR/procs-start.txt"
# Machine-wide busy CPU time (user+nice+system+irq+softirq, all CPUs) at the start of the
# measurements; at the end, minus the CPU time of everything this script ran (bash `times`,
# children reaped by then), it gives the CPU that *other* processes used meanwhile.
stat_busy() { awk '/^cpu /{printf "%d\n", $2+$3+$4+$7+$8}' /proc/stat; }
STAT_BUSY0="$(stat_busy)"
WALL0="$(date +%s.%N)"
times > "$RUN_DIR/.times0"   # not in $(...): a subshell's `times` would not see our children
CHILD_CPU0="$(tail -1 "$RUN_DIR/.times0")"

# ---------------------------------------------------------------- server ----
source "$ROOT/benches/lib.sh"
bench_start_server "$RUN_DIR/server.log" --model-repository "$REPO" --ort-intra-op-threads "$INTRA_OP"

# Wait until the server and every model we use report ready.
READY_MODELS="$(for m in $MODELS; do printf '%s:%s ' "$m" "${VERSION_OF[$m]:-1}"; done)"
# shellcheck disable=SC2086
bench_wait_ready $READY_MODELS || die "server did not become ready"

# ---------------------------------------------------------------- machine ---
export BIN RUN_ID RUN_DIR LOAD_START BUSY_START GRPC_PORT INTRA_OP MEASURE_MS STABILITY MAX_TRIALS \
       CEILING_SECONDS CONCURRENCIES MODELS ORT_LIB
"$PY" - <<'EOF'
import json, os, platform, subprocess
import onnxruntime as ort
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
cpu = None
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
rev = sh("git", "rev-parse", "--short", "HEAD")
dirty = sh("git", "status", "--porcelain", "--untracked-files=no")
intra = int(os.environ["INTRA_OP"])
py_capi = os.path.dirname(ort.capi.__file__) if hasattr(ort, "capi") else None
m = {
    "run_id": os.environ["RUN_ID"],
    "date_utc": sh("date", "-u", "+%Y-%m-%d %H:%M:%S UTC"),
    "hostname": platform.node(),
    "nproc": os.cpu_count(),
    "nproc_available": len(os.sched_getaffinity(0)),
    "cpu_model": cpu,
    "kernel": platform.release(),
    "git_rev": (rev or "?") + ("-dirty" if dirty else ""),
    "onnxruntime": ort.__version__,
    "server_binary": os.environ["BIN"],
    "server_binary_mtime_utc": sh("date", "-u", "-r", os.environ["BIN"], "+%Y-%m-%d %H:%M:%S UTC"),
    "server_binary_sha256": (sh("sha256sum", os.environ["BIN"]) or "?")[:16],
    "server_ort_lib": os.environ["ORT_LIB"],
    "python_ort_capi_dir": py_capi,
    "same_ort_lib": bool(py_capi) and os.path.dirname(os.environ["ORT_LIB"]) == py_capi,
    "intra_op_threads": intra,
    "intra_op_threads_desc": "ORT default" if intra == 0 else str(intra),
    "measure_ms": int(os.environ["MEASURE_MS"]),
    "stability_pct": int(os.environ["STABILITY"]),
    "max_trials": int(os.environ["MAX_TRIALS"]),
    "ceiling_seconds": float(os.environ["CEILING_SECONDS"]),
    "concurrencies": [int(x) for x in os.environ["CONCURRENCIES"].split()],
    "models": os.environ["MODELS"].split(),
    "grpc_port": int(os.environ["GRPC_PORT"]),
    "loadavg_start": os.environ["LOAD_START"],
    "cpu_busy_start_1s": os.environ["BUSY_START"],
}
json.dump(m, open(os.path.join(os.environ["RUN_DIR"], "machine.json"), "w"), indent=2)
if not m["same_ort_lib"]:
    print(f"run.sh: WARNING: server ORT lib {m['server_ort_lib']} is not the Python onnxruntime's ({py_capi})")
EOF

# ---------------------------------------------------------------- measure ---
ceiling() {  # model version when
    local m="$1" v="$2" when="$3"
    echo "run.sh: [$m] ORT ceiling ($when), ${CEILING_SECONDS}s" >&2
    "$PY" "$HERE/ort_ceiling.py" "$REPO/$m/$v/model.onnx" --batch 1 --seconds "$CEILING_SECONDS" \
        --intra-op-threads "$INTRA_OP" --label "$m v$v $when" -o "$RUN_DIR/ceiling-$m-$when.json" >/dev/null
}

NOTES="$RUN_DIR/pa-notes.txt"
: > "$NOTES"
# Client CPU time of perf_analyzer via GNU time, when installed.
TIME_BIN=""
[[ -x /usr/bin/time ]] && /usr/bin/time -f "%U" true 2>/dev/null && TIME_BIN=/usr/bin/time
pa() {  # timefile args...: run perf_analyzer, appending its user+sys CPU seconds to timefile
    local tf="$1"; shift
    if [[ -n "$TIME_BIN" ]]; then
        timeout 120 "$TIME_BIN" -a -o "$tf" -f "%U %S" "$PA" "$@"
    else
        timeout 120 "$PA" "$@"
    fi
}
perf() {  # model version concurrency
    local m="$1" v="$2" c="$3"
    local base="$RUN_DIR/pa-$m-c$c"
    local common=(-i grpc -u "localhost:$GRPC_PORT" -m "$m" -x "$v" -b 1
                  --concurrency-range "$c:$c" --measurement-interval "$MEASURE_MS"
                  --max-trials "$MAX_TRIALS" -f "$base.csv" --verbose-csv)
    echo "run.sh: [$m] perf_analyzer concurrency $c" >&2
    : > "$base.time"
    "$PY" "$HERE/probe.py" "$GRPC_PORT" "$SERVER_PID" "$m" "$v" > "$base.probe" || true
    if ! pa "$base.time" "${common[@]}" -s "$STABILITY" >"$base.log" 2>&1; then
        echo "run.sh: [$m] c=$c not stable at ±${STABILITY}%; retrying at ±100%" >&2
        mv "$base.log" "$base.unstable.log"
        if pa "$base.time" "${common[@]}" -s 100 >"$base.log" 2>&1; then
            echo "pa-$m-c$c.csv	unstable at ±${STABILITY}%, measured with --stability-percentage 100" >> "$NOTES"
        else
            echo "pa-$m-c$c.csv	perf_analyzer failed (see pa-$m-c$c.log)" >> "$NOTES"
            rm -f "$base.csv"
        fi
    fi
    "$PY" "$HERE/probe.py" "$GRPC_PORT" "$SERVER_PID" "$m" "$v" >> "$base.probe" || true
}

for m in $MODELS; do
    v="${VERSION_OF[$m]:-1}"
    ceiling "$m" "$v" before
    for c in $CONCURRENCIES; do perf "$m" "$v" "$c"; done
    ceiling "$m" "$v" after
    kill -0 "$SERVER_PID" 2>/dev/null || die "server died during the $m runs (see $RUN_DIR/server.log)"
done

bench_stop_server
STAT_BUSY1="$(stat_busy)"
WALL1="$(date +%s.%N)"
times > "$RUN_DIR/.times1"
CHILD_CPU1="$(tail -1 "$RUN_DIR/.times1")"
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_END="$(cpu_busy)"
top_procs > "$RUN_DIR/procs-end.txt"

export LOAD_END BUSY_END NOTES STAT_BUSY0 STAT_BUSY1 WALL0 WALL1 CHILD_CPU0 CHILD_CPU1
"$PY" - <<'EOF'
import json, os
d = os.environ["RUN_DIR"]
p = os.path.join(d, "machine.json")
m = json.load(open(p))
m["loadavg_end"] = os.environ["LOAD_END"]
m["cpu_busy_end_1s"] = os.environ["BUSY_END"]
def secs(t):  # bash `times` field like 1m2.345s
    mins, _, rest = t.partition("m")
    return 60 * float(mins) + float(rest.rstrip("s"))
def child_cpu(line):
    return sum(secs(x) for x in line.split())
wall = float(os.environ["WALL1"]) - float(os.environ["WALL0"])
machine = (int(os.environ["STAT_BUSY1"]) - int(os.environ["STAT_BUSY0"])) / os.sysconf("SC_CLK_TCK")
ours = child_cpu(os.environ["CHILD_CPU1"]) - child_cpu(os.environ["CHILD_CPU0"])
m["measure_wall_s"] = round(wall, 1)
m["machine_busy_cpu_s"] = round(machine, 1)
m["our_cpu_s"] = round(ours, 1)
m["other_cpu_s"] = round(max(0.0, machine - ours), 1)
m["other_cores_avg"] = round(max(0.0, machine - ours) / wall, 2) if wall > 0 else None
json.dump(m, open(p, "w"), indent=2)
notes = {}
for line in open(os.environ["NOTES"]):
    k, _, v = line.rstrip("\n").partition("\t")
    if k:
        notes[k] = v
json.dump(notes, open(os.path.join(d, "pa-notes.json"), "w"), indent=2)
EOF

"$PY" "$HERE/summarize.py" "$RUN_DIR"
echo
"$PY" - <<'EOF2'
import json, os
m = json.load(open(os.path.join(os.environ["RUN_DIR"], "machine.json")))
print(f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; {m['date_utc']}; load avg start {m['loadavg_start']} / end "
      f"{m['loadavg_end']}; other processes used {m['other_cores_avg']} cores on average during the run.")
EOF2
echo "Raw results: $RUN_DIR"

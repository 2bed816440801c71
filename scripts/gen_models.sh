#!/usr/bin/env bash
# (Re)generate Switchyard's example model repository, model_repository/.
#
#   bash scripts/gen_models.sh [--repo DIR] [--no-verify]
#
# Creates the private virtualenv .venv-gen (git-ignored) if it is missing,
# installs the pinned packages below into it (a no-op when they are already
# there), then runs scripts/gen_models.py, which rewrites simple,
# simple_string, simple_identity and fraud_mlp, checks each with onnxruntime
# and prints sha256 sums.  Idempotent: re-running gives byte-identical files.
# Needs python3 (3.11 preferred) with venv/pip, and PyPI.  Arguments are
# passed on to gen_models.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-gen"

# Pinned versions (everything gen_models.py imports, plus their own deps, so
# that the trained weights and the ONNX bytes are reproducible).
PACKAGES=(
  numpy==2.4.6
  scipy==1.17.1
  scikit-learn==1.9.1
  joblib==1.6.0
  threadpoolctl==3.8.0
  onnx==1.23.2
  protobuf==7.36.2
  ml_dtypes==0.6.0
  typing_extensions==4.16.0
  skl2onnx==1.20.0
  onnxruntime==1.32.0
  flatbuffers==25.12.19
  packaging==26.4
)

pick_python() {
  local c
  for c in "${PYTHON:-}" python3.11 python3; do
    if [[ -n "$c" ]] && command -v "$c" >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  echo "gen_models.sh: no python3 found (set PYTHON=...)" >&2
  return 1
}

start=$(date +%s)

# A venv whose interpreter no longer runs (e.g. python upgraded) is rebuilt.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "gen_models.sh: $VENV is broken, recreating it"
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  PY="$(pick_python)"
  echo "gen_models.sh: creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
# Keep the venv out of git whatever the repository's .gitignore says.
[[ -f "$VENV/.gitignore" ]] || echo '*' > "$VENV/.gitignore"

# Skip pip entirely when the pinned set is already installed.
STAMP="$VENV/.gen_models-packages"
WANT="$(printf '%s\n' "${PACKAGES[@]}")"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "gen_models.sh: installing pinned packages into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "${PACKAGES[@]}"
  printf '%s\n' "$WANT" > "$STAMP"
fi

# One thread for BLAS/OpenMP: trained weights must not depend on core count.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1

"$VENV/bin/python" "$ROOT/scripts/gen_models.py" "$@"
echo "gen_models.sh: finished in $(( $(date +%s) - start ))s"

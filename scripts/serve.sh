#!/usr/bin/env bash
# Starts Switchyard on model_repository/ (gRPC on :8001). Installs ONNX Runtime's shared
# library from PyPI and builds the release binary first if needed. Extra flags are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh runtime >/dev/null
cargo build --release --locked
ORT_DYLIB_PATH="$(cat .deps/ort-lib-path)"
export ORT_DYLIB_PATH
exec target/release/switchyard --model-repository model_repository "$@"

#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: installs what the tests need (Python clients,
# perf_analyzer, ONNX Runtime), checks formatting and lints, runs the Rust unit tests, builds
# the release binary and drives it with tritonclient and perf_analyzer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies (scripts/deps.sh test)"
bash scripts/deps.sh test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit tests)"
cargo test --workspace --locked

step "cargo build --release"
cargo build --release --locked

step "integration tests (tritonclient + perf_analyzer against the real binary)"
.venv/bin/python -m pytest tests/python -q

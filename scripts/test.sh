#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (the ones that
# need Docker included; they expect a running dockerd — see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

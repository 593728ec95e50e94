#!/usr/bin/env bash
# Builds berth-init, the static guest init of the microVM runtime, and puts
# it next to the berth binary (target/release/berth-init), where
# `berth server --runtime microvm` looks for it (else pass --microvm-init).
# Static glibc (+crt-static); no musl target is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p berth-init --target "$target" --target-dir target/berth-init
mkdir -p target/release
cp target/berth-init/$target/release/berth-init target/release/berth-init
if command -v file >/dev/null 2>&1 && ! file target/release/berth-init | grep -q static; then
    echo "build-init: berth-init is not static" >&2
    exit 1
fi
echo "target/release/berth-init"

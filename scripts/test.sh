#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (the ones that
# need Docker included). It first makes the machine ready with
# scripts/ensure-deps.sh (packages, dockerd, the local Node image), so it
# works by itself on a fresh Debian 12 machine when run as root.
# CI=true turns every missing tool into a failure (.ci/run sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BERTH_SKIP_DEPS:-}" != 1 ]; then
    ./scripts/ensure-deps.sh
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

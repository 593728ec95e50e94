#!/usr/bin/env bash
# From a fresh Debian machine with Rust to a running berth: installs
# docker.io and git when missing, starts dockerd when it is not running,
# builds berth in release mode and starts `berth server` with its embedded
# defaults (SQLite in ./berth-data, API on 127.0.0.1:7070, edge proxy on
# 127.0.0.1:8080, apps at *.localhost). Extra arguments go to `berth server`.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v git >/dev/null 2>&1 || need+=(git)
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! docker info >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl start docker
    else
        ($SUDO dockerd >/tmp/berth-dockerd.log 2>&1 &)
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
cargo build --release --bin berth
exec ./target/release/berth server "$@"

#!/usr/bin/env bash
# Makes this machine ready for the whole test suite; ./scripts/test.sh runs
# it first, so the README's one test command works on a fresh Debian 12
# machine by itself (.ci/run only sets CI=true and calls test.sh).
#
# - installs the packages the tests use when they are missing (with apt-get,
#   when run as root; otherwise it says what to install);
# - starts dockerd when the engine does not answer (as root);
# - builds the local Node base image `local/node:18` (no registry can be
#   reached by the tests) with scripts/make-node-image.sh.
#
# Idempotent and quick when everything is there. Under CI=true anything it
# cannot provide is an error (exit 1): a test must never pass for lack of
# its tool. Set BERTH_SKIP_DEPS=1 to skip this script entirely.
#
# Other parts append their own packages below (one `need_*` line each).
set -euo pipefail
cd "$(dirname "$0")/.."

ci=false
[ "${CI:-}" = "true" ] && ci=true
root=false
[ "$(id -u)" = 0 ] && root=true
problems=()

say() { echo "ensure-deps: $*"; }

need=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
need_file() { [ -e "$1" ] || need+=("$2"); }

# What the tests use (package per missing command or file).
need_cmd dockerd docker.io
need_cmd docker docker.io
need_file /bin/busybox busybox-static
need_cmd git git
need_cmd curl curl
need_file /usr/bin/chromium chromium
need_file /usr/bin/chromedriver chromium-driver
need_file /usr/sbin/sshd openssh-server
need_cmd ssh-keygen openssh-client
need_cmd pebble pebble
need_cmd pebble-challtestsrv pebble
need_cmd openssl openssl
# ACME DNS-01: a real BIND (named) taking RFC 2136 updates signed with TSIG.
need_file /usr/sbin/named bind9
need_file /usr/bin/docker-registry docker-registry
need_cmd mmdebstrap mmdebstrap
# microVM runtime tests: QEMU, a guest kernel, mkfs.ext4 -d (e2fsprogs).
need_cmd qemu-system-x86_64 qemu-system-x86
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)
need_cmd mkfs.ext4 e2fsprogs
# Volumes on microVMs: QEMU's virtiofsd (Debian 12: in qemu-system-common).
if ! command -v virtiofsd >/dev/null 2>&1 && [ ! -x /usr/libexec/virtiofsd ]; then
  need_file /usr/lib/qemu/virtiofsd qemu-system-common
fi
# The two-node test swarm (scripts/swarm-testnet.sh): a registry, network
# namespaces (ip, nsenter, unshare), python3 for the htpasswd hash.
need_cmd docker-registry docker-registry
need_cmd ip iproute2
need_cmd nsenter util-linux
need_cmd unshare util-linux
need_cmd python3 python3
# The store contract on a real PostgreSQL: the tests start a private cluster
# with initdb/postgres (as the postgres user when root), or use
# BERTH_TEST_POSTGRES_URL.
need_file /usr/lib/postgresql/15/bin/initdb postgresql
# S3 backups (--backup-url): moto's S3 server, from PyPI into its own venv
# (/opt/berth-moto; Debian's python is externally managed), below.
moto_found() { command -v moto_server >/dev/null 2>&1 || [ -x /opt/berth-moto/bin/moto_server ]; }
moto_found || python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The API document's check: openapi-spec-validator, from PyPI into its own
# venv (/opt/berth-openapi), below.
oasv_found() { command -v openapi-spec-validator >/dev/null 2>&1 || [ -x /opt/berth-openapi/bin/openapi-spec-validator ]; }
oasv_found || python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# The /metrics page's check: prometheus_client's OpenMetrics parser, from
# PyPI into its own venv (/opt/berth-metrics), below.
promc_found() { /opt/berth-metrics/bin/python -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; }
promc_found || python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if ((${#need[@]})); then
    # One entry per package.
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    if $root && command -v apt-get >/dev/null 2>&1; then
        say "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        if ! apt-get install -y -qq "${need[@]}" >/dev/null; then
            problems+=("apt-get install ${need[*]} failed")
        fi
    else
        problems+=("missing packages: ${need[*]} (as root: apt-get install ${need[*]})")
    fi
fi

# A tool from PyPI in its own venv: venv_install <what> <venv dir> <pip spec>.
venv_install() {
    local what=$1 dir=$2 spec=$3
    if $root && python3 -m venv "$dir" >/dev/null && "$dir/bin/pip" install -q "$spec"; then
        say "installed $what in $dir"
    else
        problems+=("$what is missing (as root: python3 -m venv $dir && $dir/bin/pip install '$spec')")
    fi
}
# moto_server for the S3 backup test, openapi-spec-validator for the API
# document's test, prometheus_client for the /metrics page's test.
moto_found || venv_install moto_server /opt/berth-moto 'moto[server]'
oasv_found || venv_install openapi-spec-validator /opt/berth-openapi openapi-spec-validator
promc_found || venv_install prometheus-client /opt/berth-metrics prometheus-client

# The Docker engine.
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
    if $root && command -v dockerd >/dev/null 2>&1; then
        say "starting dockerd (log: /tmp/berth-dockerd.log)"
        (dockerd >/tmp/berth-dockerd.log 2>&1 &)
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        if ! docker info >/dev/null 2>&1; then
            tail -20 /tmp/berth-dockerd.log >&2 || true
            problems+=("dockerd did not start")
        fi
    else
        problems+=("the Docker engine does not answer (start dockerd, or run this as root)")
    fi
fi

# The local Node base image of the auto-detected Node app tests.
if docker info >/dev/null 2>&1 && ! docker image inspect local/node:18 >/dev/null 2>&1; then
    if ! ./scripts/make-node-image.sh local/node:18; then
        problems+=("local/node:18 could not be built (scripts/make-node-image.sh)")
    fi
fi

if ((${#problems[@]})); then
    for p in "${problems[@]}"; do
        say "$p" >&2
    done
    if $ci; then
        say "CI=true: the tests that need these would fail; stopping" >&2
        exit 1
    fi
    say "continuing (CI is not true): tests that need what is missing will fail or skip with a notice" >&2
fi
exit 0

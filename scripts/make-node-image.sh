#!/bin/sh
# Makes a local Node.js base image (default `local/node:18`) without pulling
# from any registry: a Debian bookworm root filesystem with nodejs and npm from
# Debian's own packages (Node 18), built with mmdebstrap and imported into the
# Docker engine. Idempotent: does nothing when the image already exists.
#
# Usage: scripts/make-node-image.sh [IMAGE]   (default local/node:18)
# Env:   MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm)
set -eu

IMAGE="${1:-local/node:18}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "make-node-image: $IMAGE already exists, nothing to do"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "make-node-image: installing mmdebstrap"
        apt-get update -qq && apt-get install -y mmdebstrap >/dev/null
    else
        echo "make-node-image: mmdebstrap is missing (apt-get install mmdebstrap)" >&2
        exit 1
    fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM

echo "make-node-image: building $SUITE root filesystem with nodejs and npm"
mmdebstrap --variant=apt --include=nodejs,npm,ca-certificates \
    "$SUITE" "$tmp/rootfs.tar" "$MIRROR"

echo "make-node-image: importing as $IMAGE"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV NODE_ENV=production' \
    --change 'WORKDIR /app' \
    --change 'CMD ["node"]' \
    "$tmp/rootfs.tar" "$IMAGE" >/dev/null

echo "make-node-image: $IMAGE ready ($(docker run --rm "$IMAGE" node --version))"

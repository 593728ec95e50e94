#!/usr/bin/env bash
# A two-node Docker Swarm on this machine, for tests: every node is its own
# dockerd in its own network namespace; the machine's engine is never touched.
#
#   swarm-testnet.sh up <dir> [<octet>]   create it; writes <dir>/env (sourceable);
#                                         SWARM_REGISTRY_AUTH=none: no registry auth
#   swarm-testnet.sh down <dir>           tear down everything `up` made (idempotent)
#
# Layout (subnet 10.231.<octet>.0/24, octet default 0; one subnet, no routing):
#
#   root netns  ── veth ──┐
#   (10.231.X.1, berth)   │   hub netns: bridge br0 (no dockerd in it, so no
#   node1 netns ── veth ──┤   FORWARD policy DROP on the bridged traffic)
#   (10.231.X.11, manager + registry :5000)
#   node2 netns ── veth ──┘
#   (10.231.X.12, worker)
#
# Hostnames (own UTS namespaces): berth-sw-manager, berth-sw-worker.
#
# Each node: dockerd --data-root/--exec-root/-H unix:// under <dir>/nodeN,
# its own managed containerd, its own docker0 inside its netns, and
# --insecure-registry for the test registry. The registry (Debian's
# `docker-registry`) runs inside node1's netns with htpasswd auth
# (user `berth`, password in <dir>/env), so both nodes reach it at
# 10.231.X.11:5000 and berth's root netns too. Everything is created under
# names carrying <dir>'s tag and removed by `down`, which `up` calls itself
# when it fails half-way.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 up|down <dir> [octet]" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# A short tag for interface and namespace names (interface names <= 15 bytes).
tag=$(printf '%s' "$dir" | md5sum | cut -c1-6)
hub=bsw-$tag-hub
ns1=bsw-$tag-n1
ns2=bsw-$tag-n2

down() {
    for n in node1 node2; do
        for pidfile in "$dir/$n/docker.pid" "$dir/$n/registry.pid"; do
            [ -f "$pidfile" ] || continue
            pid=$(cat "$pidfile")
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$pidfile"
        done
        # Anything left mounted under the node's roots (netns files, overlay).
        if [ -d "$dir/$n" ]; then
            { grep -o " $dir/$n/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do
                umount -l "$m" 2>/dev/null || true
            done
        fi
    done
    ip link del "bsw-$tag-r" 2>/dev/null || true
    for ns in "$hub" "$ns1" "$ns2"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$dir/node1" "$dir/node2" "$dir/registry" "$dir/env"
}

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

start_dockerd() {
    local n=$1 ns=$2 host=$3
    mkdir -p "$dir/$n/data" "$dir/$n/exec"
    # Its own UTS namespace too, so the node's hostname tells them apart.
    unshare --uts sh -c 'hostname "$0" && exec "$@"' "$host" \
        nsenter --net="/run/netns/$ns" dockerd \
        --data-root "$dir/$n/data" --exec-root "$dir/$n/exec" \
        --pidfile "$dir/$n/docker.pid" -H "unix://$dir/$n/docker.sock" \
        --insecure-registry "$subnet.0/24" \
        --ip-forward=true --userland-proxy=false \
        >"$dir/$n/dockerd.log" 2>&1 &
}

wait_sock() {
    local sock=$1
    for _ in $(seq 1 300); do
        docker -H "unix://$sock" info >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "swarm-testnet: engine at $sock did not come up" >&2
    return 1
}

up() {
    local start=$SECONDS
    for tool in dockerd docker docker-registry nsenter unshare ip python3 curl; do
        command -v "$tool" >/dev/null || { echo "swarm-testnet: $tool is not installed" >&2; exit 1; }
    done
    down
    trap 'echo "swarm-testnet: up failed; tearing down" >&2; down' ERR
    mkdir -p "$dir/node1" "$dir/node2" "$dir/registry"

    ip netns add "$hub"; ip netns add "$ns1"; ip netns add "$ns2"
    in_ns "$hub" ip link add br0 type bridge
    in_ns "$hub" ip link set br0 up
    in_ns "$hub" ip link set lo up
    # root end
    ip link add "bsw-$tag-r" type veth peer name "bsw-$tag-rp"
    ip link set "bsw-$tag-rp" netns "$hub"
    ip addr add "$subnet.1/24" dev "bsw-$tag-r"
    ip link set "bsw-$tag-r" up
    in_ns "$hub" ip link set "bsw-$tag-rp" master br0 up
    # node ends
    local i ns
    for i in 1 2; do
        ns=bsw-$tag-n$i
        ip link add "bsw-$tag-$i" type veth peer name "bsw-$tag-${i}p"
        ip link set "bsw-$tag-$i" netns "$ns"
        ip link set "bsw-$tag-${i}p" netns "$hub"
        in_ns "$hub" ip link set "bsw-$tag-${i}p" master br0 up
        in_ns "$ns" ip link set lo up
        in_ns "$ns" ip link set "bsw-$tag-$i" name eth0
        in_ns "$ns" ip addr add "$subnet.1$i/24" dev eth0
        in_ns "$ns" ip link set eth0 up
    done

    start_dockerd node1 "$ns1" "berth-sw-manager"
    start_dockerd node2 "$ns2" "berth-sw-worker"

    # The registry, with basic auth, inside node1's netns.
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    python3 -W ignore - "$password" >"$dir/registry/htpasswd" <<'EOF'
import crypt, sys
h = crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH))
print("berth:" + h.replace("$2b$", "$2y$", 1))
EOF
    cat >"$dir/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry/data
  delete:
    enabled: true
http:
  addr: $subnet.11:5000
EOF
    # SWARM_REGISTRY_AUTH=none: an open registry (for berth's own push).
    if [ "${SWARM_REGISTRY_AUTH:-htpasswd}" != none ]; then
        cat >>"$dir/registry/config.yml" <<EOF
auth:
  htpasswd:
    realm: berth-test
    path: $dir/registry/htpasswd
EOF
    fi
    # nsenter itself, not the in_ns function: a function sent to the
    # background is a subshell, whose pid `down` would kill while the
    # registry lived on (nsenter without --pid execs the program).
    nsenter --net="/run/netns/$ns1" docker-registry serve "$dir/registry/config.yml" >"$dir/registry/registry.log" 2>&1 &
    echo $! >"$dir/node1/registry.pid"

    wait_sock "$dir/node1/docker.sock"
    wait_sock "$dir/node2/docker.sock"
    local d1="docker -H unix://$dir/node1/docker.sock" d2="docker -H unix://$dir/node2/docker.sock"
    $d1 swarm init --advertise-addr "$subnet.11" --listen-addr "$subnet.11:2377" >/dev/null
    local token
    token=$($d1 swarm join-token -q worker)
    $d2 swarm join --token "$token" --advertise-addr "$subnet.12" --listen-addr "$subnet.12:2377" "$subnet.11:2377" >/dev/null
    for _ in $(seq 1 100); do
        [ "$($d1 node ls --format '{{.Status}}' | grep -c Ready)" = 2 ] && break
        sleep 0.1
    done
    [ "$($d1 node ls --format '{{.Status}}' | grep -c Ready)" = 2 ] || { echo "swarm-testnet: worker not ready" >&2; false; }
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://$subnet.11:5000/v2/" && break
        sleep 0.1
    done
    curl -s -o /dev/null "http://$subnet.11:5000/v2/" || { echo "swarm-testnet: registry not reachable" >&2; false; }

    cat >"$dir/env" <<EOF
SWARM_MANAGER_SOCK=$dir/node1/docker.sock
SWARM_WORKER_SOCK=$dir/node2/docker.sock
SWARM_MANAGER_ADDR=$subnet.11
SWARM_WORKER_ADDR=$subnet.12
SWARM_HOST_ADDR=$subnet.1
SWARM_REGISTRY=$subnet.11:5000
SWARM_REGISTRY_USER=berth
SWARM_REGISTRY_PASSWORD=$password
SWARM_UP_SECONDS=$((SECONDS - start))
EOF
    trap - ERR
    echo "swarm-testnet: up in $((SECONDS - start))s ($dir/env)"
}

octet=${3:-0}
subnet=10.231.$octet
case "$cmd" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down <dir> [octet]" >&2; exit 2 ;;
esac

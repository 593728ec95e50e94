# Shared by the edge benches that need no berth server (ab.sh, policy.sh,
# replicas.sh; sourced after `set -euo pipefail` with BENCH set to the
# script's name): a temp dir, the PIDs started and a trap that stops them,
# tool checks, wait_port, the nginx upstream every edge bench proxies to,
# and the release edge_bench binary (built unless SKIP_BUILD is set).
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d "/tmp/berth-$BENCH-bench.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need_tools() { # tool...
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || { echo "missing required tool: $tool" >&2; exit 1; }
    done
}

wait_port() { # port
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    tail -n 5 "$WORK"/*.log "$WORK"/*/error.log 2>/dev/null >&2 || true
    return 1
}

# One nginx worker answering a 24-byte body on each port given (several
# ports stand for the replicas of one deployment with the same capacity),
# and 1 MiB at /big (tls.sh); with UPSTREAM_H2C_PORT set, also HTTP/2
# with prior knowledge (h2c) on that port (h2c.sh).
start_upstream() { # port...
    local port listen=""
    for port in "$@"; do listen+="listen 127.0.0.1:$port; "; done
    [[ -n ${UPSTREAM_H2C_PORT:-} ]] && listen+="listen 127.0.0.1:$UPSTREAM_H2C_PORT http2; "
    mkdir -p "$WORK/up"
    head -c $((1024 * 1024)) /dev/zero | tr '\0' 'x' >"$WORK/up/big"
    cat >"$WORK/up/nginx.conf" <<CONF
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
user root;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/up/cb; proxy_temp_path $WORK/up/p;
    fastcgi_temp_path $WORK/up/f; uwsgi_temp_path $WORK/up/u; scgi_temp_path $WORK/up/s;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    http2_max_requests 1000000;
    http2_max_concurrent_streams 1024;
    sendfile on;
    server {
        $listen
        location = /big { default_type application/octet-stream; alias $WORK/up/big; }
        location / { default_type text/plain; return 200 "hello from the upstream\n"; }
    }
}
CONF
    nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" 2>>"$WORK/up.log" &
    PIDS+=($!)
    for port in "$@" ${UPSTREAM_H2C_PORT:-}; do wait_port "$port"; done
}

# The release edge_bench (crates/berth-edge/examples/edge_bench.rs).
edge_bench_bin() {
    if [[ -z "${SKIP_BUILD:-}" ]]; then
        echo "building edge_bench (release)..." >&2
        (cd "$ROOT" && cargo build --release -q -p berth-edge --example edge_bench)
    fi
    EDGE_BIN="${EDGE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/edge_bench}"
}

# wrk's latency figures (812.00us, 1.23ms, 1.02s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
        else printf "%s", v }'
}

# CPU clock ticks used by a process and its children (nginx workers).
cpu_ticks() { # pid
    local t=0 p
    for p in "$1" $(pgrep -P "$1"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
HZ="$(getconf CLK_TCK)"

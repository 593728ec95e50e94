#!/usr/bin/env bash
# Would HTTP/2 towards upstreams (h2c, prior knowledge) make a proxy faster
# than HTTP/1.1 keep-alive on this machine? (issue 18, item 3: build it only
# if the measurements show a gain.)
#
# berth's edge speaks HTTP/1.1 to upstreams, so the question is asked of the
# two reference proxies that can do both: HAProxy (`server ... proto h2`)
# and Caddy (`reverse_proxy h2c://...`). Each runs twice in the same run,
# once per upstream protocol, in front of the same nginx (1 worker) that
# listens for HTTP/1.1 on one port and for h2c on another; berth's edge
# (HTTP/1.1 upstream) is printed beside them for scale. Clients speak
# HTTP/1.1 keep-alive to the proxy (wrk), for a 24-byte body (`small`) and a
# 1 MiB body (`big`). Order rotates per run. Installs nothing; everything on
# 127.0.0.1.
#
#   DURATION=8s CONNECTIONS=64 RUNS=3 MODES="small big" bench/h2c.sh
set -euo pipefail
BENCH=h2c
source "$(dirname "$0")/edge-lib.sh"
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-64}"
BIG_CONNECTIONS="${BIG_CONNECTIONS:-16}"
WRK_THREADS="${WRK_THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-1}"
MODES="${MODES:-small big}"
HOST_HEADER="bench.localhost"
BASE_PORT="${BASE_PORT:-18300}"
UP_H1=$BASE_PORT
UP_H2C=$((BASE_PORT + 1))
need_tools wrk nginx haproxy caddy cargo
edge_bench_bin

# the upstream: one nginx worker, HTTP/1.1 on UP_H1, h2c on UP_H2C
UPSTREAM_H2C_PORT=$UP_H2C start_upstream "$UP_H1"

# proxy name -> port, and how to start it
declare -A PORT=([berth-h1]=$((BASE_PORT + 2)) [haproxy-h1]=$((BASE_PORT + 3)) [haproxy-h2c]=$((BASE_PORT + 4)) [caddy-h1]=$((BASE_PORT + 5)) [caddy-h2c]=$((BASE_PORT + 6)))
NAMES=(berth-h1 haproxy-h1 haproxy-h2c caddy-h1 caddy-h2c)

start_proxy() { # name -> sets PROXY_PID
    local name="$1" port="${PORT[$1]}" up proto=""
    case "$name" in
    berth-h1)
        "$EDGE_BIN" --listen "127.0.0.1:$port" --host "$HOST_HEADER" \
            --upstream "127.0.0.1:$UP_H1" --threads "$PROXY_THREADS" >"$WORK/$name.log" 2>&1 &
        ;;
    haproxy-*)
        up=$UP_H1
        [[ $name == *h2c ]] && { up=$UP_H2C; proto=" proto h2"; }
        cat >"$WORK/$name.cfg" <<CONF
global
    nbthread $PROXY_THREADS
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend f
    bind 127.0.0.1:$port
    default_backend b
backend b
    server s 127.0.0.1:$up$proto
CONF
        haproxy -db -f "$WORK/$name.cfg" >"$WORK/$name.log" 2>&1 &
        ;;
    caddy-*)
        up="127.0.0.1:$UP_H1"
        [[ $name == *h2c ]] && up="h2c://127.0.0.1:$UP_H2C"
        cat >"$WORK/$name.caddy" <<CONF
{
    admin off
    auto_https off
    log {
        output discard
    }
}
:$port {
    bind 127.0.0.1
    reverse_proxy $up
}
CONF
        GOMAXPROCS=$PROXY_THREADS caddy run --adapter caddyfile --config "$WORK/$name.caddy" >"$WORK/$name.log" 2>&1 &
        ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_port "$port"
}

stop_proxy() {
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
}

# nginx's h2c connections from the proxy, checked once per h2c proxy: the
# upstream really spoke HTTP/2 (nginx counts no HTTP/1.1 request on UP_H2C)
check_upstream_proto() { # name
    local code
    code="$(curl -s -o /dev/null -w '%{http_version}' --http2-prior-knowledge "http://127.0.0.1:$UP_H2C/")"
    [[ $code == 2 ]] || { echo "upstream $UP_H2C does not speak h2c (curl saw HTTP/$code)" >&2; exit 1; }
}
check_upstream_proto

echo "h2c towards upstreams: wrk -t$WRK_THREADS over HTTP/1.1 keep-alive to each proxy, $DURATION per cell,"
echo "small = 24-byte body (-c$CONNECTIONS), big = 1 MiB body (-c$BIG_CONNECTIONS); upstream nginx, 1 worker;"
echo "proxies with $PROXY_THREADS workers; CPU = the proxy's own user+sys time per request (small) or per MiB (big)"
echo "edge_bench built $(date -u -r "$EDGE_BIN" +%FT%TZ)${SKIP_BUILD:+ (SKIP_BUILD: not rebuilt for this run)}"
printf '%-4s %-6s %-12s %12s %9s %9s %12s\n' run mode proxy "req/s" "p50 ms" "p99 ms" "CPU"
for run in $(seq 1 "$RUNS"); do
    # rotate the order per run so no proxy always goes first
    shift_by=$(((run - 1) % ${#NAMES[@]}))
    order=("${NAMES[@]:$shift_by}" "${NAMES[@]:0:$shift_by}")
    for mode in $MODES; do
        for name in "${order[@]}"; do
            start_proxy "$name"
            path=/
            conns=$CONNECTIONS
            if [[ $mode == big ]]; then path=/big; conns=$BIG_CONNECTIONS; fi
            wrk -t1 -c4 -d1s -H "Host: $HOST_HEADER" "http://127.0.0.1:${PORT[$name]}$path" >/dev/null
            t0=$(cpu_ticks "$PROXY_PID")
            out="$(wrk -t"$WRK_THREADS" -c"$conns" -d"$DURATION" --latency \
                -H "Host: $HOST_HEADER" "http://127.0.0.1:${PORT[$name]}$path")"
            t1=$(cpu_ticks "$PROXY_PID")
            stop_proxy
            rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
            total="$(awk '/requests in/ {print $1}' <<<"$out")"
            p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
            p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
            bad="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')"
            if [[ $mode == big ]]; then
                cpu="$(awk -v t=$((t1 - t0)) -v n="$total" -v hz="$HZ" 'BEGIN { printf "%.0f us/MiB", n ? t / hz * 1e6 / n : 0 }')"
            else
                cpu="$(awk -v t=$((t1 - t0)) -v n="$total" -v hz="$HZ" 'BEGIN { printf "%.1f us/req", n ? t / hz * 1e6 / n : 0 }')"
            fi
            printf '%-4s %-6s %-12s %12s %9s %9s %12s %s\n' "$run" "$mode" "$name" "$rps" "$p50" "$p99" "$cpu" "$bad"
        done
    done
done

#!/usr/bin/env bash
# Issue 15 item 4: a flood from one client address over its rate limit does
# not slow another client. berth's edge (edge_bench --rate-limit) in front
# of one nginx worker; a second client on 127.0.0.2 measures its latency
# (sequential keep-alive GETs, bench/policy_probe.py) alone, then during
# each flood of FLOODS from 127.0.0.1 (over the limit: 429s, held back by
# the tarpit, and new connections past a few closed at accept, see
# crates/berth-edge/src/policy.rs), then while the same flood goes through
# a second edge without a rate limit and reaches nginx (the reference).
# With EDGE_BIN_BEFORE (an edge_bench built from an older commit, e.g.
# without connection admission), also the flood over the limit through
# that one. The floods:
#   wrk       closed loop: wrk -c$CONNECTIONS, each connection waits for
#             its answer before the next request;
#   conns     open loop: 64 loops each opening a connection, writing a GET
#             and closing it, as fast as they can (examples/flood.rs);
#   pipeline  open loop: 64 connections writing GETs back to back without
#             waiting for answers (examples/flood.rs).
# Prints the second client's p50/p99 for each case, and the edge's CPU (% of
# one core) over the flood. All on 127.0.0.1/127.0.0.2; installs nothing.
#
#   RATE_LIMIT=100 PROBE_SECS=8 CONNECTIONS=64 RUNS=3 FLOODS="wrk conns pipeline" bench/policy.sh
set -euo pipefail

RATE_LIMIT="${RATE_LIMIT:-100}"
PROBE_SECS="${PROBE_SECS:-8}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-3}"
FLOODS="${FLOODS:-wrk conns pipeline}"
FLOOD_TASKS="${FLOOD_TASKS:-64}"
BASE_PORT="${BASE_PORT:-18200}"
UP=$BASE_PORT EDGE=$((BASE_PORT + 1)) OPEN_EDGE=$((BASE_PORT + 2)) BEFORE_EDGE=$((BASE_PORT + 3))
HOST_HEADER=bench.localhost

BENCH=policy
. "$(dirname "$0")/edge-lib.sh"
need_tools wrk nginx cargo python3
edge_bench_bin
if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p berth-edge --example flood)
fi
FLOOD_BIN="${FLOOD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/flood}"
start_upstream "$UP"
start_edge() { # binary port log [args...]
    local bin="$1" port="$2" log="$3"
    shift 3
    "$bin" --listen "127.0.0.1:$port" --host "$HOST_HEADER" --upstream "127.0.0.1:$UP" \
        --threads "$PROXY_THREADS" "$@" 2>"$WORK/$log" &
    PIDS+=($!)
    EDGE_PID[$port]=$!
    wait_port "$port"
}
declare -A EDGE_PID
cpu_ticks() { # pid: user + system clock ticks so far
    awk '{print $14 + $15}' "/proc/$1/stat"
}
start_edge "$EDGE_BIN" "$EDGE" edge.log --rate-limit "$RATE_LIMIT"
start_edge "$EDGE_BIN" "$OPEN_EDGE" open-edge.log
if [[ -n ${EDGE_BIN_BEFORE:-} ]]; then
    start_edge "$EDGE_BIN_BEFORE" "$BEFORE_EDGE" before-edge.log --rate-limit "$RATE_LIMIT"
fi

probe() { # edge port
    python3 "$ROOT/bench/policy_probe.py" 127.0.0.2 "127.0.0.1:$1" "$HOST_HEADER" "$PROBE_SECS" "$((RATE_LIMIT / 2))"
}

row() { # run case n bad p50 p99 flood
    printf '%-4s %-32s %8s %8s %8s %8s  %s\n' "$@"
}

flooded() { # run kind case port
    local n bad p50 p99 flood what
    if [[ $2 == wrk ]]; then
        wrk -t2 -c"$CONNECTIONS" -d"$((PROBE_SECS + 2))s" -H "Host: $HOST_HEADER" "http://127.0.0.1:$4/" >"$WORK/flood.txt" &
    else
        "$FLOOD_BIN" --mode "$2" --tasks "$FLOOD_TASKS" --target "127.0.0.1:$4" --host "$HOST_HEADER" --secs "$((PROBE_SECS + 2))" >"$WORK/flood.txt" &
    fi
    flood=$!
    local t0 c0 cpu
    t0=$(date +%s.%N) c0=$(cpu_ticks "${EDGE_PID[$4]}")
    sleep 1
    read -r n bad p50 p99 < <(probe "$4")
    wait "$flood"
    # the edge's CPU over the whole flood, in % of one core
    cpu=$(echo "$(cpu_ticks "${EDGE_PID[$4]}") $c0 $(date +%s.%N) $t0 $(getconf CLK_TCK)" |
        awk '{printf "%.0f", 100 * ($1 - $2) / $5 / ($3 - $4)}')
    if [[ $2 == wrk ]]; then
        local frps fbad
        frps="$(awk '/^Requests\/sec:/ {print $2}' "$WORK/flood.txt")"
        fbad="$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' "$WORK/flood.txt")"
        what="$frps req/s (${fbad:-0} non-2xx)"
    else
        what="$(cut -d' ' -f2- "$WORK/flood.txt")"
    fi
    row "$1" "$2, $3" "$n" "$bad" "$p50" "$p99" "edge cpu ${cpu}%, $what"
}

echo
echo "$(date -u +%FT%TZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), load $(cut -d' ' -f1-3 /proc/loadavg): RATE_LIMIT=$RATE_LIMIT PROBE_SECS=$PROBE_SECS CONNECTIONS=$CONNECTIONS FLOOD_TASKS=$FLOOD_TASKS RUNS=$RUNS FLOODS=\"$FLOODS\"${EDGE_BIN_BEFORE:+ EDGE_BIN_BEFORE=$EDGE_BIN_BEFORE} bench/policy.sh"
echo "second client: 127.0.0.2, sequential keep-alive GETs (below its limit: it paces itself to $((RATE_LIMIT / 2))/s); floods from 127.0.0.1"
row run case requests non-2xx "p50 ms" "p99 ms" "flood"
for run in $(seq 1 "$RUNS"); do
    read -r n bad p50 p99 < <(probe "$EDGE")
    row "$run" alone "$n" "$bad" "$p50" "$p99" "-"
    for kind in $FLOODS; do
        flooded "$run" "$kind" "rate limit" "$EDGE"
        if [[ -n ${EDGE_BIN_BEFORE:-} ]]; then
            flooded "$run" "$kind" "limit, before" "$BEFORE_EDGE"
        fi
        flooded "$run" "$kind" "no limit (ref)" "$OPEN_EDGE"
    done
done

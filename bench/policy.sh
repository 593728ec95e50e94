#!/usr/bin/env bash
# Issue 15 item 4: a flood from one client address over its rate limit does
# not slow another client. berth's edge (edge_bench --rate-limit) in front
# of one nginx worker; a second client on 127.0.0.2 measures its latency
# (sequential keep-alive GETs, bench/policy_probe.py) alone, then while wrk
# floods from 127.0.0.1 (almost all of its requests answered 429). Prints
# the second client's p50/p99 beside the same figures without the flood.
# All on 127.0.0.1/127.0.0.2; installs nothing.
#
#   RATE_LIMIT=100 PROBE_SECS=8 CONNECTIONS=64 RUNS=3 bench/policy.sh
set -euo pipefail

RATE_LIMIT="${RATE_LIMIT:-100}"
PROBE_SECS="${PROBE_SECS:-8}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-3}"
BASE_PORT="${BASE_PORT:-18200}"
UP=$BASE_PORT EDGE=$((BASE_PORT + 1))
HOST_HEADER=bench.localhost

BENCH=policy
. "$(dirname "$0")/edge-lib.sh"
need_tools wrk nginx cargo python3
edge_bench_bin
start_upstream "$UP"
"$EDGE_BIN" --listen "127.0.0.1:$EDGE" --host "$HOST_HEADER" --upstream "127.0.0.1:$UP" \
    --threads "$PROXY_THREADS" --rate-limit "$RATE_LIMIT" 2>"$WORK/edge.log" &
PIDS+=($!)
wait_port "$EDGE"

probe() { python3 "$ROOT/bench/policy_probe.py" 127.0.0.2 "127.0.0.1:$EDGE" "$HOST_HEADER" "$PROBE_SECS" "$((RATE_LIMIT / 2))"; }

echo
echo "$(date -u +%FT%TZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'): RATE_LIMIT=$RATE_LIMIT PROBE_SECS=$PROBE_SECS CONNECTIONS=$CONNECTIONS RUNS=$RUNS bench/policy.sh"
echo "second client: 127.0.0.2, sequential keep-alive GETs (below its limit: it paces itself to $((RATE_LIMIT / 2))/s); flood: wrk -t2 -c$CONNECTIONS from 127.0.0.1"
printf '%-4s %-14s %8s %10s %10s %10s  %s\n' run case requests "non-2xx" "p50 ms" "p99 ms" "flood req/s (429s)"
for run in $(seq 1 "$RUNS"); do
    read -r n bad p50 p99 < <(probe)
    printf '%-4s %-14s %8s %10s %10s %10s  %s\n' "$run" alone "$n" "$bad" "$p50" "$p99" "-"
    wrk -t2 -c"$CONNECTIONS" -d"$((PROBE_SECS + 2))s" -H "Host: $HOST_HEADER" "http://127.0.0.1:$EDGE/" >"$WORK/flood.txt" &
    flood=$!
    sleep 1
    read -r n bad p50 p99 < <(probe)
    wait "$flood"
    frps="$(awk '/^Requests\/sec:/ {print $2}' "$WORK/flood.txt")"
    fbad="$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' "$WORK/flood.txt")"
    printf '%-4s %-14s %8s %10s %10s %10s  %s\n' "$run" "during flood" "$n" "$bad" "$p50" "$p99" "$frps (${fbad:-0} non-2xx)"
done

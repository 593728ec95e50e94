#!/usr/bin/env bash
# Two edge_bench binaries (e.g. before and after a change) in front of the
# same nginx upstream, measured alternately in one run with wrk, so a hot
# path change is judged under the same conditions. Installs nothing.
#
#   A=/tmp/edge_bench_before B=target/release/examples/edge_bench RUNS=3 DURATION=8s bench/ab.sh
set -euo pipefail

A="${A:?path of the first edge_bench}"
B="${B:?path of the second edge_bench}"
DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-3}"
BASE_PORT="${BASE_PORT:-18300}"
UP=$BASE_PORT PA=$((BASE_PORT + 1)) PB=$((BASE_PORT + 2))
HOST_HEADER=bench.localhost
BENCH=ab
. "$(dirname "$0")/edge-lib.sh"
need_tools wrk nginx
start_upstream "$UP"
"$A" --listen "127.0.0.1:$PA" --host "$HOST_HEADER" --upstream "127.0.0.1:$UP" --threads "$PROXY_THREADS" 2>"$WORK/a.log" &
PIDS+=($!)
"$B" --listen "127.0.0.1:$PB" --host "$HOST_HEADER" --upstream "127.0.0.1:$UP" --threads "$PROXY_THREADS" 2>"$WORK/b.log" &
PIDS+=($!)
wait_port "$PA"; wait_port "$PB"
echo "$(date -u +%FT%TZ): A=$A B=$B DURATION=$DURATION CONNECTIONS=$CONNECTIONS RUNS=$RUNS bench/ab.sh"
printf '%-4s %-3s %12s %10s %10s  %s\n' run bin "req/s" "p50 ms" "p99 ms" "load (1/5/15)"
for p in $PA $PB; do wrk -t1 -c4 -d1s -H "Host: $HOST_HEADER" "http://127.0.0.1:$p/" >/dev/null; done
for run in $(seq 1 "$RUNS"); do
    order=("A:$PA" "B:$PB")
    ((run % 2 == 0)) && order=("B:$PB" "A:$PA")
    for s in "${order[@]}"; do
        out="$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST_HEADER" "http://127.0.0.1:${s#*:}/")"
        printf '%-4s %-3s %12s %10s %10s  %s\n' "$run" "${s%%:*}" \
            "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" \
            "$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")" \
            "$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")" \
            "$(cut -d' ' -f1-3 /proc/loadavg)"
    done
done

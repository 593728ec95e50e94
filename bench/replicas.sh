#!/usr/bin/env bash
# berth's edge in front of 3 replicas of one deployment against the same
# edge in front of 1 (issue 11: req/s >= 0.9x, p99 <= 1.2x of 1 replica),
# with round robin and with least in-flight, and nginx with 1 and 3 upstream
# servers beside it as the reference. The replicas are three ports of one
# nginx upstream process (1 worker), so every setup has the same upstream
# capacity and the figures compare the balancing alone. All on 127.0.0.1;
# installs nothing. See bench/README.md, "replicas.sh".
#
#   DURATION=10s CONNECTIONS=64 WRK_THREADS=2 PROXY_THREADS=2 RUNS=3 bench/replicas.sh
set -euo pipefail

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-3}"
HOST_HEADER="bench.localhost"
BASE_PORT="${BASE_PORT:-18100}"
UP1=$BASE_PORT UP2=$((BASE_PORT + 1)) UP3=$((BASE_PORT + 2))
B1_PORT=$((BASE_PORT + 10)) B3RR_PORT=$((BASE_PORT + 11)) B3LEAST_PORT=$((BASE_PORT + 12))
N1_PORT=$((BASE_PORT + 13)) N3_PORT=$((BASE_PORT + 14))

BENCH=replicas
. "$(dirname "$0")/edge-lib.sh"
need_tools wrk nginx cargo
edge_bench_bin

nginx_conf() { # prefix workers body...
    local prefix=$1 workers=$2
    shift 2
    cat <<EOF
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
user root;
worker_processes $workers;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $prefix/client_body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
$*
}
EOF
}

# --- the replicas: one nginx worker on three ports ---------------------------
start_upstream "$UP1" "$UP2" "$UP3"

# --- berth: 1 replica, 3 replicas round robin, 3 replicas least in-flight ----
edge() { # name port upstreams balance
    "$EDGE_BIN" --listen "127.0.0.1:$2" --host "$HOST_HEADER" --upstream "$3" \
        --threads "$PROXY_THREADS" --balance "$4" 2>"$WORK/$1.log" &
    PIDS+=($!)
}
edge berth-1 "$B1_PORT" "127.0.0.1:$UP1" rr
edge berth-3rr "$B3RR_PORT" "127.0.0.1:$UP1,127.0.0.1:$UP2,127.0.0.1:$UP3" rr
edge berth-3least "$B3LEAST_PORT" "127.0.0.1:$UP1,127.0.0.1:$UP2,127.0.0.1:$UP3" least

# --- nginx as proxy: 1 and 3 upstream servers (its round robin) -------------
ngproxy() { # name port servers...
    local name=$1 port=$2
    shift 2
    local servers="" s
    for s in "$@"; do servers+="server $s; "; done
    mkdir -p "$WORK/$name"
    nginx_conf "$WORK/$name" "$PROXY_THREADS" "
    upstream app { $servers keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }" >"$WORK/$name/nginx.conf"
    nginx -p "$WORK/$name" -c "$WORK/$name/nginx.conf" 2>>"$WORK/$name.log" &
    PIDS+=($!)
}
ngproxy nginx-1 "$N1_PORT" "127.0.0.1:$UP1"
ngproxy nginx-3 "$N3_PORT" "127.0.0.1:$UP1" "127.0.0.1:$UP2" "127.0.0.1:$UP3"

setups=("berth-1:$B1_PORT" "berth-3rr:$B3RR_PORT" "berth-3least:$B3LEAST_PORT" "nginx-1:$N1_PORT" "nginx-3:$N3_PORT")
for s in "${setups[@]}"; do wait_port "${s#*:}"; done


echo
echo "$(date -u +%FT%TZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates/berth-edge 2>/dev/null || echo ' + uncommitted edge changes'): DURATION=$DURATION CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS PROXY_THREADS=$PROXY_THREADS RUNS=$RUNS bench/replicas.sh"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency; replicas: 3 ports of one nginx worker (24-byte body); machine: $(nproc) cores shared by all"
printf '%-4s %-13s %12s %10s %10s %8s  %s\n' run setup "req/s" "p50 ms" "p99 ms" non-2xx "load (1/5/15)"
for s in "${setups[@]}"; do
    wrk -t1 -c4 -d1s -H "Host: $HOST_HEADER" "http://127.0.0.1:${s#*:}/" >/dev/null
done
declare -A RPS P99
for run in $(seq 1 "$RUNS"); do
    n=${#setups[@]}
    for k in $(seq 0 $((n - 1))); do
        s="${setups[$(((run - 1 + k) % n))]}"
        name="${s%%:*}"; port="${s#*:}"
        load="$(cut -d' ' -f1-3 /proc/loadavg)"
        out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
            -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/")"
        rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
        p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
        p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
        non2xx="$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' <<<"$out")"
        printf '%-4s %-13s %12s %10s %10s %8s  %s\n' "$run" "$name" "$rps" "$p50" "$p99" "${non2xx:-0}" "$load"
        RPS[$name,$run]=$rps
        P99[$name,$run]=$p99
    done
done

echo
echo "target (issue 11): 3 replicas req/s >= 0.9x and p99 <= 1.2x of 1 replica, same run"
met_rr=0 met_least=0
for run in $(seq 1 "$RUNS"); do
    for b in 3rr 3least; do
        v="$(awk -v r3="${RPS[berth-$b,$run]}" -v r1="${RPS[berth-1,$run]}" -v p3="${P99[berth-$b,$run]}" -v p1="${P99[berth-1,$run]}" 'BEGIN {
            ok = (r3 >= 0.9 * r1 && p3 <= 1.2 * p1)
            printf "%s req/s %.3f, p99 %.3f", ok ? "met" : "not met", r3 / r1, p3 / p1 }')"
        [[ "$v" == met* ]] && { [[ $b == 3rr ]] && met_rr=$((met_rr + 1)) || met_least=$((met_least + 1)); }
        echo "run $run: berth-$b / berth-1: $v"
    done
    awk -v r3="${RPS[nginx-3,$run]}" -v r1="${RPS[nginx-1,$run]}" -v p3="${P99[nginx-3,$run]}" -v p1="${P99[nginx-1,$run]}" -v run="$run" 'BEGIN {
        printf "run %s: nginx-3 / nginx-1 (reference): req/s %.3f, p99 %.3f\n", run, r3 / r1, p3 / p1 }'
done
echo "round robin: target met in $met_rr of $RUNS runs; least in-flight: in $met_least of $RUNS"
for s in "${setups[@]}"; do
    name="${s%%:*}"
    r=(); q=()
    for run in $(seq 1 "$RUNS"); do r+=("${RPS[$name,$run]}"); q+=("${P99[$name,$run]}"); done
    printf '%s\n' "${r[@]}" | sort -n | awk -v name="$name" '{a[NR]=$1} END {
        printf "%-13s median req/s %10.0f (min %.0f, max %.0f)", name, (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2, a[1], a[NR] }'
    printf '%s\n' "${q[@]}" | sort -n | awk '{a[NR]=$1} END {
        printf ", median p99 %.2f ms (min %.2f, max %.2f)\n", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2, a[1], a[NR] }'
done

#!/usr/bin/env bash
# berth's edge over TLS beside nginx, HAProxy and Caddy, all in front of the
# same upstream (one nginx worker), all on 127.0.0.1, same settings: TLS 1.3,
# one ECDSA P-256 certificate, session resumption on (tickets), 2 workers.
# Installs nothing. Modes (each measured for every proxy, in an order that
# rotates per run):
#   keepalive  HTTPS keep-alive, HTTP/1.1 (wrk), 24-byte body
#   newconn    a new TLS connection per request (wrk, Connection: close);
#              the server side's TCP passive opens per request are printed
#              (nstat) to show each request really made a handshake
#   h2         HTTP/2 over TLS, several streams per connection (h2load
#              -m STREAMS); p50/p99 from h2load's per-request log
#   big        a 1 MiB body over HTTPS keep-alive (wrk): MiB/s and CPU per MiB
#
#   DURATION=8s CONNECTIONS=64 RUNS=3 MODES="keepalive newconn h2 big" bench/tls.sh
#
# SYSCALLS=1 adds to the last column: system calls the proxy made per
# request (perf stat counting raw_syscalls:sys_enter on its processes; needs
# linux-perf) and the machine's idle share during the measurement (from
# /proc/stat: a proxy that leaves cores idle waits on something).
set -euo pipefail
BENCH=tls
source "$(dirname "$0")/edge-lib.sh"

DURATION="${DURATION:-8s}"
CONNECTIONS="${CONNECTIONS:-64}"
BIG_CONNECTIONS="${BIG_CONNECTIONS:-16}"
STREAMS="${STREAMS:-10}"
WRK_THREADS="${WRK_THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-1}"
MODES="${MODES:-keepalive newconn h2 big}"
HOST_HEADER="bench.localhost"
BASE_PORT="${BASE_PORT:-18100}"
UP_PORT=$BASE_PORT
declare -A PORT=([berth]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [haproxy]=$((BASE_PORT + 3)) [caddy]=$((BASE_PORT + 4)))

need_tools wrk nginx openssl cargo nstat
missing=()
for tool in haproxy caddy h2load; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "note: not installed, left out: ${missing[*]}" >&2
fi
have() { ! [[ " ${missing[*]} " == *" $1 "* ]]; }
edge_bench_bin

# --- certificate: ECDSA P-256, self-signed for the bench's hostname ---------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$HOST_HEADER" -addext "subjectAltName=DNS:$HOST_HEADER,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/combined.pem"

# --- upstream: one nginx worker, a 24-byte body at / and 1 MiB at /big -------
start_upstream "$UP_PORT"

declare -A PID_OF
# --- berth: Edge::serve_tls_threads ------------------------------------------
"$EDGE_BIN" --listen "127.0.0.1:${PORT[berth]}" --host "$HOST_HEADER" \
    --upstream "127.0.0.1:$UP_PORT" --threads "$PROXY_THREADS" \
    --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" 2>"$WORK/berth.log" &
PIDS+=($!)
PID_OF[berth]=$!

# --- nginx ---------------------------------------------------------------------
mkdir -p "$WORK/ng"
cat >"$WORK/ng/nginx.conf" <<CONF
daemon off;
pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log warn;
user root;
worker_processes $PROXY_THREADS;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/ng/cb; proxy_temp_path $WORK/ng/p;
    fastcgi_temp_path $WORK/ng/f; uwsgi_temp_path $WORK/ng/u; scgi_temp_path $WORK/ng/s;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    http2_max_requests 1000000;
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl http2;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_buffering on;
            proxy_max_temp_file_size 0;
        }
    }
}
CONF
nginx -p "$WORK/ng" -c "$WORK/ng/nginx.conf" 2>>"$WORK/ng.log" &
PIDS+=($!)
PID_OF[nginx]=$!

# --- HAProxy -------------------------------------------------------------------
if have haproxy; then
    cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread $PROXY_THREADS
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $WORK/combined.pem alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    server app 127.0.0.1:$UP_PORT
CONF
    haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PIDS+=($!)
    PID_OF[haproxy]=$!
fi

# --- Caddy ---------------------------------------------------------------------
if have caddy; then
    mkdir -p "$WORK/caddy"
    cat >"$WORK/Caddyfile" <<CONF
{
    admin off
    auto_https off
    default_sni $HOST_HEADER
}
https://$HOST_HEADER:${PORT[caddy]}, https://127.0.0.1:${PORT[caddy]} {
    bind 127.0.0.1
    tls $WORK/cert.pem $WORK/key.pem {
        protocols tls1.3
    }
    reverse_proxy 127.0.0.1:$UP_PORT
}
CONF
    GOMAXPROCS=$PROXY_THREADS XDG_DATA_HOME="$WORK/caddy" XDG_CONFIG_HOME="$WORK/caddy" HOME="$WORK/caddy" \
        caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
    PIDS+=($!)
    PID_OF[caddy]=$!
fi

proxies=(berth nginx)
have haproxy && proxies+=(haproxy)
have caddy && proxies+=(caddy)
for p in "${proxies[@]}"; do wait_port "${PORT[$p]}"; done

passive_opens() { nstat -az TcpPassiveOpens | awk '/TcpPassiveOpens/ {print $2}'; }
secs="${DURATION%s}"

# One measurement: prints "req/s p50 p99 requests non2xx extra" for a proxy.
measure() { # mode proxy
    local mode=$1 name=$2 port=${PORT[$2]} out
    local url="https://127.0.0.1:$port/"
    case $mode in
    keepalive)
        out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST_HEADER" "$url")" ;;
    newconn)
        out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST_HEADER" -H "Connection: close" "$url")" ;;
    big)
        out="$(wrk -t"$WRK_THREADS" -c"$BIG_CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST_HEADER" "${url}big")" ;;
    h2)
        rm -f "$WORK/h2.log"
        out="$(h2load -c"$CONNECTIONS" -m"$STREAMS" -t"$WRK_THREADS" -D"$secs" --warm-up-time=1 \
            -H ":authority: $HOST_HEADER" --log-file="$WORK/h2.log" "$url" 2>&1)"
        local bad reqs errs
        reqs="$(awk '/^requests:/ {print $8}' <<<"$out")"
        bad="$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")"
        errs="$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")"
        awk '{print $3}' "$WORK/h2.log" | sort -n | awk -v n="$reqs" -v bad="$bad" -v e="$errs" -v s="$secs" '
            {a[NR]=$1} END {
                if (NR == 0) { print "- - - 0 - -"; exit }
                printf "%.0f %.2f %.2f %d %d failed%d\n", n / s, a[int(NR*0.5)+1] / 1000, a[int(NR*0.99)+1] / 1000, n, bad, e }'
        echo "$out" >"$WORK/h2load-$name.txt"
        return ;;
    esac
    echo "$out" >"$WORK/wrk-$mode-$name.txt"
    local reqs rps p50 p99 non2xx xfer
    reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
    p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
    non2xx="$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' <<<"$out")"
    errs="$(awk '/Socket errors/ {print $0}' <<<"$out" | sed 's/^ *Socket errors: *//; s/ //g')"
    echo "$rps $p50 $p99 $reqs ${non2xx:-0} ${errs:-none}"
}

echo
echo "$(date -u +%FT%TZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates/berth-edge 2>/dev/null || echo ' + uncommitted berth-edge changes'): DURATION=$DURATION CONNECTIONS=$CONNECTIONS STREAMS=$STREAMS RUNS=$RUNS MODES=\"$MODES\" bench/tls.sh"
echo "edge_bench built $(date -u -r "$EDGE_BIN" +%FT%TZ)${SKIP_BUILD:+ (SKIP_BUILD: not rebuilt)}; $(nproc) cores shared by the load generator, the proxy and the upstream (nginx, 1 worker)"
echo "TLS 1.3, ECDSA P-256, tickets on; $PROXY_THREADS workers each (berth: Edge::serve_tls_threads; nginx worker_processes; haproxy nbthread; caddy GOMAXPROCS)"
echo "keepalive/newconn: wrk -t$WRK_THREADS -c$CONNECTIONS; big: wrk -c$BIG_CONNECTIONS, 1 MiB body; h2: h2load -c$CONNECTIONS -m$STREAMS"
echo "cpu: CPU time of the proxy process(es) per request (per MiB for big); opens/req (newconn): TCP passive opens on the machine per request"
for p in "${proxies[@]}"; do # warm up and check the route answers
    curl -sk --resolve "$HOST_HEADER:${PORT[$p]}:127.0.0.1" -o /dev/null -w "%{http_code}" "https://$HOST_HEADER:${PORT[$p]}/" | grep -q 200 ||
        { echo "$p does not answer 200 over HTTPS; logs in $WORK" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1; }
    wrk -t1 -c4 -d1s -H "Host: $HOST_HEADER" "https://127.0.0.1:${PORT[$p]}/" >/dev/null
done
declare -A RPS P99 CPU
printf '%-4s %-9s %-8s %11s %9s %9s %10s %8s %10s  %s\n' run mode proxy "req/s" "p50 ms" "p99 ms" "cpu" non-2xx "opens/req" "errors/load"
for run in $(seq 1 "$RUNS"); do
    for mode in $MODES; do
        [[ $mode == h2 ]] && ! have h2load && continue
        n=${#proxies[@]}
        for k in $(seq 0 $((n - 1))); do
            name="${proxies[$(((run - 1 + k) % n))]}"
            load="$(cut -d' ' -f1 /proc/loadavg)"
            perf_pid=""
            if [[ -n ${SYSCALLS:-} ]]; then
                pids="$(echo "${PID_OF[$name]}" $(pgrep -P "${PID_OF[$name]}") | tr ' ' ',')"
                perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$WORK/perf-$name.txt" 2>/dev/null &
                perf_pid=$!
                read -r idle0 all0 < <(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat)
            fi
            o0="$(passive_opens)"; c0="$(cpu_ticks "${PID_OF[$name]}")"
            read -r rps p50 p99 reqs non2xx errs < <(measure "$mode" "$name")
            c1="$(cpu_ticks "${PID_OF[$name]}")"; o1="$(passive_opens)"
            if [[ -n $perf_pid ]]; then
                kill -INT "$perf_pid" 2>/dev/null || true
                wait "$perf_pid" 2>/dev/null || true
                sc="$(awk -F, '/raw_syscalls/ {print $1}' "$WORK/perf-$name.txt")"
                read -r idle1 all1 < <(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat)
                errs+=" syscalls/req=$(awk -v s="${sc:-0}" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.2f", s / n; else print "-" }')"
                errs+=" idle=$(awk -v i=$((idle1 - idle0)) -v a=$((all1 - all0)) 'BEGIN { if (a > 0) printf "%.1f%%", 100 * i / a; else print "-" }')"
            fi
            if [[ $mode == big ]]; then
                cpu="$(awk -v c=$((c1 - c0)) -v n="$reqs" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.0fus/MiB", c * 1e6 / hz / n; else print "-" }')"
            else
                cpu="$(awk -v c=$((c1 - c0)) -v n="$reqs" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1fus", c * 1e6 / hz / n; else print "-" }')"
            fi
            opens="-"
            [[ $mode == newconn ]] && opens="$(awk -v o=$((o1 - o0)) -v n="$reqs" 'BEGIN { if (n > 0) printf "%.2f", o / n }')"
            printf '%-4s %-9s %-8s %11s %9s %9s %10s %8s %10s  %s\n' "$run" "$mode" "$name" "$rps" "$p50" "$p99" "$cpu" "$non2xx" "$opens" "$errs/$load"
            RPS[$mode,$name,$run]=$rps; P99[$mode,$name,$run]=$p99; CPU[$mode,$name,$run]="${cpu%%us*}"
        done
    done
done

# Targets (issue 18), per run against nginx: keepalive and h2 req/s >= and
# p99 <=, CPU per request <= 0.9x; newconn req/s >= and p99 <=; big CPU per
# MiB <=.
echo
for mode in $MODES; do
    [[ $mode == h2 ]] && ! have h2load && continue
    met=0
    for run in $(seq 1 "$RUNS"); do
        v="$(awk -v mode="$mode" -v br="${RPS[$mode,berth,$run]}" -v nr="${RPS[$mode,nginx,$run]}" \
            -v bp="${P99[$mode,berth,$run]}" -v np="${P99[$mode,nginx,$run]}" \
            -v bc="${CPU[$mode,berth,$run]}" -v nc="${CPU[$mode,nginx,$run]}" 'BEGIN {
            if (mode == "big") ok = (bc <= nc)
            else if (mode == "newconn") ok = (br >= nr && bp <= np)
            else ok = (br >= nr && bp <= np && bc <= 0.9 * nc)
            printf "%s: berth/nginx req/s %.3f, p99 %.3f, cpu %.3f", ok ? "met" : "not met", br / nr, bp / np, bc / nc }')"
        [[ "$v" == met* ]] && met=$((met + 1))
        echo "$mode run $run: $v"
    done
    echo "$mode: target met in $met of $RUNS runs"
done

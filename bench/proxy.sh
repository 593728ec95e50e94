#!/usr/bin/env bash
# Compares berth's edge proxy with nginx, HAProxy and Caddy in front of the
# same upstream (nginx returning a small static body), all on 127.0.0.1.
# Installs nothing. See bench/README-proxy.md.
#
#   DURATION=10s CONNECTIONS=64 WRK_THREADS=2 PROXY_THREADS=2 RUNS=3 bench/proxy.sh
#
# Span export cost (issue 17): after the table, berth with and without
# `--otlp-endpoint` are measured again in OTLP_PAIRS pairs of OTLP_SLICE
# slices, alternating which goes first (ABBA), so both see the same machine;
# OTLP_PAIRS=0 leaves it out.
set -euo pipefail

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
RUNS="${RUNS:-1}"
OTLP_PAIRS="${OTLP_PAIRS:-10}"
OTLP_SLICE="${OTLP_SLICE:-3s}"
HOST_HEADER="bench.localhost"
BASE_PORT="${BASE_PORT:-18000}"
UP_PORT=$BASE_PORT
BERTH_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
HAPROXY_PORT=$((BASE_PORT + 3))
CADDY_PORT=$((BASE_PORT + 4))
OTLP_BERTH_PORT=$((BASE_PORT + 5))

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/berth-proxy-bench.XXXXXX)"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

missing=()
for tool in wrk nginx haproxy caddy cargo; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ " ${missing[*]} " == *" wrk "* || " ${missing[*]} " == *" nginx "* || " ${missing[*]} " == *" cargo "* ]]; then
    echo "missing required tools: ${missing[*]} (wrk, nginx and cargo are needed)" >&2
    exit 1
fi
if ((${#missing[@]})); then
    echo "note: not installed, skipped: ${missing[*]}" >&2
fi
have() { ! [[ " ${missing[*]} " == *" $1 "* ]]; }

wait_port() { # port
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1; logs:" >&2
    tail -n 5 "$WORK"/*.log "$WORK"/*/stderr "$WORK"/*/error.log 2>/dev/null >&2 || true
    return 1
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building edge_bench (release)..." >&2
    (cd "$ROOT" && cargo build --release -q -p berth-edge --example edge_bench)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
EDGE_BIN="$TARGET_DIR/release/examples/edge_bench"

nginx_common() { # prefix
    cat <<EOF
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
user root;
EOF
}
nginx_http_common() { # prefix
    cat <<EOF
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
EOF
}

# --- upstream: nginx, one worker, fixed small body --------------------------
UP="$WORK/upstream"; mkdir -p "$UP"
{
    nginx_common "$UP"
    echo "worker_processes 1;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    nginx_http_common "$UP"
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 "hello from the upstream\n"; }
    }
}
EOF
} >"$UP/nginx.conf"
nginx -p "$UP" -c "$UP/nginx.conf" 2>>"$UP/stderr" &
PIDS+=($!)
wait_port "$UP_PORT"

# --- berth edge --------------------------------------------------------------
"$EDGE_BIN" --listen "127.0.0.1:$BERTH_PORT" --host "$HOST_HEADER" \
    --upstream "127.0.0.1:$UP_PORT" --threads "$PROXY_THREADS" 2>"$WORK/berth.log" &
PIDS+=($!)
declare -A PID_OF
PID_OF[berth]=$!
# the same edge with span export on at the default rate (--trace-sample
# 0.01); the upstream nginx answers the OTLP POSTs too
"$EDGE_BIN" --listen "127.0.0.1:$OTLP_BERTH_PORT" --host "$HOST_HEADER" \
    --upstream "127.0.0.1:$UP_PORT" --threads "$PROXY_THREADS" \
    --otlp-endpoint "http://127.0.0.1:$UP_PORT" 2>"$WORK/berth-otlp.log" &
PIDS+=($!)
PID_OF[berth-otlp]=$!

# --- nginx as proxy ----------------------------------------------------------
NG="$WORK/nginx-proxy"; mkdir -p "$NG"
{
    nginx_common "$NG"
    echo "worker_processes $PROXY_THREADS;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    nginx_http_common "$NG"
    cat <<EOF
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_buffering on;
        }
    }
}
EOF
} >"$NG/nginx.conf"
nginx -p "$NG" -c "$NG/nginx.conf" 2>>"$NG/stderr" &
PIDS+=($!)
PID_OF[nginx]=$!

# --- HAProxy -----------------------------------------------------------------
if have haproxy; then
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server app 127.0.0.1:$UP_PORT
EOF
    haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PIDS+=($!)
    PID_OF[haproxy]=$!
fi

# --- Caddy -------------------------------------------------------------------
if have caddy; then
    mkdir -p "$WORK/caddy"
    cat >"$WORK/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://:$CADDY_PORT {
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:$UP_PORT
}
EOF
    GOMAXPROCS=$PROXY_THREADS XDG_DATA_HOME="$WORK/caddy" XDG_CONFIG_HOME="$WORK/caddy" HOME="$WORK/caddy" \
        caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
    PIDS+=($!)
    PID_OF[caddy]=$!
fi

proxies=("berth:$BERTH_PORT" "berth-otlp:$OTLP_BERTH_PORT" "nginx:$NGINX_PORT")
have haproxy && proxies+=("haproxy:$HAPROXY_PORT")
have caddy && proxies+=("caddy:$CADDY_PORT")

for p in "${proxies[@]}"; do wait_port "${p#*:}"; done

# wrk reports latency as e.g. 812.00us, 1.23ms, 1.02s; print milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
        else printf "%s", v }'
}

# CPU time (clock ticks) of a proxy: its process and its children (nginx workers).
cpu_ticks() { # pid
    local t=0 p
    for p in "$1" $(pgrep -P "$1"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
HZ="$(getconf CLK_TCK)"

# Each run measures every proxy once, one after the other, starting with a
# different proxy each run (so none always goes first); several runs show
# the spread (figures move with any other load on the machine).
echo
echo "$(date -u +%FT%TZ), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (berth-edge at $(cd "$ROOT" && git log -1 --format=%h -- crates/berth-edge 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates/berth-edge 2>/dev/null || echo ' + uncommitted changes')): DURATION=$DURATION CONNECTIONS=$CONNECTIONS WRK_THREADS=$WRK_THREADS PROXY_THREADS=$PROXY_THREADS RUNS=$RUNS bench/proxy.sh"
echo "edge_bench built $(date -u -r "$EDGE_BIN" +%FT%TZ)${SKIP_BUILD:+ (SKIP_BUILD: not rebuilt for this run)}"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency, Host: $HOST_HEADER; upstream: nginx (1 worker) returning a 24-byte body"
echo "every proxy gets $PROXY_THREADS worker threads/processes (berth: Edge::serve_threads, one single-threaded tokio runtime per worker on SO_REUSEPORT listeners, nginx: worker_processes, haproxy: nbthread, caddy: GOMAXPROCS);"
echo "machine: $(nproc) cores shared by wrk, the proxy and the upstream"
echo "cpu us/req: CPU time the proxy process(es) used per request (less sensitive to other load than req/s)"
printf '%-4s %-10s %12s %10s %10s %10s %8s  %-16s %s\n' run proxy "req/s" "p50 ms" "p99 ms" "cpu us/req" non-2xx "load (1/5/15)" "socket errors"
for p in "${proxies[@]}"; do
    # warm up pools and check the route answers through this proxy
    wrk -t1 -c4 -d1s -H "Host: $HOST_HEADER" "http://127.0.0.1:${p#*:}/" >/dev/null
done
declare -A RPS P99
for run in $(seq 1 "$RUNS"); do
    n=${#proxies[@]}
    for k in $(seq 0 $((n - 1))); do
        p="${proxies[$(((run - 1 + k) % n))]}"
        name="${p%%:*}"; port="${p#*:}"
        load="$(cut -d' ' -f1-3 /proc/loadavg)"
        c0="$(cpu_ticks "${PID_OF[$name]}")"
        out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
            -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/")"
        c1="$(cpu_ticks "${PID_OF[$name]}")"
        echo "$out" >"$WORK/wrk-$name-$run.txt"
        reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
        cpu="$(awk -v c=$((c1 - c0)) -v n="$reqs" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / hz / n; else print "-" }')"
        rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
        p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
        p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
        non2xx="$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' <<<"$out")"
        errs="$(awk '/Socket errors/ {print $0}' <<<"$out" | sed 's/^ *Socket errors: *//')"
        printf '%-4s %-10s %12s %10s %10s %10s %8s  %-16s %s\n' "$run" "$name" "$rps" "$p50" "$p99" "$cpu" "${non2xx:-0}" "$load" "${errs:-none}"
        RPS[$name,$run]=$rps
        P99[$name,$run]=$p99
    done
done

# Target (per run): berth >= nginx in req/s and <= nginx in p99.
echo
met=0
for run in $(seq 1 "$RUNS"); do
    verdict="$(awk -v br="${RPS[berth,$run]}" -v nr="${RPS[nginx,$run]}" -v bp="${P99[berth,$run]}" -v np="${P99[nginx,$run]}" 'BEGIN {
        ok = (br >= nr && bp <= np)
        printf "%s: berth/nginx req/s %.3f, p99 %.3f", ok ? "met" : "not met", br / nr, bp / np }')"
    [[ "$verdict" == met* ]] && met=$((met + 1))
    echo "run $run: $verdict"
done
echo "target met in $met of $RUNS runs"
# Span export (issue 17): berth with --otlp-endpoint at the default rate
# within 2 % of berth without, in the same run.
for run in $(seq 1 "$RUNS"); do
    awk -v on="${RPS[berth-otlp,$run]}" -v off="${RPS[berth,$run]}" -v run="$run" 'BEGIN {
        r = on / off
        printf "run %s: export on/off req/s %.3f (%s)\n", run, r, (r >= 0.98) ? "within 2 %" : "more than 2 % lost" }'
done
for p in "${proxies[@]}"; do
    name="${p%%:*}"
    r=(); q=()
    for run in $(seq 1 "$RUNS"); do r+=("${RPS[$name,$run]}"); q+=("${P99[$name,$run]}"); done
    printf '%s\n' "${r[@]}" | sort -n | awk -v name="$name" '{a[NR]=$1} END {
        printf "%-8s median req/s %10.0f (min %.0f, max %.0f)", name, (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2, a[1], a[NR] }'
    printf '%s\n' "${q[@]}" | sort -n | awk '{a[NR]=$1} END {
        printf ", median p99 %.2f ms (min %.2f, max %.2f)\n", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2, a[1], a[NR] }'
done

# Span export cost, interleaved: a slow minute of the machine falls on both
# sides alike. Sums of requests, seconds and CPU ticks over all slices.
if ((OTLP_PAIRS > 0)); then
    echo
    echo "span export on/off, interleaved: $OTLP_PAIRS pairs of $OTLP_SLICE slices (wrk -t$WRK_THREADS -c$CONNECTIONS), order alternating"
    declare -A N SECS TICKS
    for name in berth berth-otlp; do N[$name]=0; SECS[$name]=0; TICKS[$name]=0; done
    for i in $(seq 1 "$OTLP_PAIRS"); do
        if ((i % 2)); then order=(berth berth-otlp); else order=(berth-otlp berth); fi
        line=""
        for name in "${order[@]}"; do
            port=$BERTH_PORT
            [[ $name == berth-otlp ]] && port=$OTLP_BERTH_PORT
            c0="$(cpu_ticks "${PID_OF[$name]}")"
            out="$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$OTLP_SLICE" -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/")"
            c1="$(cpu_ticks "${PID_OF[$name]}")"
            read -r reqs secs < <(awk '/requests in/ { n = $1; t = $4; sub(/,$/, "", t);
                if (t ~ /ms$/) { sub(/ms$/, "", t); t /= 1000 } else if (t ~ /m$/) { sub(/m$/, "", t); t *= 60 } else sub(/s$/, "", t);
                print n, t }' <<<"$out")
            N[$name]=$((N[$name] + reqs))
            SECS[$name]="$(awk -v a="${SECS[$name]}" -v b="$secs" 'BEGIN { print a + b }')"
            TICKS[$name]=$((TICKS[$name] + c1 - c0))
            line+="$(printf '%s %.0f req/s  ' "$name" "$(awk -v n="$reqs" -v t="$secs" 'BEGIN { print n / t }')")"
        done
        echo "pair $i: $line"
    done
    awk -v n_on="${N[berth-otlp]}" -v t_on="${SECS[berth-otlp]}" -v c_on="${TICKS[berth-otlp]}" \
        -v n_off="${N[berth]}" -v t_off="${SECS[berth]}" -v c_off="${TICKS[berth]}" -v hz="$HZ" 'BEGIN {
        on = n_on / t_on; off = n_off / t_off; r = on / off
        printf "export on %.0f req/s, off %.0f req/s: on/off %.3f (%s); cpu us/req on %.2f, off %.2f\n",
            on, off, r, (r >= 0.98) ? "within 2 %, target met" : "more than 2 % lost, target not met",
            c_on * 1e6 / hz / n_on, c_off * 1e6 / hz / n_off }'
fi

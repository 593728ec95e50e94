#!/usr/bin/env bash
# Leader failover of two berth servers on one PostgreSQL (issue 10): kill -9
# of the leader -> the survivor's first pipeline step of a deploy asked of it
# right after the kill, median over RUNS, with a load generator (a bounded
# curl loop, CONC clients) on the survivor's edge counting failed requests.
# Target: <= 10 s (median), 0 failed requests.
#
#   RUNS=5 bench/failover.sh        (BERTH_BIN=path/to/berth, default target/release/berth)
#
# Each run: the leader is killed (kill -9); a deploy is asked of the
# survivor at once (it is queued in the store); the time printed is from
# the kill to that deployment's first step `startedAt` (the new leader took
# the lease, reconciled, picked the deployment up and started it), and the
# time to the new leader as `berth cluster status` shows it. The killed
# server is started again (same data dir and ports) before the next run.
# Needs /usr/lib/postgresql/15/bin, docker, curl, jq, git, /bin/busybox.
# Everything it starts is stopped at exit (by PID); its containers and
# images are removed (by its project label and name).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
CONC=${CONC:-4}
BIN=${BERTH_BIN:-target/release/berth}
PG=${BERTH_PG_BIN:-/usr/lib/postgresql/15/bin}
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release -p berth (or set BERTH_BIN)" >&2; exit 1; }
BIN=$(realpath "$BIN")
[ -x "$PG/initdb" ] || { echo "PostgreSQL 15 missing ($PG)" >&2; exit 1; }
for tool in docker curl jq git python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "/bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }

PROJECT="bench-failover-$$"
TOKEN="bench-token-$$-$RANDOM"
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/berth-failover.XXXXXX")
chmod 755 "$TMP"
declare -A PID
PGPID=""
LOADPIDS=()
cleanup() {
    set +e
    for p in "${LOADPIDS[@]}"; do kill "$p" 2>/dev/null; done
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
    for n in "${!PID[@]}"; do
        for _ in $(seq 100); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${PID[$n]}" 2>/dev/null
    done
    # runuser does not pass a signal on: stop the postmaster by its own PID.
    [ -f "$TMP/pg/data/postmaster.pid" ] && kill -INT "$(head -1 "$TMP/pg/data/postmaster.pid")" 2>/dev/null
    [ -n "$PGPID" ] && kill "$PGPID" 2>/dev/null
    wait 2>/dev/null
    docker ps -aq --filter "label=dev.berth.project=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
    docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "^berth/$PROJECT-" | xargs -r docker rmi -f >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now_ms() { date +%s%3N; }
iso_ms() { date -d "$1" +%s%3N; }

# PostgreSQL on 127.0.0.1.
mkdir -p "$TMP/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$TMP/pg"
as_pg "$PG/initdb" -D "$TMP/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
PGPORT=$(port)
as_pg "$PG/postgres" -D "$TMP/pg/data" -k "$TMP/pg" -p "$PGPORT" -h 127.0.0.1 >"$TMP/pg.log" 2>&1 &
PGPID=$!
for _ in $(seq 100); do "$PG/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
as_pg "$PG/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE berth" >/dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT/berth"
KEY=$(head -c 32 /dev/urandom | base64)

# The app: busybox httpd FROM scratch.
APP="$TMP/app"
mkdir -p "$APP/www"
cp /bin/busybox "$APP/busybox"
cat >"$APP/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
EXPOSE 3000
CMD ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"]
DOCKERFILE
git_c() { git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"; }
git -C "$APP" init -q -b main
echo "v0" >"$APP/www/index.html"
git_c add -A
git_c commit -q -m v0

# Two servers, A and B: own data dir, API and edge ports.
declare -A API HTTP
for n in a b; do API[$n]=$(port); HTTP[$n]=$(port); done
start() { # name
    local n=$1
    "$BIN" server --data-dir "$TMP/$n" --api-listen "127.0.0.1:${API[$n]}" \
        --http-listen "127.0.0.1:${HTTP[$n]}" --token "$TOKEN" --master-key "$KEY" \
        --database-url "$PGURL" >>"$TMP/$n.log" 2>&1 &
    PID[$n]=$!
    for _ in $(seq 300); do
        curl -fs "http://127.0.0.1:${API[$n]}/api/v1/health" >/dev/null && return 0
        sleep 0.05
    done
    echo "server $n did not start:" >&2; tail -20 "$TMP/$n.log" >&2; exit 1
}
cli() { # name args...
    local n=$1; shift
    BERTH_API="http://127.0.0.1:${API[$n]}" BERTH_TOKEN=$TOKEN "$BIN" "$@"
}
# leader_of <name> -> "id epoch" of the leader as <name> sees it (empty if none)
leader_of() {
    cli "$1" cluster status --json 2>/dev/null |
        jq -r '[.[] | select(.isLeader)][0] // empty | "\(.id) \(.epoch)"' 2>/dev/null || true
}
# which server (a or b) is the member <id>
name_of() {
    local n
    for n in a b; do
        [[ "$(cli "$n" cluster status --json | jq -r --arg u "http://127.0.0.1:${API[$n]}" '.[] | select(.apiUrl == $u) | .id' | head -1)" == "$1" ]] && { echo "$n"; return; }
    done
}
host="$PROJECT.localhost"
edge() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $host" "http://127.0.0.1:${HTTP[$1]}/" || true; }

start a
for _ in $(seq 100); do [ -n "$(leader_of a)" ] && break; sleep 0.1; done
start b
cli a projects create "$PROJECT" --repo "$APP" >/dev/null
cli a deploy --project "$PROJECT" --wait --json >"$TMP/d0.json" || { cat "$TMP/d0.json"; tail -30 "$TMP/a.log"; exit 1; }
for n in a b; do
    for _ in $(seq 100); do [ "$(edge $n)" = 200 ] && break; sleep 0.1; done
    [ "$(edge $n)" = 200 ] || { echo "edge $n does not serve the app" >&2; exit 1; }
done

# load <name> <file>: CONC curl loops on <name>'s edge until $TMP/stop,
# at most 10 minutes; one line per request: the status code (000 = failed).
load() {
    local i
    for i in $(seq "$CONC"); do
        (
            end=$(($(date +%s) + 600))
            while [ ! -f "$TMP/stop" ] && [ "$(date +%s)" -lt "$end" ]; do
                curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "Host: $host" "http://127.0.0.1:${HTTP[$1]}/" || echo 000
            done >>"$2.$i"
        ) &
        LOADPIDS+=($!)
    done
}

failover=(); step=(); total=0; failed=0
for run in $(seq "$RUNS"); do
    read -r lid _ <<<"$(leader_of a)"
    dead=$(name_of "$lid")
    [ -n "$dead" ] || { echo "no leader found" >&2; exit 1; }
    alive=$([ "$dead" = a ] && echo b || echo a)
    echo "v$run" >"$APP/www/index.html"
    git_c commit -q -am "v$run"
    rm -f "$TMP/stop"; LOADPIDS=()
    load "$alive" "$TMP/load$run"
    sleep 1
    t0=$(now_ms)
    kill -9 "${PID[$dead]}"; wait "${PID[$dead]}" 2>/dev/null || true
    id=$(cli "$alive" deploy --project "$PROJECT" --json | jq -r .id)
    # The new leader, as the survivor reports it.
    led=""
    while [ -z "$led" ]; do
        read -r nid _ <<<"$(leader_of "$alive")"
        if [ -n "${nid:-}" ] && [ "$nid" != "$lid" ]; then led=$(($(now_ms) - t0)); fi
        [ $(($(now_ms) - t0)) -gt 60000 ] && { echo "no new leader in 60 s" >&2; tail -20 "$TMP/$alive.log" >&2; exit 1; }
        sleep 0.05
    done
    # The deployment's first step, and its end.
    first=""
    while :; do
        cli "$alive" inspect "$id" --json >"$TMP/d.json"
        first=$(jq -r '[.steps[] | select(.startedAt != null) | .startedAt][0] // empty' "$TMP/d.json")
        st=$(jq -r .status "$TMP/d.json")
        [ "$st" = succeeded ] && break
        [ "$st" = failed ] && { echo "run $run: the deploy failed: $(jq -r .failureMessage "$TMP/d.json")" >&2; exit 1; }
        [ $(($(now_ms) - t0)) -gt 300000 ] && { echo "run $run: the deploy did not end in 300 s" >&2; exit 1; }
        sleep 0.1
    done
    f=$(($(iso_ms "$first") - t0))
    for _ in $(seq 100); do [ "$(curl -s --max-time 5 -H "Host: $host" "http://127.0.0.1:${HTTP[$alive]}/")" = "v$run" ] && break; sleep 0.1; done
    touch "$TMP/stop"
    for p in "${LOADPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    n=$(cat "$TMP/load$run".* | wc -l)
    bad=$(cat "$TMP/load$run".* | grep -vc '^200$' || true)
    total=$((total + n)); failed=$((failed + bad))
    failover+=("$f"); step+=("$led")
    printf 'run %d: killed %s; new leader after %d ms; first pipeline step after %d ms; %d requests on the edge of %s, %d failed\n' \
        "$run" "$dead" "$led" "$f" "$n" "$alive" "$bad"
    start "$dead"
done

med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%d ms (min %d, max %d)", m, a[1], a[NR]}'; }
echo
echo "berth $("$BIN" --version | awk '{print $2}') ($BIN), $RUNS runs, lease TTL 5 s, renew every 1 s, load: $CONC curl loops"
printf '%-44s %s   (target <= 10000 ms)\n' "kill -9 -> new leader (cluster status)" "$(med "${step[@]}")"
printf '%-44s %s   (target <= 10000 ms)\n' "kill -9 -> new leader's first pipeline step" "$(med "${failover[@]}")"
printf '%-44s %d of %d   (target 0)\n' "failed requests on the surviving edge" "$failed" "$total"

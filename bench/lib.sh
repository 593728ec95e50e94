# Shared by bench/build.sh, deploy.sh and logs.sh (sourced, with BENCH set
# to the script's name): tool checks, a temp dir and a cleanup trap that
# stops the berth server by PID and removes the project's containers and
# images, timing and statistics helpers, and start_server.
TOKEN="bench-token-$$-$RANDOM"
PROJECT="bench-$BENCH-$$"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BERTH="${BERTH_BIN:-$ROOT/target/release/berth}"

missing=()
for tool in docker git jq curl date awk sort; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "missing tools: ${missing[*]} (apt-get install -y jq curl git)" >&2
    exit 1
fi
[[ -x /bin/busybox ]] || { echo "/bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }
[[ -x "$BERTH" ]] || { echo "$BERTH missing: cargo build --release --bin berth" >&2; exit 1; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }

# berth's data dir (its checkouts) and the reference tool's inputs live here,
# on the same filesystem. Not /tmp: on this machine creating a file in /tmp
# costs ~0.7 ms (300 empty files: 220 ms, against 30 ms under /work and 11 ms
# under /var/tmp), which a server's data dir never pays.
BENCH_TMPDIR="${BENCH_TMPDIR:-/var/tmp}"
TMP="$(mktemp -d "$BENCH_TMPDIR/berth-bench-$BENCH.XXXXXX")"
SERVER_PID=""

cleanup() {
    set +e
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null
    fi
    docker ps -aq --filter "label=dev.berth.project=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
    docker ps -aq --filter "label=berthbench=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
    docker images --format '{{.Repository}}:{{.Tag}}' |
        grep -E "^(berth/$PROJECT-|berthbench/$PROJECT:)" | xargs -r docker rmi -f >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    echo "no free port found" >&2
    return 1
}

# stats v1 v2 ... -> "median min max"
stats() {
    printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
        printf "%s %s %s\n", m, a[1], a[NR] }'
}
# cell "median min max" -> "median (min-max)"
cell() { awk '{printf "%.0f (%.0f-%.0f)", $1, $2, $3}' <<<"$1"; }

start_server() {
    API_PORT=$(free_port)
    HTTP_PORT=$(free_port)
    while [[ "$HTTP_PORT" == "$API_PORT" ]]; do HTTP_PORT=$(free_port); done
    "$BERTH" server --data-dir "$TMP/data" --api-listen "127.0.0.1:$API_PORT" \
        --http-listen "127.0.0.1:$HTTP_PORT" --token "$TOKEN" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    export BERTH_API="http://127.0.0.1:$API_PORT" BERTH_TOKEN="$TOKEN"
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "$BERTH_API/api/v1/health" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "berth server did not start; log:" >&2
    tail -n 20 "$TMP/server.log" >&2
    exit 1
}

#!/usr/bin/env bash
# Deploy of an already built image to active: `--runtime swarm` (a two-node
# test swarm made by scripts/swarm-testnet.sh, images through its registry
# with credentials) beside `--runtime docker` (this machine's engine), the
# same app with `replicas = REPLICAS` (default 2), in one run.
#
#   RUNS=3 REPLICAS=2 bench/swarm.sh
#
# Needs root (network namespaces), dockerd, docker-registry, nsenter,
# unshare, jq, curl and a berth binary (BERTH_BIN, default
# target/release/berth). Prints the median (min-max) of: the edge serving
# the new version, createdAt -> completedAt, and the deploy (start) and
# health_check steps, for each runtime, and where the gap comes from.
set -euo pipefail
shopt -s inherit_errexit

RUNS="${RUNS:-3}"
REPLICAS="${REPLICAS:-2}"
POLL_MS="${POLL_MS:-10}"
BENCH=swarm
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
[[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]] || { echo "REPLICAS must be a positive integer" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "bench/swarm.sh needs root (network namespaces)" >&2; exit 1; }

SWARM_DIR="$TMP/swarm"
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
all_cleanup() {
    set +e
    stop_server
    [[ -d "$SWARM_DIR" ]] && "$ROOT/scripts/swarm-testnet.sh" down "$SWARM_DIR" >/dev/null 2>&1
    cleanup
}
trap all_cleanup EXIT

iso_ms() { date -d "$1" +%s%3N; }
git_c() { git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"; }
step_ms() { jq -r --arg n "$1" '.steps[] | select(.name == $n) | .durationMs // 0' "$TMP/cmd.json"; }

APP="$TMP/app"
NONCE="$(now_ns)"
V1="v1 $NONCE"
V2="v2 $NONCE"
mkdir -p "$APP/www"
cp /bin/busybox "$APP/busybox"
cat >"$APP/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
COPY www /www
EXPOSE 3000
CMD ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"]
DOCKERFILE
printf '[services.web]\nreplicas = %s\nbake = "0"\n' "$REPLICAS" >"$APP/berth.toml"
git -C "$APP" init -q -b main
echo "$V1" >"$APP/www/index.html"
git_c add -A
git_c commit -q -m v1
SHA1=$(git_c rev-parse HEAD)
echo "$V2" >"$APP/www/index.html"
git_c commit -q -am v2
SHA2=$(git_c rev-parse HEAD)

# start <data dir> <env...> -- <server args...>
start() {
    local data=$1
    shift
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    API_PORT=$(free_port)
    HTTP_PORT=$(free_port)
    while [[ "$HTTP_PORT" == "$API_PORT" ]]; do HTTP_PORT=$(free_port); done
    env "${envs[@]}" "$BERTH" server --data-dir "$data" --api-listen "127.0.0.1:$API_PORT" \
        --http-listen "127.0.0.1:$HTTP_PORT" --token "$TOKEN" "$@" >"$data.log" 2>&1 &
    SERVER_PID=$!
    export BERTH_API="http://127.0.0.1:$API_PORT" BERTH_TOKEN="$TOKEN"
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$BERTH_API/api/v1/health" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "berth server did not start; log:" >&2
    tail -n 20 "$data.log" >&2
    exit 1
}

edge_body() { curl -s --max-time 2 -H "Host: $PROJECT.localhost" "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null || true; }
poll_edge() {
    local deadline=$(($(now_ns) + 180 * 1000000000)) pause
    pause=$(awk -v m="$POLL_MS" 'BEGIN{printf "%.3f", m/1000}')
    while (($(now_ns) < deadline)); do
        if [[ "$(edge_body)" == "$2" ]]; then ms_since "$1"; return 0; fi
        sleep "$pause"
    done
    echo "the edge never served '$2' within 180 s" >&2
    return 1
}
# timed <body> <ref>: "<edge ms> <createdAt->completedAt ms> <deploy step ms> <health_check ms> <push ms>"
timed() {
    local t0 pid edge rc=0 created completed
    t0=$(now_ns)
    "$BERTH" deploy --project "$PROJECT" --ref "$2" --wait --json >"$TMP/cmd.json" 2>"$TMP/cmd.err" &
    pid=$!
    edge=$(poll_edge "$t0" "$1") || { kill -TERM "$pid" 2>/dev/null; wait "$pid"; return 1; }
    wait "$pid" || rc=$?
    ((rc == 0)) || { echo "deploy failed:" >&2; cat "$TMP/cmd.err" >&2; return 1; }
    read -r created completed < <(jq -r '"\(.createdAt) \(.completedAt)"' "$TMP/cmd.json")
    echo "$edge $(($(iso_ms "$completed") - $(iso_ms "$created"))) $(step_ms deploy) $(step_ms health_check) $(step_ms push)"
}

# measure <label>: warm-up builds v1 and v2, then RUNS deploys alternating.
measure() {
    local label=$1 r out e j dp hc pu
    "$BERTH" projects create "$PROJECT" --repo "$APP" >/dev/null
    echo "$label: warm-up (builds v1 and v2)..." >&2
    for sha in "$SHA1" "$SHA2"; do
        "$BERTH" deploy --project "$PROJECT" --ref "$sha" --wait --json >/dev/null 2>"$TMP/warm.err" ||
            { cat "$TMP/warm.err" >&2; exit 1; }
    done
    local edges=() jsons=() deploys=() healths=() pushes=()
    for r in $(seq 1 "$RUNS"); do
        if ((r % 2)); then out=$(timed "$V1" "$SHA1"); else out=$(timed "$V2" "$SHA2"); fi
        read -r e j dp hc pu <<<"$out"
        n=$(jq '.instances | length' "$TMP/cmd.json")
        nodes=$(jq -r '[.instances[].node // "local"] | join(",")' "$TMP/cmd.json")
        echo "  $label run $r: edge $e ms, createdAt->completedAt $j ms (push $pu, deploy $dp, health_check $hc); $n instances on $nodes" >&2
        edges+=("$e") jsons+=("$j") deploys+=("$dp") healths+=("$hc") pushes+=("$pu")
    done
    RES_EDGE[$label]=$(cell "$(stats "${edges[@]}")")
    RES_JSON[$label]=$(cell "$(stats "${jsons[@]}")")
    RES_DEPLOY[$label]=$(cell "$(stats "${deploys[@]}")")
    RES_HEALTH[$label]=$(cell "$(stats "${healths[@]}")")
    RES_PUSH[$label]=$(cell "$(stats "${pushes[@]}")")
}
declare -A RES_EDGE RES_JSON RES_DEPLOY RES_HEALTH RES_PUSH

echo "berth swarm bench: RUNS=$RUNS REPLICAS=$REPLICAS, $(nproc) cores, load:$(uptime | sed 's/.*load average://')" >&2
start "$TMP/data-docker" -- --runtime docker
measure docker
stop_server

echo "making the two-node test swarm..." >&2
"$ROOT/scripts/swarm-testnet.sh" up "$SWARM_DIR" >/dev/null
# shellcheck disable=SC1091
source "$SWARM_DIR/env"
start "$TMP/data-swarm" "DOCKER_HOST=unix://$SWARM_MANAGER_SOCK" -- --runtime swarm \
    --registry "$SWARM_REGISTRY" --registry-user "$SWARM_REGISTRY_USER" \
    --registry-password "$SWARM_REGISTRY_PASSWORD"
measure swarm
stop_server

echo
echo "deploy of a built image to active, replicas = $REPLICAS, RUNS=$RUNS, ms: median (min-max)"
printf '%-34s %-22s %s\n' "measurement" "docker runtime" "swarm runtime (2 nodes)"
printf '%-34s %-22s %s\n' "deploy -> edge serves it" "${RES_EDGE[docker]}" "${RES_EDGE[swarm]}"
printf '%-34s %-22s %s\n' "createdAt -> completedAt" "${RES_JSON[docker]}" "${RES_JSON[swarm]}"
printf '%-34s %-22s %s\n' "  push step" "${RES_PUSH[docker]}" "${RES_PUSH[swarm]}"
printf '%-34s %-22s %s\n' "  deploy step (start instances)" "${RES_DEPLOY[docker]}" "${RES_DEPLOY[swarm]}"
printf '%-34s %-22s %s\n' "  health_check step" "${RES_HEALTH[docker]}" "${RES_HEALTH[swarm]}"
echo "the gap is the deploy step: on swarm it creates a service, waits for the dispatcher to"
echo "assign the tasks, for each node to resolve the image against the registry (pull) and"
echo "start its container, and polls the tasks until each runs with its published port; the"
echo "Docker runtime creates and starts containers on the local engine directly. The push"
echo "step is skipped for an image built before (cache hit: it is in the registry already)."

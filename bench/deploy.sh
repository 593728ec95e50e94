#!/usr/bin/env bash
# Deploy of an already built image and rollback, against `docker run` of the
# same image: time until the edge serves the new version, beside the time from
# `docker run -d` to the first 200.
#
# Target (issue): time from `deploy` of an already built image to active, and
# from `rollback` to serving, printed beside `docker run` + first 200 of the
# same image.
#
#   RUNS=3 bench/deploy.sh
#
# The edge is polled every POLL_MS (default 10) ms with curl. Each deploy run
# also prints where its time went (request, engine start, first 200 probe,
# switch with its edge swap and store transaction, finalize, CLI), from the
# deployment's step times and its berth log. See bench/README.md.
set -euo pipefail
shopt -s inherit_errexit

RUNS="${RUNS:-3}"
POLL_MS="${POLL_MS:-10}"
BENCH=deploy
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

iso_ms() { date -d "$1" +%s%3N; }
# "clone 12, analyze 0, ..." of the last timed command's deployment
step_times() {
    jq -r '[.steps[] | select(.status != "skipped") | "\(.name) \(.durationMs // 0)"] | join(", ")' "$TMP/cmd.json"
}
git_c() {
    git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"
}

# The app: busybox httpd FROM scratch serving /www/index.html.
APP="$TMP/app"
NONCE="$(now_ns)"
V1="v1 $NONCE"
V2="v2 $NONCE"
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
git -C "$APP" init -q -b main
echo "$V1" >"$APP/www/index.html"
git_c add -A
git_c commit -q -m v1
SHA1=$(git_c rev-parse HEAD)
echo "$V2" >"$APP/www/index.html"
git_c commit -q -am v2
SHA2=$(git_c rev-parse HEAD)

edge_body() {
    curl -s --max-time 2 -H "Host: $PROJECT.localhost" "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null || true
}
# poll_edge <t0 ns> <expected body> -> ms from t0 until the edge serves it
poll_edge() {
    local deadline=$(($(now_ns) + 120 * 1000000000)) pause
    pause=$(awk -v m="$POLL_MS" 'BEGIN{printf "%.3f", m/1000}')
    while (($(now_ns) < deadline)); do
        if [[ "$(edge_body)" == "$2" ]]; then ms_since "$1"; return 0; fi
        sleep "$pause"
    done
    echo "the edge never served '$2' within 120 s" >&2
    return 1
}
# poll_200 <t0 ns> <port> -> ms from t0 until the first 200
poll_200() {
    local deadline=$(($(now_ns) + 60 * 1000000000)) pause
    pause=$(awk -v m="$POLL_MS" 'BEGIN{printf "%.3f", m/1000}')
    while (($(now_ns) < deadline)); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$2/" 2>/dev/null)" == 200 ]]; then
            ms_since "$1"
            return 0
        fi
        sleep "$pause"
    done
    echo "the container never answered 200 within 60 s" >&2
    return 1
}

# breakdown <t0 ns> <edge ms> <cli ms>: where the last timed deploy's time
# went, from its JSON (steps and times, in ms, on this machine's clock like
# t0) and its berth log (the switch line: edge table swap and store
# transaction). Prints one line and appends the components to $TMP/parts:
# "request engine ready switch store_done cli" (ms).
breakdown() {
    local t0_ms=$(($1 / 1000000)) edge_at=$(($1 / 1000000 + $2)) cli_at=$(($1 / 1000000 + $3))
    local id created dstart dend hend completed switch_ts switch_text probes
    id=$(jq -r .id "$TMP/cmd.json")
    created=$(iso_ms "$(jq -r .createdAt "$TMP/cmd.json")")
    dstart=$(iso_ms "$(jq -r '.steps[] | select(.name == "deploy") | .startedAt' "$TMP/cmd.json")")
    dend=$(iso_ms "$(jq -r '.steps[] | select(.name == "deploy") | .completedAt' "$TMP/cmd.json")")
    hend=$(iso_ms "$(jq -r '.steps[] | select(.name == "health_check") | .completedAt' "$TMP/cmd.json")")
    completed=$(iso_ms "$(jq -r .completedAt "$TMP/cmd.json")")
    probes=$(jq -r '.steps[] | select(.name == "health_check") | .log' "$TMP/cmd.json" | grep -o '([0-9]* probes\?)' | tail -1)
    "$BERTH" logs "$id" --stream berth --json >"$TMP/log.json"
    switch_ts=$(jq -r 'if type == "array" then .[] else . end | select(.text | startswith("switch:")) | .ts' "$TMP/log.json" | tail -1)
    switch_text=$(jq -r 'if type == "array" then .[] else . end | select(.text | startswith("switch:")) | .text' "$TMP/log.json" | tail -1)
    switch_ts=$(iso_ms "$switch_ts")
    echo "    request->created $((created - t0_ms)), created->engine start $((dstart - created)), engine create+start $((dend - dstart)), started->ready $((hend - dend)) ${probes}, ready->switch logged $((switch_ts - hend)) [${switch_text#switch: }], switch->edge served (10 ms polls) $((edge_at - switch_ts)), switch->completed $((completed - switch_ts)), completed->CLI returned $((cli_at - completed))" >&2
    echo "$((created - t0_ms)) $((dend - dstart)) $((hend - dend)) $((switch_ts - hend)) $((completed - switch_ts)) $((cli_at - completed))" >>"$TMP/parts"
}

# timed <expected body> <berth args...>: run a berth command with --wait
# --json in the background while polling the edge; prints
# "<edge ms> <cli ms> <createdAt->completedAt ms>"; T0 is its start (ns).
timed() {
    local want="$1" t0 pid edge cli rc created completed
    shift
    t0=$(now_ns)
    T0=$t0
    rm -f "$TMP/cli.done"
    # the CLI's own end time, taken when it returns (not when the poller does)
    ( rc=0; "$BERTH" "$@" --wait --json >"$TMP/cmd.json" 2>"$TMP/cmd.err" || rc=$?
      echo "$(now_ns) $rc" >"$TMP/cli.done"; exit "$rc" ) &
    pid=$!
    edge=$(poll_edge "$t0" "$want") || { kill -TERM "$pid" 2>/dev/null; wait "$pid"; return 1; }
    rc=0
    wait "$pid" || rc=$?
    read -r cli _ <"$TMP/cli.done"
    cli=$(((cli - t0) / 1000000))
    if ((rc != 0)); then
        echo "berth $* failed:" >&2
        cat "$TMP/cmd.err" >&2
        return 1
    fi
    read -r created completed < <(jq -r '"\(.createdAt) \(.completedAt)"' "$TMP/cmd.json")
    echo "$edge $cli $(($(iso_ms "$completed") - $(iso_ms "$created")))"
}

# The drain case below runs with a 2 s drain timeout.
export BERTH_DRAIN_TIMEOUT="${BERTH_DRAIN_TIMEOUT:-2s}"
echo "berth deploy bench: RUNS=$RUNS POLL_MS=$POLL_MS, $(nproc) cores, load:$(uptime | sed 's/.*load average://')" >&2
start_server
"$BERTH" projects create "$PROJECT" --repo "$APP" >/dev/null

# Warm-up (not measured): build both versions; v2 is active.
echo "warm-up: building v1 and v2..." >&2
"$BERTH" deploy --project "$PROJECT" --ref "$SHA1" --wait --json >"$TMP/v1.json" 2>"$TMP/warm.err" ||
    { cat "$TMP/warm.err" >&2; exit 1; }
IMAGE=$(jq -r '.image.ref' "$TMP/v1.json")
"$BERTH" deploy --project "$PROJECT" --ref "$SHA2" --wait --json >/dev/null 2>"$TMP/warm.err" ||
    { cat "$TMP/warm.err" >&2; exit 1; }
[[ "$(edge_body)" == "$V2" ]] || { echo "the edge does not serve v2 after warm-up" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null || { echo "image $IMAGE missing" >&2; exit 1; }

dep_edge=() dep_cli=() dep_json=() rb_edge=() rb_cli=() rb_json=() ref=()
for r in $(seq 1 "$RUNS"); do
    echo "run $r/$RUNS" >&2
    # (a) deploy of v1, whose image exists (cache hit), over the active v2.
    timed "$V1" deploy --project "$PROJECT" --ref "$SHA1" >"$TMP/timed.out"
    out=$(cat "$TMP/timed.out")
    jq -r '.steps[] | select(.name == "build") | .log' "$TMP/cmd.json" | grep -qi "cache hit" ||
        echo "warning: the deploy of v1 was not a cache hit" >&2
    read -r e c j <<<"$out"
    dep_edge+=("$e") dep_cli+=("$c") dep_json+=("$j")
    echo "  deploy:   edge serves v1 after $e ms, CLI returned after $c ms, createdAt->completedAt $j ms ($(step_times))" >&2
    breakdown "$T0" "$e" "$c"

    # (b) rollback: v2 again, inside its bake window (v2 stayed warm after
    # the deploy of v1): a route flip to v2's running container.
    out=$(timed "$V2" rollback --project "$PROJECT" --service web)
    read -r e c j <<<"$out"
    rb_edge+=("$e") rb_cli+=("$c") rb_json+=("$j")
    echo "  rollback: edge serves v2 after $e ms, CLI returned after $c ms, createdAt->completedAt $j ms ($(step_times))" >&2

    # (c) docker run of the same image (v1) and the first 200.
    # (another process may take the free port first: try another one)
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        t0=$(now_ns)
        cid=$(docker run -d --label "berthbench=$PROJECT" -p "127.0.0.1:$port:3000" "$IMAGE" 2>"$TMP/run.err") && break
        docker ps -aq --filter "label=berthbench=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
        cid=""
    done
    [[ -n "$cid" ]] || { cat "$TMP/run.err" >&2; exit 1; }
    d=$(poll_200 "$t0" "$port")
    docker rm -f "$cid" >/dev/null
    ref+=("$d")
    echo "  docker run -> first 200 after $d ms" >&2
done

# (d) A deploy over an app that ignores SIGTERM (busybox httpd is PID 1
# without a handler) with bake = "0" and the server's --drain-timeout 2s:
# time from the edge serving the new version to the CLI's return (the old
# container's 10 s stop grace no longer holds it).
DRAIN_PROJECT="${PROJECT}d"
printf '[services.web]\nbake = "0"\n' >"$APP/berth.toml"
git_c add -A
git_c commit -q -m "no bake"
SHA3=$(git_c rev-parse HEAD)
echo "$V1" >"$APP/www/index.html"
git_c commit -q -am "v1, no bake"
SHA4=$(git_c rev-parse HEAD)
"$BERTH" projects create "$DRAIN_PROJECT" --repo "$APP" >/dev/null
for sha in "$SHA3" "$SHA4"; do
    "$BERTH" deploy --project "$DRAIN_PROJECT" --ref "$sha" --wait --json >/dev/null 2>"$TMP/warm.err" ||
        { cat "$TMP/warm.err" >&2; exit 1; }
done
drain_after=()
for r in $(seq 1 "$RUNS"); do
    if ((r % 2)); then sha=$SHA3 want=$V2; else sha=$SHA4 want=$V1; fi
    PROJECT="$DRAIN_PROJECT" timed "$want" deploy --project "$DRAIN_PROJECT" --ref "$sha" >"$TMP/drain.out" ||
        { echo "the drain-case deploy failed" >&2; exit 1; }
    read -r e c j <"$TMP/drain.out"
    drain_after+=("$((c - e))")
    echo "  SIGTERM-ignoring app, bake 0: edge serves after $e ms, CLI returned $((c - e)) ms after that" >&2
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", (b>0)?a/b:0}'; }
read -r de_med _ _ <<<"$(stats "${dep_edge[@]}")"
read -r dc_med _ _ <<<"$(stats "${dep_cli[@]}")"
read -r re_med _ _ <<<"$(stats "${rb_edge[@]}")"
read -r rc_med _ _ <<<"$(stats "${rb_cli[@]}")"
read -r ref_med _ _ <<<"$(stats "${ref[@]}")"
REF_CELL="$(cell "$(stats "${ref[@]}")")"
part() { cell "$(stats $(awk -v c="$1" '{print $c}' "$TMP/parts"))"; }

echo
echo "berth deploy bench, RUNS=$RUNS, times in ms: median (min-max); reference = docker run -d + first 200"
printf '%-42s %-20s %-20s %s\n' "measurement" "berth" "docker run" "berth/docker"
printf '%-42s %-20s %-20s %s\n' "deploy (built image) -> edge serves it" "$(cell "$(stats "${dep_edge[@]}")")" "$REF_CELL" "$(ratio "$de_med" "$ref_med")"
printf '%-42s %-20s %-20s %s\n' "deploy (built image) -> CLI says active" "$(cell "$(stats "${dep_cli[@]}")")" "$REF_CELL" "$(ratio "$dc_med" "$ref_med")"
printf '%-42s %-20s %-20s %s\n' "deploy createdAt -> completedAt" "$(cell "$(stats "${dep_json[@]}")")" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  of which: CLI start + request -> created" "$(part 1)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  engine create + start" "$(part 2)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  started -> first 200 probe (ready)" "$(part 3)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  ready -> switch (edge swap + store)" "$(part 4)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  switch -> completed (finalize)" "$(part 5)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "  completed -> CLI returned (SSE)" "$(part 6)" "-" "-"
printf '%-42s %-20s %-20s %s\n' "rollback (bake window) -> edge serves it" "$(cell "$(stats "${rb_edge[@]}")")" "$REF_CELL" "$(ratio "$re_med" "$ref_med")"
printf '%-42s %-20s %-20s %s\n' "rollback (bake window) -> CLI says active" "$(cell "$(stats "${rb_cli[@]}")")" "$REF_CELL" "$(ratio "$rc_med" "$ref_med")"
printf '%-42s %-20s %-20s %s\n' "rollback createdAt -> completedAt" "$(cell "$(stats "${rb_json[@]}")")" "-" "-"
printf '%-42s %-20s %-20s %s\n' "SIGTERM-ignoring app: served -> CLI returns" "$(cell "$(stats "${drain_after[@]}")")" "-" "-"
echo "verdict: printed beside docker run as the issue asks - a deploy of a built image is served after ${de_med} ms ($(ratio "$de_med" "$ref_med")x docker run + first 200, ${ref_med} ms), a rollback after ${re_med} ms ($(ratio "$re_med" "$ref_med")x); the CLI reports active after ${dc_med} / ${rc_med} ms"

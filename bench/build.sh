#!/usr/bin/env bash
# Cold build and no-change redeploy: berth against plain `docker build` of the
# same kind of context, in the same run, on the same Docker Engine.
#
# Target: berth's overhead on a cold build <= 10 %, and its no-change path
# >= 5x faster than docker's cached rebuild.
#
#   RUNS=3 FILES=300 WORK_LOOPS=300000 bench/build.sh
#
# berth's build time is the sum of the clone, analyze, build and push step
# durations (durationMs) of the deployment; docker's is the wall time of
# `docker build` (legacy builder, as berth uses). See bench/README.md.
set -euo pipefail
shopt -s inherit_errexit

RUNS="${RUNS:-3}"
FILES="${FILES:-300}"
WORK_LOOPS="${WORK_LOOPS:-300000}"
BENCH=build
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

git_c() {
    git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"
}

# The app: busybox httpd FROM scratch, a www dir of $FILES small files plus
# one file unique per run, and a few seconds of real work in a RUN.
APP="$TMP/app"
mkdir -p "$APP/www"
cp /bin/busybox "$APP/busybox"
for i in $(seq 1 "$FILES"); do
    printf 'static file %d\n' "$i" >"$APP/www/f$i.txt"
done
echo "<h1>berth build bench</h1>" >"$APP/www/index.html"
cat >"$APP/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
RUN ["/bin/sh", "-c", "i=0; while [ \$i -lt $WORK_LOOPS ]; do i=\$((i+1)); done"]
EXPOSE 3000
CMD ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"]
EOF
uniq_file() { echo "run $1 $(now_ns) $RANDOM$RANDOM" >"$2/www/unique.txt"; }

git -C "$APP" init -q -b main
uniq_file warmup "$APP"
git_c add -A
git_c commit -q -m "warm-up"

# A docker build context: the app's tracked files with a fresh unique file.
new_context() { # name
    local dir="$TMP/ctx-$1"
    mkdir -p "$dir"
    git -C "$APP" archive HEAD | tar -x -C "$dir"
    uniq_file "$1" "$dir"
    echo "$dir"
}
docker_build() { # context tag -> wall ms
    local t0
    t0=$(now_ns)
    DOCKER_BUILDKIT=0 docker build -q -t "berthbench/$PROJECT:$2" "$1" >"$TMP/docker-build.out" 2>&1 ||
        { cat "$TMP/docker-build.out" >&2; return 1; }
    ms_since "$t0"
}

# RFC 3339 time -> ms since the epoch
iso_ms() { date -d "$1" +%s%3N; }

# berth deploy; prints "<build ms> <createdAt->completedAt ms> <cli wall ms> <sha>"
berth_deploy() { # extra args...
    local t0 wall out="$TMP/deploy.json" b created completed sha
    t0=$(now_ns)
    if ! "$BERTH" deploy --project "$PROJECT" --wait --json "$@" >"$out" 2>"$TMP/deploy.err"; then
        echo "berth deploy failed:" >&2
        cat "$TMP/deploy.err" >&2
        return 1
    fi
    wall=$(ms_since "$t0")
    read -r b created completed sha < <(jq -r '
        ([.steps[] | select(.name == "clone" or .name == "analyze" or .name == "build" or .name == "push")
          | .durationMs // 0] | add) as $b
        | "\($b) \(.createdAt) \(.completedAt) \(.commit.sha // "-")"' "$out")
    echo "$b $(($(iso_ms "$completed") - $(iso_ms "$created"))) $wall $sha"
}
build_step_log() { jq -r '.steps[] | select(.name == "build") | .log' "$TMP/deploy.json"; }
# "clone 120, analyze 3, build 2900, push 0" of the last deployment
step_times() {
    jq -r '[.steps[] | select(.name == "clone" or .name == "analyze" or .name == "build" or .name == "push")
        | "\(.name) \(.durationMs // 0)"] | join(", ")' "$TMP/deploy.json"
}

echo "berth build bench: RUNS=$RUNS FILES=$FILES WORK_LOOPS=$WORK_LOOPS, $(nproc) cores, load:$(uptime | sed 's/.*load average://')" >&2
start_server
"$BERTH" projects create "$PROJECT" --repo "$APP" >/dev/null

# Warm-up (not measured): the shared base layers (busybox, --install) are
# in the engine's cache for both tools, and berth has an active deployment.
echo "warm-up..." >&2
berth_deploy >/dev/null
docker_build "$(new_context warmup)" warmup >/dev/null

cold_b=() cold_d=() cold_active=() nc_b=() nc_d=()
last_sha="" last_ctx=""
for r in $(seq 1 "$RUNS"); do
    echo "run $r/$RUNS: cold..." >&2
    uniq_file "$r" "$APP"
    git_c commit -q -am "run $r"
    ctx=$(new_context "$r")
    # Alternate which tool goes first, so neither always gets a warmer machine.
    if ((r % 2)); then
        out=$(berth_deploy)
        d=$(docker_build "$ctx" "cold$r")
    else
        d=$(docker_build "$ctx" "cold$r")
        out=$(berth_deploy)
    fi
    read -r b active _ sha <<<"$out"
    if build_step_log | grep -qi "cache hit"; then
        echo "warning: berth's cold build reported a cache hit" >&2
    fi
    cold_b+=("$b") cold_d+=("$d") cold_active+=("$active")
    last_sha="$sha" last_ctx="$ctx"
    echo "  berth build ${b} ms ($(step_times); deploy to active ${active} ms), docker build ${d} ms" >&2

    echo "run $r/$RUNS: no change..." >&2
    out=$(berth_deploy --ref "$last_sha")
    read -r b _ _ _ <<<"$out"
    build_step_log | grep -qi "cache hit" || echo "warning: berth's no-change build was not a cache hit" >&2
    d=$(docker_build "$last_ctx" "cold$r")
    nc_b+=("$b") nc_d+=("$d")
    echo "  berth clone+analyze+build ${b} ms ($(step_times)), docker cached build ${d} ms" >&2
done

read -r cb_med _ _ <<<"$(stats "${cold_b[@]}")"
read -r cd_med _ _ <<<"$(stats "${cold_d[@]}")"
read -r nb_med _ _ <<<"$(stats "${nc_b[@]}")"
read -r nd_med _ _ <<<"$(stats "${nc_d[@]}")"

echo
echo "berth build bench, RUNS=$RUNS, times in ms: median (min-max)"
printf '%-40s %-22s %-22s %s\n' "measurement" "berth" "docker build" "berth/docker"
printf '%-40s %-22s %-22s %s\n' "cold build (clone+analyze+build+push)" \
    "$(cell "$(stats "${cold_b[@]}")")" "$(cell "$(stats "${cold_d[@]}")")" \
    "$(awk -v a="$cb_med" -v b="$cd_med" 'BEGIN{printf "%.2f", (b>0)?a/b:0}')"
printf '%-40s %-22s %-22s %s\n' "no-change (clone+analyze+build)" \
    "$(cell "$(stats "${nc_b[@]}")")" "$(cell "$(stats "${nc_d[@]}")")" \
    "$(awk -v a="$nb_med" -v b="$nd_med" 'BEGIN{printf "%.2f", (b>0)?a/b:0}')"
printf '%-40s %-22s %-22s %s\n' "cold deploy to active (info)" \
    "$(cell "$(stats "${cold_active[@]}")")" "-" "-"

awk -v cb="$cb_med" -v cd="$cd_med" -v nb="$nb_med" -v nd="$nd_med" 'BEGIN {
    over = (cd > 0) ? (cb / cd - 1) * 100 : 0
    speed = (nb > 0) ? nd / nb : 0
    ok1 = (over <= 10); ok2 = (speed >= 5)
    printf "verdict: %s - cold build overhead %+.1f %% (target <= 10 %%: %s), no-change %.1fx faster than docker cached rebuild (target >= 5x: %s)\n",
        (ok1 && ok2) ? "PASS" : "FAIL", over, ok1 ? "met" : "missed", speed, ok2 ? "met" : "missed"
}'

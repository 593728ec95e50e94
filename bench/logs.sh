#!/usr/bin/env bash
# A container printing as fast as it can: lines per second berth stores, and
# the app's own throughput with and without berth attached.
#
# Target (issue): a container printing as fast as it can: lines per second
# stored, and the app's own throughput with and without berth attached.
#
#   RUNS=3 LINES=200000 bench/logs.sh
#
# The app is busybox sh printing LINES numbered lines then DONE (httpd serves
# on 3000 meanwhile, for the health check). Stored: the deployment's logs are
# polled through the API every 50 ms. The app's own throughput comes from the
# timestamps docker recorded (`docker logs --timestamps`). See bench/README.md.
set -euo pipefail
shopt -s inherit_errexit

RUNS="${RUNS:-3}"
LINES="${LINES:-200000}"
BENCH=logs
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

[[ "$LINES" =~ ^[1-9][0-9]*$ ]] || { echo "LINES must be a positive integer" >&2; exit 1; }
git_c() {
    git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"
}
api() { # path -> JSON
    curl -fsS --max-time 30 -H "Authorization: Bearer $TOKEN" "$BERTH_API/api/v1/$1"
}
ts_ns() { date -d "$1" +%s%N; }
rate() { awk -v n="$1" -v ns="$2" 'BEGIN{printf "%.0f", (ns>0)?n/(ns/1e9):0}'; }

# The app: httpd in the background, then LINES numbered lines as fast as
# busybox sh can print them, then DONE; it keeps serving afterwards.
APP="$TMP/app"
mkdir -p "$APP/www"
cp /bin/busybox "$APP/busybox"
echo "logs bench" >"$APP/www/index.html"
cat >"$APP/Dockerfile" <<DOCKERFILE
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
EXPOSE 3000
CMD ["/bin/sh", "-c", "/bin/busybox httpd -f -p 3000 -h /www & i=0; while [ \$i -lt $LINES ]; do echo line \$i; i=\$((i+1)); done; echo DONE; wait"]
DOCKERFILE
git -C "$APP" init -q -b main
git_c add -A
git_c commit -q -m "chatty app"
SHA=$(git_c rev-parse HEAD)

# app_rate <container> -> "<lines/s> <first ts ns> <DONE ts ns>" from docker's
# timestamps. berth's containers rotate their log (json-file max-size 10m,
# max-file 3): when the oldest file is gone, count from the first line kept.
app_rate() {
    local first last n0=0
    first=$(docker logs --timestamps "$1" 2>/dev/null | sed -n 1p)
    last=$(docker logs --timestamps --tail 1 "$1" 2>/dev/null)
    [[ "$last" == *" DONE" ]] || { echo "container $1 has not printed DONE" >&2; return 1; }
    [[ "$first" =~ \ line\ ([0-9]+)$ ]] && n0=${BASH_REMATCH[1]}
    ((n0 == 0)) || echo "note: container $1's log starts at line $n0 (rotated)" >&2
    first=$(ts_ns "${first%% *}")
    last=$(ts_ns "${last%% *}")
    echo "$(rate $((LINES - n0 + 1)) $((last - first))) $first $last"
}

# Stdout lines stored for a deployment, counted page by page.
count_stdout() { # id
    local after=0 total=0 n last
    for _ in $(seq 1 1000); do
        read -r n last < <(api "deployments/$1/logs?stream=stdout&after=$after&limit=50000" |
            jq -r '"\(length) \(.[-1].seq // 0)"')
        total=$((total + n))
        ((n == 50000)) || break
        after=$last
    done
    echo "$total"
}
# Wait until the DONE line of a deployment is stored (bounded).
wait_done() { # id
    for _ in $(seq 1 1200); do
        [[ "$(api "deployments/$1/logs?stream=stdout&limit=1&tail=true" | jq -r '.[0].text // ""')" == DONE ]] && return 0
        sleep 0.1
    done
    echo "the DONE line of deployment $1 was not stored within 120 s" >&2
    return 1
}

# The reference: plain docker run of the same image.
docker_only() {
    local cid i
    cid=$(docker run -d --label "berthbench=$PROJECT" "$IMAGE")
    for i in $(seq 1 1200); do
        [[ "$(docker logs --tail 1 "$cid" 2>/dev/null)" == DONE ]] && break
        sleep 0.1
    done
    app_rate "$cid" | cut -d' ' -f1
    docker rm -f "$cid" >/dev/null
}

# With berth: a deployment of the built image (cache hit); poll the stored
# lines until DONE. Prints "<app lines/s> <stored lines/s> <stored> <dropped> <lag ms>".
with_berth() {
    local id j first_seq="" t_first="" done_seq="" t_done="" last_seq="" t_change stalled=0 cid
    id=$("$BERTH" deploy --project "$PROJECT" --ref "$SHA" --json | jq -r .id)
    t_change=$(now_ns)
    # One request and one jq per poll, to take as little CPU as possible
    # from the app and berth. Bounded: 3000 polls of >= 50 ms, or 15 s
    # without a new line once started.
    local seq text
    for _ in $(seq 1 3000); do
        read -r seq text < <(api "deployments/$id/logs?stream=stdout&limit=1&tail=true" |
            jq -r '.[0] // {} | "\(.seq // "") \(.text // "")"')
        if [[ -n "$seq" ]]; then
            if [[ -z "$first_seq" ]]; then
                first_seq=$seq
                t_first=$(now_ns)
            fi
            if [[ "$text" == DONE ]]; then
                t_done=$(now_ns)
                done_seq=$seq
                break
            fi
            if [[ "$seq" != "$last_seq" ]]; then
                last_seq=$seq
                t_change=$(now_ns)
            elif (($(now_ns) - t_change > 15000000000)); then
                stalled=1
                break
            fi
        fi
        sleep 0.05
    done
    if [[ -z "$first_seq" ]]; then
        echo "no stdout line of deployment $id was stored" >&2
        return 1
    fi
    if ((stalled)) || [[ -z "$done_seq" ]]; then
        echo "warning: DONE of deployment $id was never stored (dropped?); counting up to the last stored line" >&2
        done_seq=$last_seq
        t_done=$t_change
    fi
    local stored dropped
    stored=$(count_stdout "$id")
    # Wait until the deployment is finished (active) before reading its container.
    for _ in $(seq 1 600); do
        j=$(api "deployments/$id")
        [[ "$(jq -r .status <<<"$j")" =~ ^(succeeded|failed|cancelled)$ ]] && break
        sleep 0.1
    done
    [[ "$(jq -r .status <<<"$j")" == succeeded ]] || { echo "deployment $id: $(jq -r '.status + " " + (.failureMessage // "")' <<<"$j")" >&2; return 1; }
    dropped=$(api "deployments/$id/logs?stream=berth&limit=50000" |
        jq '[.[] | .text | capture("^(?<n>[0-9]+) log lines dropped") | .n | tonumber] | add // 0')
    cid=$(jq -r '.runtime.instanceId // empty' <<<"$j")
    [[ -n "$cid" ]] || cid=$(docker ps -q --filter "label=dev.berth.deployment=$id" | head -n 1)
    local app app_first app_done
    read -r app app_first app_done <<<"$(app_rate "$cid")"
    echo "$app $(rate "$stored" $((t_done - t_first))) $stored $dropped $(((t_done - app_done) / 1000000))"
}

echo "berth logs bench: RUNS=$RUNS LINES=$LINES, $(nproc) cores, load:$(uptime | sed 's/.*load average://')" >&2
start_server
"$BERTH" projects create "$PROJECT" --repo "$APP" >/dev/null
echo "warm-up: building the image..." >&2
"$BERTH" deploy --project "$PROJECT" --ref "$SHA" --wait --json >"$TMP/warm.json" 2>"$TMP/warm.err" ||
    { cat "$TMP/warm.err" >&2; exit 1; }
IMAGE=$(jq -r '.image.ref' "$TMP/warm.json")
# Its lines must all be stored before a measured run starts.
wait_done "$(jq -r .id "$TMP/warm.json")"

b_app=() b_stored=() b_count=() b_dropped=() b_lag=() d_app=()
for r in $(seq 1 "$RUNS"); do
    echo "run $r/$RUNS" >&2
    if ((r % 2)); then
        out=$(with_berth)
        d=$(docker_only)
    else
        d=$(docker_only)
        out=$(with_berth)
    fi
    read -r a s n dr lag <<<"$out"
    b_app+=("$a") b_stored+=("$s") b_count+=("$n") b_dropped+=("$dr") b_lag+=("$lag") d_app+=("$d")
    echo "  with berth: app $a lines/s, stored $s lines/s ($n of $((LINES + 1)) stored, $dr dropped reported, DONE stored ${lag} ms after printed); docker only: app $d lines/s" >&2
done

read -r ba_med _ _ <<<"$(stats "${b_app[@]}")"
read -r bs_med _ _ <<<"$(stats "${b_stored[@]}")"
read -r da_med _ _ <<<"$(stats "${d_app[@]}")"
read -r bd_med _ bd_max <<<"$(stats "${b_dropped[@]}")"
read -r bn_med bn_min _ <<<"$(stats "${b_count[@]}")"

echo
echo "berth logs bench, RUNS=$RUNS, LINES=$LINES: median (min-max)"
printf '%-40s %-26s %-26s %s\n' "measurement" "berth attached" "docker only" "berth/docker"
printf '%-40s %-26s %-26s %s\n' "app throughput (lines/s)" "$(cell "$(stats "${b_app[@]}")")" "$(cell "$(stats "${d_app[@]}")")" \
    "$(awk -v a="$ba_med" -v b="$da_med" 'BEGIN{printf "%.2f", (b>0)?a/b:0}')"
printf '%-40s %-26s %-26s %s\n' "lines stored per second" "$(cell "$(stats "${b_stored[@]}")")" "-" "-"
printf '%-40s %-26s %-26s %s\n' "lines stored (of $((LINES + 1)))" "$(cell "$(stats "${b_count[@]}")")" "-" "-"
printf '%-40s %-26s %-26s %s\n' "dropped lines berth reported" "$(cell "$(stats "${b_dropped[@]}")")" "-" "-"
printf '%-40s %-26s %-26s %s\n' "DONE stored after printed (ms)" "$(cell "$(stats "${b_lag[@]}")")" "-" "-"

awk -v ba="$ba_med" -v da="$da_med" -v bs="$bs_med" -v dmax="$bd_max" -v nmin="$bn_min" -v total=$((LINES + 1)) 'BEGIN {
    slow = (da > 0) ? (1 - ba / da) * 100 : 0
    keeps = (dmax == 0 && nmin == total)
    printf "verdict: berth stores %.0f lines/s; %s; the app runs %.1f %% %s with berth attached (%.0f vs %.0f lines/s)\n",
        bs, keeps ? "every line stored, none dropped" : sprintf("lines lost: at worst %d stored of %d, %d dropped reported", nmin, total, dmax),
        (slow < 0 ? -slow : slow), (slow >= 0 ? "slower" : "faster"), ba, da
}'

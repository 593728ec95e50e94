#!/usr/bin/env bash
# The PostgreSQL store beside SQLite, in one run, on two servers started here
# (one on <dir>/berth.db, one on a private PostgreSQL 15 cluster over TCP on
# 127.0.0.1, as a user would point --database-url at it):
#  1. API latency: p50/p99 of N sequential requests of
#     GET /api/v1/deployments?limit=20 (what `berth status --json` calls) and
#     GET /api/v1/projects, on 20 projects with a secret each, first with no
#     deployments, then again with the deploy history of step 2;
#  2. a deploy of a built image: DEPLOYS deploys per store, through the CLI
#     (`berth deploy --wait --json`), alternating two commits whose images
#     were built in a warm-up, so each deploy is a cache hit that starts a
#     container, waits for it to answer and switches the route; p50/p99 of
#     request -> the CLI reports it active, and of the deployment's own
#     createdAt -> completedAt. The two stores' deploys are interleaved, so
#     a load change hits both alike.
#  3. the PostgreSQL side: the size of the deployment records as text and
#     as stored (and their TOAST compression), and with pg_stat_statements
#     (when installed) the server's own time per statement of the last
#     round of GETs, beside what the servers' background loops ran
#     meanwhile.
# Each line prints both stores and the PostgreSQL/SQLite ratio of the p99.
# PG_BEFORE_0012=1 undoes the PostgreSQL migration 0012 right after start
# (deployment records compressed with pglz, no deployments_recent index):
# the same binary before and after, for an A/B in one window.
# Target (issue 10): PostgreSQL within 1.5x of SQLite.
#
#   bench/store.sh [N]    (N requests per GET, default 500; DEPLOYS=20;
#                          BERTH_BIN=path/to/berth, default target/release/berth)
#
# Needs /usr/lib/postgresql/15/bin (initdb, postgres, pg_isready), curl, and
# for step 2 a Docker Engine, git, jq and /bin/busybox (without them step 2
# is skipped with a notice). As root the cluster runs as the postgres user.
# Everything it starts is stopped at exit (by PID); the containers and images
# of its own two projects are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
DEPLOYS=${DEPLOYS:-20}
BIN=${BERTH_BIN:-target/release/berth}
PG=${BERTH_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p berth (or set BERTH_BIN)"; exit 1; }
[ -x "$PG/initdb" ] || { echo "PostgreSQL 15 missing ($PG)"; exit 1; }
[[ "$N" =~ ^[1-9][0-9]*$ && "$DEPLOYS" =~ ^[0-9]+$ ]] || { echo "N and DEPLOYS must be numbers"; exit 1; }

# Not /tmp: creating files there is slow on this machine (see lib.sh).
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/berth-store-bench.XXXXXX")
chmod 755 "$TMP"
pids=()
PROJECTS=("sb$$sqlite" "sb$$postgres")
cleanup() {
    set +e
    # The servers first, then the postmaster by its own PID (runuser does
    # not pass a signal on).
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    [ -f "$TMP/pg/data/postmaster.pid" ] && kill -INT "$(head -1 "$TMP/pg/data/postmaster.pid")" 2>/dev/null
    wait 2>/dev/null
    if command -v docker >/dev/null 2>&1; then
        for p in "${PROJECTS[@]}"; do
            docker ps -aq --filter "label=dev.berth.project=$p" | xargs -r docker rm -f >/dev/null 2>&1
            docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "^berth/$p-" | xargs -r docker rmi -f >/dev/null 2>&1
        done
    fi
    for _ in $(seq 50); do [ -f "$TMP/pg/data/postmaster.pid" ] || break; sleep 0.1; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now_ns() { date +%s%N; }
iso_ms() { date -d "$1" +%s%3N; }

mkdir -p "$TMP/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$TMP/pg"
as_pg "$PG/initdb" -D "$TMP/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
PGPORT=$(port)
# pg_stat_statements (when installed) times each statement inside the
# server: the store's own per-request figure, steadier than curl's.
STATS=()
[ -f "$PG/../lib/pg_stat_statements.so" ] && STATS=(-c shared_preload_libraries=pg_stat_statements)
as_pg "$PG/postgres" -D "$TMP/pg/data" -k "$TMP/pg" -p "$PGPORT" -h 127.0.0.1 "${STATS[@]}" >"$TMP/pg.log" 2>&1 &
for _ in $(seq 100); do "$PG/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
as_pg "$PG/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE berth" >/dev/null
psql_q() { as_pg "$PG/psql" -qAtX -h 127.0.0.1 -p "$PGPORT" -U postgres -d berth -c "$1"; }
[ ${#STATS[@]} = 0 ] || psql_q "CREATE EXTENSION pg_stat_statements" >/dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT/berth"
KEY=$(head -c 32 /dev/urandom | base64)
TOKEN=bench-token-0123456789

# start <name> <var> <extra args...>: a server; its API port into <var> (not
# through $(...): the PID must reach this shell's pids for the cleanup).
start() {
    local name=$1 var=$2; shift 2
    local api; api=$(port)
    "$BIN" server --data-dir "$TMP/$name" --api-listen "127.0.0.1:$api" \
        --http-listen "127.0.0.1:$(port)" --token "$TOKEN" --master-key "$KEY" "$@" \
        >"$TMP/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do curl -fs "http://127.0.0.1:$api/api/v1/health" >/dev/null && break; sleep 0.05; done
    curl -fs "http://127.0.0.1:$api/api/v1/health" >/dev/null || { echo "the $name server did not start:"; tail -5 "$TMP/$name.log"; exit 1; }
    printf -v "$var" '%s' "$api"
}
as_store() { local api=$1; shift; BERTH_API="http://127.0.0.1:$api" BERTH_TOKEN=$TOKEN "$BIN" "$@"; }

# "p50 p99" (ms) of the numbers on stdin
pcts() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.5); j=int(NR*0.99); if (i<1) i=1; if (j<1) j=1; printf "%.2f %.2f", a[i], a[j]}'; }
measure() { # api path -> "p50 p99" in ms
    local api=$1 path=$2
    for _ in $(seq "$N"); do
        curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$api$path"
    done | awk '{print $1 * 1000}' | pcts
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", (b>0)?a/b:0}'; }
row() { # label "sqlite p50 p99" "postgres p50 p99" unit-format
    local s50 s99 p50 p99
    read -r s50 s99 <<<"$2"; read -r p50 p99 <<<"$3"
    printf "%-34s sqlite p50 $4 p99 $4 | postgres p50 $4 p99 $4 | p99 ratio %sx (p50 %sx)\n" \
        "$1" "$s50" "$s99" "$p50" "$p99" "$(ratio "$p99" "$s99")" "$(ratio "$p50" "$s50")"
}
gets() { # heading
    echo "$1"
    for path in "/api/v1/deployments?limit=20" "/api/v1/projects"; do
        row "  GET $path" "$(measure "$SQ" "$path")" "$(measure "$PQ" "$path")" "%6.2f ms"
    done
}

start sqlite SQ
start postgres PQ --database-url "$PGURL"
if [ "${PG_BEFORE_0012:-}" = 1 ]; then
    # The PostgreSQL store as it read deployments before its migration 0012
    # (same binary, for an A/B in one window): pglz records, no
    # newest-first index.
    psql_q "ALTER TABLE deployments ALTER COLUMN data SET COMPRESSION pglz; DROP INDEX IF EXISTS deployments_recent" >/dev/null
fi
for api in "$SQ" "$PQ"; do
    for i in $(seq 20); do
        as_store "$api" projects create "p$i" --repo /srv/git/p$i.git >/dev/null
        as_store "$api" env set --project "p$i" --secret K=v >/dev/null
    done
done

echo "berth $("$BIN" --version | awk '{print $2}') ($BIN), $(nproc) cores, load:$(uptime | sed 's/.*load average://')"
echo "PostgreSQL over TCP 127.0.0.1 ($PG); $N sequential requests per GET (curl time_total); 20 projects"
gets "API, no deployments:"

# --- 2. a deploy of a built image ---
deploy_ok=1
for tool in docker git jq; do command -v "$tool" >/dev/null 2>&1 || { echo "deploys skipped: $tool missing"; deploy_ok=0; }; done
[ -x /bin/busybox ] || { echo "deploys skipped: /bin/busybox missing"; deploy_ok=0; }
[ "$deploy_ok" = 1 ] && { docker info >/dev/null 2>&1 || { echo "deploys skipped: the Docker Engine does not answer"; deploy_ok=0; }; }
[ "$DEPLOYS" -gt 0 ] || deploy_ok=0
if [ "$deploy_ok" = 1 ]; then
    # The app: busybox httpd FROM scratch, two commits (v1, v2).
    APP="$TMP/app"
    mkdir -p "$APP/www"
    cp /bin/busybox "$APP/busybox"
    cat >"$APP/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
COPY www /www
EXPOSE 3000
CMD ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"]
DOCKERFILE
    git_c() { git -C "$APP" -c user.name=bench -c user.email=bench@localhost -c commit.gpgsign=false "$@"; }
    git -C "$APP" init -q -b main
    echo "v1 $$" >"$APP/www/index.html"; git_c add -A; git_c commit -q -m v1
    SHAS=("$(git_c rev-parse HEAD)")
    echo "v2 $$" >"$APP/www/index.html"; git_c commit -q -am v2
    SHAS+=("$(git_c rev-parse HEAD)")
    APIS=("$SQ" "$PQ")
    # deploy <store index> <sha> -> appends "cli_ms json_ms" to $TMP/deploys.<i>
    deploy() {
        local i=$1 sha=$2 t0 t1
        t0=$(now_ns)
        as_store "${APIS[$i]}" deploy --project "${PROJECTS[$i]}" --ref "$sha" --wait --json >"$TMP/d.json" 2>"$TMP/d.err" ||
            { echo "deploy on store $i failed:"; cat "$TMP/d.err"; tail -3 "$TMP/d.json"; exit 1; }
        t1=$(now_ns)
        [ -n "${WARM:-}" ] || jq -e '.steps[] | select(.name == "build") | (.log // "") | test("cache hit"; "i")' "$TMP/d.json" >/dev/null ||
            echo "warning: a deploy was not a cache hit of the built image" >&2
        echo "$(((t1 - t0) / 1000)) $(($(iso_ms "$(jq -r .completedAt "$TMP/d.json")") - $(iso_ms "$(jq -r .createdAt "$TMP/d.json")")))" >>"$TMP/deploys.$i"
    }
    for i in 0 1; do
        as_store "${APIS[$i]}" projects create "${PROJECTS[$i]}" --repo "$APP" >/dev/null
        # Warm-up (not measured): build both commits' images.
        for sha in "${SHAS[@]}"; do WARM=1 deploy "$i" "$sha"; done
        rm -f "$TMP/deploys.$i"
    done
    for r in $(seq "$DEPLOYS"); do
        sha=${SHAS[$((r % 2))]}
        # Alternate which store goes first.
        if ((r % 2)); then order="0 1"; else order="1 0"; fi
        for i in $order; do deploy "$i" "$sha"; done
    done
    cli() { awk '{print $1 / 1000}' "$TMP/deploys.$1" | pcts; }
    rec() { awk '{print $2}' "$TMP/deploys.$1" | pcts; }
    echo "deploy of a built image, $DEPLOYS per store (cache hit, start, health check, switch), interleaved:"
    row "  request -> CLI reports active" "$(cli 0)" "$(cli 1)" "%6.0f ms"
    row "  createdAt -> completedAt" "$(rec 0)" "$(rec 1)" "%6.0f ms"
    [ ${#STATS[@]} = 0 ] || psql_q "SELECT pg_stat_statements_reset()" >/dev/null
    gets "API again, with that deploy history ($((DEPLOYS + 2)) deployments of one project):"
fi

# --- 3. the PostgreSQL side of those reads ---
# What the deployments list reads (the JSON records: size as text and as
# stored, compressed or not) and the server's own time per statement.
echo "PostgreSQL side (PG_BEFORE_0012=${PG_BEFORE_0012:-0}; deployments_recent index: $(psql_q "SELECT count(*) FROM pg_indexes WHERE indexname = 'deployments_recent'")):"
psql_q "SELECT '  deployments.data: ' || count(*) || ' rows, ' || coalesce(avg(octet_length(data))::int, 0) || ' B as text, '
        || coalesce(avg(pg_column_size(data))::int, 0) || ' B stored (compression: '
        || coalesce(string_agg(DISTINCT coalesce(pg_column_compression(data), 'none'), ','), '-') || ')' FROM deployments"
if [ ${#STATS[@]} != 0 ]; then
    echo "  server time per statement (pg_stat_statements, the last round of GETs and what the servers did meanwhile):"
    psql_q "SELECT format('    %s calls, mean %s ms, max %s ms: %s', calls, round(mean_exec_time::numeric, 3), round(max_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 100))
            FROM pg_stat_statements WHERE query !~* 'pg_stat_statements' ORDER BY calls DESC LIMIT 10"
fi

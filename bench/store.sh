#!/usr/bin/env bash
# API latency on the PostgreSQL store beside SQLite: p50/p99 of
# GET /api/v1/deployments (what `berth status --json` calls) and
# GET /api/v1/projects, N sequential requests each, on two servers started
# here (one on <dir>/berth.db, one on a private PostgreSQL 15 cluster on
# 127.0.0.1). Target (issue 10): PostgreSQL within 1.5x of SQLite.
#
#   bench/store.sh [N]        (BERTH_BIN=path/to/berth, default target/release/berth)
#
# Needs /usr/lib/postgresql/15/bin (initdb, postgres, pg_isready) and curl;
# as root the cluster runs as the postgres user. Everything it starts is
# stopped at exit (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
BIN=${BERTH_BIN:-target/release/berth}
PG=${BERTH_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p berth (or set BERTH_BIN)"; exit 1; }
[ -x "$PG/initdb" ] || { echo "PostgreSQL 15 missing ($PG)"; exit 1; }

TMP=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/berth-store-bench.XXXXXX")
chmod 755 "$TMP"
pids=()
cleanup() {
    # runuser does not pass a signal on: stop the postmaster by its own PID.
    [ -f "$TMP/pg/data/postmaster.pid" ] && kill -INT "$(head -1 "$TMP/pg/data/postmaster.pid")" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$TMP/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$TMP/pg"
as_pg "$PG/initdb" -D "$TMP/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
PGPORT=$(port)
as_pg "$PG/postgres" -D "$TMP/pg/data" -k "$TMP/pg" -p "$PGPORT" -h 127.0.0.1 >"$TMP/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$PG/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
as_pg "$PG/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE berth" >/dev/null
PGURL="postgres://postgres@127.0.0.1:$PGPORT/berth"
KEY=$(head -c 32 /dev/urandom | base64)
TOKEN=bench-token-0123456789

start() { # name extra-args...
    local name=$1; shift
    local api; api=$(port)
    "$BIN" server --data-dir "$TMP/$name" --api-listen "127.0.0.1:$api" \
        --http-listen "127.0.0.1:$(port)" --token "$TOKEN" --master-key "$KEY" "$@" \
        >"$TMP/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do curl -fs "http://127.0.0.1:$api/api/v1/health" >/dev/null && break; sleep 0.05; done
    echo "$api"
}

measure() { # api path
    local api=$1 path=$2
    for _ in $(seq "$N"); do
        curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$api$path"
    done | sort -n | awk -v n="$N" '{a[NR]=$1} END {printf "p50 %.2f ms  p99 %.2f ms", a[int(n*0.5)]*1000, a[int(n*0.99)]*1000}'
}

SQ=$(start sqlite)
PQ=$(start postgres --database-url "$PGURL")
for api in "$SQ" "$PQ"; do
    for i in $(seq 20); do
        BERTH_API="http://127.0.0.1:$api" BERTH_TOKEN=$TOKEN "$BIN" projects create "p$i" --repo /srv/git/p$i.git >/dev/null
        BERTH_API="http://127.0.0.1:$api" BERTH_TOKEN=$TOKEN "$BIN" env set --project "p$i" --secret K=v >/dev/null
    done
done

echo "berth $("$BIN" --version | awk '{print $2}') ($BIN), $N sequential requests each, 20 projects, no deployments"
for path in "/api/v1/deployments?limit=20" "/api/v1/projects"; do
    s=$(measure "$SQ" "$path"); p=$(measure "$PQ" "$path")
    printf '%-32s sqlite: %s | postgres: %s\n' "$path" "$s" "$p"
done

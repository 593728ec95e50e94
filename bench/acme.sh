#!/usr/bin/env bash
# Time from `domains verify` to an issued certificate against Debian's pebble
# (a real ACME CA) that rejects a share of its nonces, as Let's Encrypt does
# now and then. Each run is fresh: its own pebble-challtestsrv (DNS for
# pebble and berth), pebble (PEBBLE_WFE_NONCEREJECT=$NONCEREJECT, default
# 50 %), berth server (new data dir, so a new ACME account) and domain.
# Target (issue 19): with 50 % of nonces rejected, every run issues within
# 60 s.
#
#   RUNS=10 NONCEREJECT=50 bench/acme.sh     (BERTH_BIN, default target/release/berth)
#
# Needs pebble (apt-get install -y pebble: it ships both binaries), openssl,
# jq, curl. Everything listens on 127.0.0.1; what it starts is stopped at
# exit by PID. No Docker: the domain belongs to a project never deployed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
NONCEREJECT=${NONCEREJECT:-50}
LIMIT=${LIMIT:-60}
BIN=${BERTH_BIN:-target/release/berth}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p berth (or set BERTH_BIN)" >&2; exit 1; }
for t in pebble pebble-challtestsrv openssl jq curl git; do
    command -v "$t" >/dev/null || { echo "$t missing (apt-get install -y pebble openssl jq curl git)" >&2; exit 1; }
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }

TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/berth-acme-bench.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    echo "no free port" >&2; return 1
}
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$2 did not start" >&2; return 1
}
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

# pebble's own HTTPS listener: a throwaway CA and a leaf for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=pebble listener CA" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TMP/key.pem" -out "$TMP/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TMP/san.ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$TMP/san.ext" -out "$TMP/cert.pem" 2>/dev/null
git init -q "$TMP/repo"

times=()
failed=0
for run in $(seq 1 "$RUNS"); do
    dir="$TMP/run$run"
    mkdir -p "$dir"
    dns=$(free_port); chall=$(free_port); acme=$(free_port); mgmt=$(free_port)
    api=$(free_port); http=$(free_port); https=$(free_port)
    pebble-challtestsrv -dns01 "127.0.0.1:$dns" -management "127.0.0.1:$chall" \
        -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
        >"$dir/chall.log" 2>&1 &
    pids+=($!)
    wait_port "$chall" pebble-challtestsrv
    jq -n --arg l "127.0.0.1:$acme" --arg m "127.0.0.1:$mgmt" --arg c "$TMP/cert.pem" \
        --arg k "$TMP/key.pem" --argjson h "$http" --argjson t "$(free_port)" \
        '{pebble: {listenAddress: $l, managementListenAddress: $m, certificate: $c,
          privateKey: $k, httpPort: $h, tlsPort: $t, ocspResponderURL: "",
          externalAccountBindingRequired: false}}' >"$dir/pebble.json"
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=$NONCEREJECT \
        pebble -config "$dir/pebble.json" -dnsserver "127.0.0.1:$dns" >"$dir/pebble.log" 2>&1 &
    pids+=($!)
    wait_port "$acme" pebble
    token="bench-$RANDOM$RANDOM"
    RUST_LOG=info,berth_server::tls=debug "$BIN" server --data-dir "$dir/data" --api-listen "127.0.0.1:$api" \
        --http-listen "127.0.0.1:$http" --https-listen "127.0.0.1:$https" \
        --base-domain apps.test --token "$token" --dns-server "127.0.0.1:$dns" \
        --acme-directory "https://127.0.0.1:$acme/dir" --acme-email ops@example.com \
        --acme-ca-file "$TMP/ca.pem" >"$dir/berth.log" 2>&1 &
    pids+=($!)
    wait_port "$api" "berth server"
    export BERTH_API="http://127.0.0.1:$api" BERTH_TOKEN="$token"
    "$BIN" projects create "shop$run" --repo "$TMP/repo" >/dev/null
    domain="shop$run.example.com"
    curl -sf -X POST "127.0.0.1:$chall/add-a" \
        -d "{\"host\":\"$domain.\",\"addresses\":[\"127.0.0.1\"]}" >/dev/null
    added=$("$BIN" domains add --project "shop$run" "$domain" --json)
    curl -sf -X POST "127.0.0.1:$chall/set-txt" -d "$(jq -c \
        '{host: (.verification.name + "."), value: .verification.value}' <<<"$added")" >/dev/null
    "$BIN" domains verify --project "shop$run" "$domain" >/dev/null
    start=$(date +%s%N)
    state=""
    while :; do
        cert=$("$BIN" domains list --project "shop$run" --json | jq -c '.[0].certificate')
        state=$(jq -r .state <<<"$cert")
        ms=$((($(date +%s%N) - start) / 1000000))
        [ "$state" = issued ] && break
        ((ms > (LIMIT + 60) * 1000)) && break
        sleep 0.2
    done
    resent=$(grep -c 'ACME request sent again' "$dir/berth.log" || true)
    attempts=$(grep -c 'obtaining a certificate' "$dir/berth.log" || true)
    if [ "$state" = issued ]; then
        times+=("$ms")
        echo "run $run: issued after $ms ms ($attempts attempt(s), $resent request(s) sent again)" >&2
    else
        failed=$((failed + 1))
        echo "run $run: NOT issued after $ms ms: $cert" >&2
    fi
    stop_all
    unset BERTH_API BERTH_TOKEN
done

sorted=$(printf '%s\n' "${times[@]}" | sort -n)
n=${#times[@]}
printf '%-34s %s\n' "runs (nonce reject $NONCEREJECT %)" "$RUNS"
printf '%-34s %s\n' "issued" "$n"
if ((n > 0)); then
    printf '%-34s %s ms\n' "median verify -> issued" "$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")"
    printf '%-34s %s ms\n' "min / max" "$(head -1 <<<"$sorted") / $(tail -1 <<<"$sorted")"
fi
over=$(printf '%s\n' "${times[@]}" | awk -v l=$((LIMIT * 1000)) '$1 > l' | wc -l)
if ((failed == 0 && over == 0)); then
    echo "target met: every run issued within ${LIMIT} s"
else
    echo "target NOT met: $failed run(s) not issued, $over over ${LIMIT} s"
    exit 1
fi

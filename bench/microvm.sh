#!/usr/bin/env bash
# Start -> first 200 of the same busybox httpd image, as a berth microVM
# (QEMU, berth-init; TCG unless ACCEL=kvm/auto) beside `docker run`, and the
# host memory of an idle VMM (QEMU's RSS) beside an idle container (its
# cgroup usage + its containerd-shim's RSS). Prints where a VM's time goes:
# kernel boot (to berth-init), init (modules, root, network, until the app
# is spawned), and the rest (QEMU + firmware before the kernel, the app
# until its first 200, the host's polling).
#
#   RUNS=3 ACCEL=tcg bench/microvm.sh
#
# Needs docker, qemu-system-x86_64, a guest kernel (linux-image-cloud-amd64),
# mkfs.ext4, /bin/busybox, curl, cargo. Builds berth-init
# (scripts/build-init.sh) and the microvm_start example (release). Removes
# the containers and images it created (label berthbench=<project>) and its
# VMs' state dir on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-3}"
ACCEL="${ACCEL:-tcg}"
PROJECT="bench-microvm-$$"
IMAGE="berthbench/$PROJECT:latest"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }
for tool in docker qemu-system-x86_64 mkfs.ext4 curl cargo awk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 1; }
done
[[ -x /bin/busybox ]] || { echo "/bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }
TMP="$(mktemp -d /var/tmp/berth-bench-microvm.XXXXXX)"
cleanup() {
    set +e
    docker ps -aq --filter "label=berthbench=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
    docker rmi -f "$IMAGE" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building berth-init and the microvm_start example" >&2
INIT="$("$ROOT/scripts/build-init.sh" 2>/dev/null | tail -1)"
INIT="$ROOT/$INIT"
(cd "$ROOT" && cargo build --quiet --release -p berth-runtime --example microvm_start)
START="$ROOT/target/release/examples/microvm_start"

mkdir -p "$TMP/ctx/www"
cp /bin/busybox "$TMP/ctx/busybox"
echo "hello from the bench" >"$TMP/ctx/www/index.html"
cat >"$TMP/ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "httpd", "-f", "-p", "3000", "-h", "/www"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q --label "berthbench=$PROJECT" -t "$IMAGE" "$TMP/ctx" >/dev/null

now_ns() { date +%s%N; }
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f (%.0f-%.0f)", m, a[1], a[NR] }'; }

# The root disk is built once per image (cached): a first start builds it,
# outside the measurement.
echo "warming up (root disk of the image)" >&2
"$START" --image "$IMAGE" --state-dir "$TMP/mvm" --init "$INIT" --accel "$ACCEL" --idle-secs 0 >/dev/null

vm_total=() vm_kernel=() vm_init=() vm_rest=() vm_rss=()
ct_total=() ct_mem=() ct_shim=()
for run in $(seq 1 "$RUNS"); do
    echo "run $run/$RUNS: microVM" >&2
    line="$("$START" --image "$IMAGE" --state-dir "$TMP/mvm" --init "$INIT" --accel "$ACCEL" --idle-secs 3)"
    get() { sed -E "s/.*\"$1\":([0-9]+).*/\\1/" <<<"$line"; }
    t=$(get first200_ms) k=$(get kernel_ms) i=$(get init_ms)
    vm_total+=("$t") vm_kernel+=("$k") vm_init+=("$i") vm_rest+=($((t - k - i))) vm_rss+=($(($(get rss_kb) / 1024)))

    echo "run $run/$RUNS: docker run" >&2
    t0=$(now_ns)
    id=$(docker run -d --label "berthbench=$PROJECT" -p 127.0.0.1::3000 "$IMAGE")
    port=$(docker port "$id" 3000/tcp | head -1 | sed 's/.*://')
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do sleep 0.01; done
    ct_total+=($((($(now_ns) - t0) / 1000000)))
    sleep 3
    mem=$(docker stats --no-stream --format '{{.MemUsage}}' "$id" | awk '{print $1}')
    ct_mem+=("$(awk -v m="$mem" 'BEGIN { v = m + 0; if (m ~ /GiB/) v *= 1024; else if (m ~ /KiB/) v /= 1024; else if (m ~ /B$/ && m !~ /iB/) v /= 1048576; printf "%.1f", v }')")
    shim_rss=$(ps -eo rss=,args= | awk -v id="$id" 'index($0, "containerd-shim") && index($0, id) { print int($1 / 1024); exit }')
    ct_shim+=("${shim_rss:-0}")
    docker rm -f "$id" >/dev/null
done

echo
echo "start -> first 200, ms: median (min-max) over $RUNS runs, accel=$ACCEL"
printf '%-34s %s\n' "microVM (berth, QEMU q35)" "$(stats "${vm_total[@]}")"
printf '%-34s %s\n' "  kernel boot (to berth-init)" "$(stats "${vm_kernel[@]}")"
printf '%-34s %s\n' "  berth-init (modules, root, net)" "$(stats "${vm_init[@]}")"
printf '%-34s %s\n' "  rest (qemu+firmware, app, poll)" "$(stats "${vm_rest[@]}")"
printf '%-34s %s\n' "docker run" "$(stats "${ct_total[@]}")"
echo
echo "host memory of an idle instance, MiB"
printf '%-34s %s\n' "microVM: QEMU RSS" "$(stats "${vm_rss[@]}")"
printf '%-34s %s\n' "container: cgroup usage" "$(printf '%s\n' "${ct_mem[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%s (%s-%s)", a[int((NR+1)/2)], a[1], a[NR]}')"
printf '%-34s %s\n' "container: containerd-shim RSS" "$(stats "${ct_shim[@]}")"

#!/usr/bin/env bash
# Start -> first 200 of the same busybox httpd image, as a berth microVM
# (QEMU, berth-init; TCG unless ACCEL=kvm/auto) beside `docker run`, each
# without and with a named volume (mounted over the served /www: the 200 is
# read through the volume; virtio-fs + one virtiofsd for the VM), and the
# host memory of an idle VMM (QEMU's RSS, and virtiofsd's beside it) beside
# an idle container (its cgroup usage + its containerd-shim's RSS). Prints
# where a VM's time goes: kernel boot (to berth-init), init (modules, root,
# network, volumes, until the app is spawned), and the rest (QEMU + firmware
# before the kernel, the app until its first 200, the host's polling).
#
#   RUNS=3 ACCEL=tcg bench/microvm.sh
#
# Needs docker, qemu-system-x86_64, a guest kernel (linux-image-cloud-amd64),
# virtiofsd (qemu-system-common), mkfs.ext4, /bin/busybox, curl, cargo, and
# root (virtiofsd). Builds berth-init (scripts/build-init.sh) and the
# microvm_start example (release). Removes the containers, images and
# volumes it created (label berthbench=<project>) and its VMs' state dir on
# exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-3}"
ACCEL="${ACCEL:-tcg}"
PROJECT="bench-microvm-$$"
IMAGE="berthbench/$PROJECT:latest"
VOLUME="$PROJECT-www"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }
for tool in docker qemu-system-x86_64 mkfs.ext4 curl cargo awk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 1; }
done
[[ -x /usr/lib/qemu/virtiofsd || -x /usr/libexec/virtiofsd ]] || command -v virtiofsd >/dev/null 2>&1 ||
    { echo "missing: virtiofsd (apt-get install -y qemu-system-common)" >&2; exit 1; }
[[ -x /bin/busybox ]] || { echo "/bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }
TMP="$(mktemp -d /var/tmp/berth-bench-microvm.XXXXXX)"
cleanup() {
    set +e
    docker ps -aq --filter "label=berthbench=$PROJECT" | xargs -r docker rm -f >/dev/null 2>&1
    docker rmi -f "$IMAGE" >/dev/null 2>&1
    docker volume ls -q --filter "label=berthbench=$PROJECT" | xargs -r docker volume rm >/dev/null 2>&1
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
# One volume for both: empty, it gets the image's /www at the first mount
# (Docker and berth-init both copy it), then serves it.
docker volume create --label "berthbench=$PROJECT" "$VOLUME" >/dev/null

now_ns() { date +%s%N; }
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f (%.0f-%.0f)", m, a[1], a[NR] }'; }
# The same for KiB figures, printed in MiB with one decimal.
stats_kib() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1/1024} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.1f (%.1f-%.1f)", m, a[1], a[NR] }'; }

# The root disk is built once per image (cached): a first start builds it,
# outside the measurement.
echo "warming up (root disk of the image)" >&2
"$START" --image "$IMAGE" --state-dir "$TMP/mvm" --init "$INIT" --accel "$ACCEL" --idle-secs 0 >/dev/null

vm_total=() vm_kernel=() vm_init=() vm_rest=() vm_rss=()
vv_total=() vv_kernel=() vv_init=() vv_rest=() vv_rss=() vv_fsd=()
ct_total=() ct_mem=() ct_shim=() cv_total=()
# One VM start; sets t k i r (ms, ms, ms, MiB) and f (virtiofsd KiB).
vm_run() {
    local line
    line="$("$START" --image "$IMAGE" --state-dir "$TMP/mvm" --init "$INIT" --accel "$ACCEL" --idle-secs 3 "$@")"
    get() { grep -q "\"$1\":" <<<"$line" && sed -E "s/.*\"$1\":([0-9]+).*/\\1/" <<<"$line" || echo 0; }
    t=$(get first200_ms) k=$(get kernel_ms) i=$(get init_ms) r=$(($(get rss_kb) / 1024)) f=$(get virtiofsd_rss_kb)
}
# One `docker run`; sets t (ms) and id.
ct_run() {
    local t0 port
    t0=$(now_ns)
    id=$(docker run -d --label "berthbench=$PROJECT" -p 127.0.0.1::3000 "$@" "$IMAGE")
    port=$(docker port "$id" 3000/tcp | head -1 | sed 's/.*://')
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do sleep 0.01; done
    t=$((($(now_ns) - t0) / 1000000))
}
for run in $(seq 1 "$RUNS"); do
    echo "run $run/$RUNS: microVM" >&2
    vm_run
    vm_total+=("$t") vm_kernel+=("$k") vm_init+=("$i") vm_rest+=($((t - k - i))) vm_rss+=("$r")

    echo "run $run/$RUNS: microVM with a volume" >&2
    vm_run --volume "$VOLUME" --volume-target /www
    vv_total+=("$t") vv_kernel+=("$k") vv_init+=("$i") vv_rest+=($((t - k - i))) vv_rss+=("$r") vv_fsd+=("$f")

    echo "run $run/$RUNS: docker run" >&2
    ct_run
    ct_total+=("$t")
    sleep 3
    mem=$(docker stats --no-stream --format '{{.MemUsage}}' "$id" | awk '{print $1}')
    ct_mem+=("$(awk -v m="$mem" 'BEGIN { v = m + 0; if (m ~ /GiB/) v *= 1024; else if (m ~ /KiB/) v /= 1024; else if (m ~ /B$/ && m !~ /iB/) v /= 1048576; printf "%.1f", v }')")
    shim_rss=$(ps -eo rss=,args= | awk -v id="$id" 'index($0, "containerd-shim") && index($0, id) { print int($1 / 1024); exit }')
    ct_shim+=("${shim_rss:-0}")
    docker rm -f "$id" >/dev/null

    echo "run $run/$RUNS: docker run with a volume" >&2
    ct_run -v "$VOLUME:/www"
    cv_total+=("$t")
    docker rm -f "$id" >/dev/null
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'); load:$(uptime | sed 's/.*load average://')"
echo "start -> first 200, ms: median (min-max) over $RUNS runs, accel=$ACCEL"
printf '%-38s %s\n' "microVM (berth, QEMU q35)" "$(stats "${vm_total[@]}")"
printf '%-38s %s\n' "  kernel boot (to berth-init)" "$(stats "${vm_kernel[@]}")"
printf '%-38s %s\n' "  berth-init (modules, root, net)" "$(stats "${vm_init[@]}")"
printf '%-38s %s\n' "  rest (qemu+firmware, app, poll)" "$(stats "${vm_rest[@]}")"
printf '%-38s %s\n' "microVM + volume (virtio-fs)" "$(stats "${vv_total[@]}")"
printf '%-38s %s\n' "  kernel boot (to berth-init)" "$(stats "${vv_kernel[@]}")"
printf '%-38s %s\n' "  berth-init (modules, root, net, vol)" "$(stats "${vv_init[@]}")"
printf '%-38s %s\n' "  rest (virtiofsd, qemu, app, poll)" "$(stats "${vv_rest[@]}")"
printf '%-38s %s\n' "docker run" "$(stats "${ct_total[@]}")"
printf '%-38s %s\n' "docker run + volume" "$(stats "${cv_total[@]}")"
echo
echo "host memory of an idle instance, MiB"
printf '%-38s %s\n' "microVM: QEMU RSS" "$(stats "${vm_rss[@]}")"
printf '%-38s %s\n' "microVM + volume: QEMU RSS" "$(stats "${vv_rss[@]}")"
printf '%-38s %s\n' "microVM + volume: virtiofsd RSS" "$(stats_kib "${vv_fsd[@]}")"
printf '%-38s %s\n' "container: cgroup usage" "$(printf '%s\n' "${ct_mem[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%s (%s-%s)", a[int((NR+1)/2)], a[1], a[NR]}')"
printf '%-38s %s\n' "container: containerd-shim RSS" "$(stats "${ct_shim[@]}")"

#!/usr/bin/env bash
# bench-verify.sh - `flatcar-preload verify` against sha256sum over a
# read-only loop mount of the same ROOT, in one run, alternating.
#
# Usage: ci/bench-verify.sh [BIN]   (root: the loop mount)
#   BENCH_RUNS: timed runs per method (default 3, medians printed).
# The disk: a fixture with the bench image of bench-populate.sh (~500 MB of
# layer files) written by the tool. Throughput is the layer file bytes
# verify hashes (its `bytes_hashed`) per second; sha256sum reads the same
# files (every regular file under overlay2/*/diff) from the mount, page
# cache dropped before each run of either. Goal (issue 12): verify >= 0.8x
# sha256sum's throughput, peak RSS < 64 MiB. A report, not a test.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
readonly GOAL_RATIO=0.8 GOAL_RSS_MIB=64

bench_init "the comparison loop-mounts ROOT" "$@"
need /usr/bin/time time
need jq jq
bench_docker_env
bench_workdir
bench_lock "bench"
fixture=$work/verify-disk.bin
out=$work/verify-out.bin
mnt=$work/verify-mnt
mkdir -p -- "$mnt"
need_space 2
cleanup() {
    unmount_quietly "$mnt"
    detach_loops "$out"
    rm -f -- "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_bench_image "$BENCH_IMAGE" "$work/bench-image.tmp" "$work/verify-build.log"
rm -f -- "$fixture" "$out"
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
"$bin" populate "$fixture" "$BENCH_IMAGE" -o "$out" --no-verify --platform linux/amd64 \
    --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
    >/dev/null 2>"$work/verify-populate.log" ||
    { tail -n 20 "$work/verify-populate.log" >&2; die "populate failed"; }
read -r off size < <(root_geometry "$out") || die "cannot read partition 9 of $out"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

tool_s=() sum_s=() rss=()
for ((r = 0; r <= RUNS; r++)); do
    drop_caches
    t0=$EPOCHREALTIME
    /usr/bin/time -f %M -o "$work/verify-time.txt" "$bin" verify "$out" --json >"$work/verify.json" 2>/dev/null ||
        die "verify failed on the bench image"
    t1=$EPOCHREALTIME
    bytes=$(jq .bytes_hashed "$work/verify.json")
    mount -o ro,loop,offset="$off",sizelimit="$size" -t ext4 "$out" "$mnt"
    drop_caches
    t2=$EPOCHREALTIME
    find "$mnt"/var/lib/docker/overlay2/*/diff -type f -print0 | xargs -0 -r sha256sum >/dev/null
    t3=$EPOCHREALTIME
    umount "$mnt"
    ((r == 0)) && continue # warm-up round
    tool_s+=("$(elapsed "$t0" "$t1")") sum_s+=("$(elapsed "$t2" "$t3")") rss+=("$(cat "$work/verify-time.txt")")
    echo "round $r: verify ${tool_s[-1]} s, sha256sum ${sum_s[-1]} s, verify peak RSS ${rss[-1]} KiB" >&2
done
ts=$(median "${tool_s[@]}") ss=$(median "${sum_s[@]}") kib=$(median "${rss[@]}")
mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
ratio=$(awk -v a="$ss" -v b="$ts" 'BEGIN { printf "%.2f", a / b }')
rss_mib=$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')
echo
echo "layer data: $bytes bytes (medians of $RUNS runs, page cache dropped before each)"
echo "  verify     $ts s = $(mbs "$ts") MB/s (offline, no root, ext4 read through libext2fs)"
echo "  sha256sum  $ss s = $(mbs "$ss") MB/s (read-only loop mount)"
echo "  throughput ratio verify/sha256sum: $ratio (goal >= $GOAL_RATIO): $(verdict "$ratio" ge "$GOAL_RATIO")"
echo "  verify peak RSS: $rss_mib MiB (goal < $GOAL_RSS_MIB): $(verdict "$rss_mib" lt "$GOAL_RSS_MIB")"

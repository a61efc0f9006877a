#!/usr/bin/env bash
# bench-grow.sh - compare `flatcar-preload unpack` with the manual procedure
# in the two cases where the tool does more than write ROOT, in one run:
#
#   decompress  DISK is bzip2-compressed. Tool: `unpack DISK.bz2 tiny.tar -o
#               OUT --grow no`. Manual: `bunzip2 -c | dd conv=sparse` (holes
#               for the zero blocks), loop mount of ROOT, GNU tar, umount.
#   grow        the archive (2 GiB) does not fit in ROOT (~1.6 GiB free).
#               Tool: `unpack DISK big.tar -o OUT` (--grow auto). Manual:
#               cp --sparse=always, truncate +3G, sgdisk -e, re-create p9 up
#               to the end (same type, name and unique GUID), e2fsck -fp and
#               resize2fs on a loop device of ROOT, mount, GNU tar, umount.
#
# For each: median time and allocated bytes (du -B1) of both, and checks of
# the results (sgdisk -v, e2fsck -fn, same inode count, untouched partitions).
#
# Usage: ci/bench-grow.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload (built with
#   `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench}, shared with the other benches
#   (own files start with "grow-"; the archives and the compressed disk are
#   cached there), and locked so that no two benches run at the same time.
#   BENCH_RUNS: timed runs per method and case (default 3).
#   BENCH_FILL_MIB: incompressible data put in ROOT of the compressed disk
#   (default 256). bunzip2 of random data runs at ~10 MB/s, so this sets the
#   length of the decompress case: with 1024, every run takes ~110 s and the
#   first run of the script ~20 min (bzip2 once, ~4 min, included).
#
# Neither path fsyncs its output at the end (the tool only syncs the grown
# but still empty image; umount only flushes to the file's page cache);
# `sync` runs before each run, untimed, so that no run pays for the previous
# run's dirty pages.
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails (a command, a run, a result check).
# It must run as root: the manual path needs loop devices and mount.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

# Timed runs per method and case (odd, so the median is a real run).
readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
readonly FILL_MIB=${BENCH_FILL_MIB:-256}
[[ $FILL_MIB =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_FILL_MIB must be a positive integer" >&2; exit 1; }
# What a person growing by hand would add: a round number with room to
# spare, since they do not compute the tool's exact need.
readonly MANUAL_GROW=+3G
# Flatcar's ROOT type (resizable rootfs); the manual re-creation must keep it.
readonly ROOT_TYPE=3884DD41-8582-4404-B9A8-E9B84F2DF50E

bench_init "the manual path uses loop devices and mount" "$@"
need sgdisk gdisk
need bzip2 bzip2
need resize2fs e2fsprogs
need dumpe2fs e2fsprogs
need losetup mount

bench_workdir
# Own names, apart from the other benches' files in the same dir.
fixture=$work/grow-fixture.bin
fill=$work/grow-fill-${FILL_MIB}M.tar
big=$work/grow-big.tar
tiny=$work/grow-tiny.tar
bz2=$work/grow-disk-${FILL_MIB}M.bin.bz2
bz2key=$bz2.key
out=$work/grow-out.bin
man=$work/grow-man.bin
mnt=$work/grow-mnt
log=$work/grow-tool.log
src=$work/grow-src.tmp
mkdir -p -- "$mnt"

# The same lock as bench-unpack.sh and bench-populate.sh: two benches at
# once would skew each other's timings (and unmount each other's mounts).
bench_lock bench

# On any exit, leave no mount, no loop device and no half-made file behind.
cleanup() {
    unmount_quietly "$mnt"
    detach_loops "$out" "$man" "$work/grow-base.tmp"
    rm -rf -- "$src" "$work"/grow-*.tmp
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a chatty command (sgdisk, e2fsck, resize2fs) and show its output only
# when it fails, so that the report stays readable.
quiet() {
    local res
    res=$("$@" 2>&1) || { printf '%s\n' "$res" | tail -20 >&2; return 1; }
}

alloc() { du -B1 -- "$1" | cut -f1; }

# Space: 2 GiB big archive + its 2 GiB of sources while packing, then two
# ~2.1 GiB outputs side by side in the checks, plus the small files.
need_gib=6
[[ -s $big ]] || need_gib=8
need_space "$need_gib"

# The fixture is cheap (about a second), so make it fresh: a stale one from an
# older make-disk.sh would skew the comparison.
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
root_off=$(($(p9 "$fixture" "First sector") * 512))
root_size=$(($(p9 "$fixture" "Partition size") * 512))

# Random (incompressible) files in $src/NAME, N files of SIZE MiB each, as a
# pax archive at $work/grow-NAME.tmp.
make_archive() {
    local name=$1 n=$2 mib=$3 i
    rm -rf -- "$src"
    mkdir -p -- "$src/$name"
    for ((i = 1; i <= n; i++)); do
        head -c "${mib}M" /dev/urandom >"$src/$name/blob-$i"
    done
    tar --format=pax -C "$src" -cf "$work/grow-$name.tmp" "$name"
    rm -rf -- "$src"
}

# Archives are made once and cached; build under .tmp and rename so an
# interrupted run never leaves a truncated archive that looks valid.
if [[ ! -s $tiny ]]; then
    rm -rf -- "$src"
    mkdir -p -- "$src"
    echo "one small file" >"$src/hello.txt"
    tar --format=pax -C "$src" -cf "$work/grow-tiny.tmp" hello.txt
    mv -- "$work/grow-tiny.tmp" "$tiny"
fi
if [[ ! -s $fill ]]; then
    echo "making $fill (once; cached)" >&2
    make_archive fill 1 "$FILL_MIB"
    mv -- "$work/grow-fill.tmp" "$fill"
fi
# 16 x 128 MiB: more than ROOT's free space in the current layout, so that
# the tool must grow; real data, so that nothing is saved by holes.
if [[ ! -s $big ]]; then
    echo "making $big (once; cached)" >&2
    make_archive big 16 128
    mv -- "$work/grow-big.tmp" "$big"
fi

# The compressed disk: the fixture with $FILL_MIB of data in ROOT (written by
# the tool, in place), bzip2'ed. Compressing 8 GiB takes minutes, so it is
# cached, keyed on make-disk.sh (a new layout must not reuse an old image).
key=$(sha256sum -- "$repo/tests/fixtures/make-disk.sh" | cut -d' ' -f1)
if [[ ! -s $bz2 || $(cat -- "$bz2key" 2>/dev/null) != "$key" ]]; then
    echo "making $bz2 (once; cached; bzip2 of 8 GiB takes minutes)" >&2
    t0=$EPOCHREALTIME
    rm -f -- "$bz2" "$bz2key"
    base=$work/grow-base.tmp
    cp --sparse=always -- "$fixture" "$base"
    "$bin" unpack "$base" "$fill" --in-place >"$log" 2>&1 ||
        { tail -20 -- "$log" >&2; die "filling the compressed disk's ROOT failed (log: $log)"; }
    quiet e2fsck -fn "$base?offset=$root_off" || die "the filled disk fails e2fsck"
    bzip2 -c -- "$base" >"$work/grow-bz2.tmp"
    rm -f -- "$base"
    mv -- "$work/grow-bz2.tmp" "$bz2"
    echo "$key" >"$bz2key"
    echo "made $bz2 in $(elapsed "$t0" "$EPOCHREALTIME") s" >&2
fi

# sgdisk -v finds no problem in $1's partition table.
gpt_ok() {
    local res
    res=$(sgdisk -v -- "$1" 2>&1) || { printf '%s\n' "$res" >&2; return 1; }
    grep -q '^No problems found' <<<"$res" || { printf '%s\n' "$res" >&2; return 1; }
}

# One tool run; sets tool_s and tool_alloc. Arguments after the first two
# are passed to `unpack`.
run_tool() {
    local disk=$1 archive=$2 t0 t1
    shift 2
    rm -f -- "$out"
    sync
    t0=$EPOCHREALTIME
    if ! "$bin" unpack "$disk" "$archive" -o "$out" "$@" >"$log" 2>&1; then
        tail -20 -- "$log" >&2
        die "flatcar-preload unpack $disk $archive $* failed (log: $log)"
    fi
    t1=$EPOCHREALTIME
    tool_s=$(elapsed "$t0" "$t1")
    tool_alloc=$(alloc "$out")
}

# Manual decompress, timed as a whole; sets man_s and man_alloc. fullblock:
# reads from a pipe may be short, and conv=sparse only skips whole zero
# input blocks.
run_man_decompress() {
    local t0 t1
    rm -f -- "$man"
    sync
    t0=$EPOCHREALTIME
    bunzip2 -c -- "$bz2" | dd of="$man" bs=1M iflag=fullblock conv=sparse status=none
    mount -o "loop,offset=$root_off,sizelimit=$root_size" -- "$man" "$mnt"
    tar -xpf "$tiny" -C "$mnt"
    umount -- "$mnt"
    t1=$EPOCHREALTIME
    man_s=$(elapsed "$t0" "$t1")
    man_alloc=$(alloc "$man")
}

# Manual grow, timed as a whole; sets man_s and man_alloc. The partition is
# deleted and re-created at the same start, with the type, name and unique
# GUID it had, as a person following Flatcar's docs would do with sgdisk.
run_man_grow() {
    local t0 t1 guid start size dev
    rm -f -- "$man"
    sync
    t0=$EPOCHREALTIME
    cp --sparse=always -- "$fixture" "$man"
    truncate -s "$MANUAL_GROW" -- "$man"
    quiet sgdisk -e -- "$man" || die "manual: sgdisk -e failed"
    guid=$(p9 "$man" "Partition unique GUID")
    start=$(p9 "$man" "First sector")
    quiet sgdisk -d 9 -n "9:$start:0" -t "9:$ROOT_TYPE" -c 9:ROOT -u "9:$guid" -- "$man" ||
        die "manual: re-creating partition 9 failed"
    size=$(p9 "$man" "Partition size")
    # `losetup --partscan` makes no p9 node here (no udev in the container),
    # so the loop device maps ROOT alone, by offset and size.
    dev=$(losetup -f --show -o "$((start * 512))" --sizelimit "$((size * 512))" -- "$man")
    # resize2fs insists on a fresh fsck; -p exits 1 when it fixed something.
    e2fsck -fp "$dev" >/dev/null 2>&1 || (($? == 1)) || die "manual: e2fsck -fp $dev failed"
    quiet resize2fs "$dev" || die "manual: resize2fs failed"
    mount -- "$dev" "$mnt"
    tar -xpf "$big" -C "$mnt"
    umount -- "$mnt"
    losetup -d "$dev"
    t1=$EPOCHREALTIME
    man_s=$(elapsed "$t0" "$t1")
    man_alloc=$(alloc "$man")
}

# Untimed checks of the warm-up pair; set check to "ok" or to what failed.
# Failures of the manual path's result are setup problems and stop the
# script. (Not run in $(...): a die there would only end the subshell.)
check_decompress() {
    local tf mf
    tf=$(fsck_files "$out" "$root_off") || { check="fsck-FAIL"; return; }
    mf=$(fsck_files "$man" "$root_off") || die "manual decompress result fails e2fsck: setup problem"
    [[ $tf == "$mf" ]] || { check="inodes-$tf!=$mf"; return; }
    gpt_ok "$out" || { check="gpt-FAIL"; return; }
    [[ $(stat -c %s -- "$out") == "$(stat -c %s -- "$man")" ]] || { check="size-differs"; return; }
    # Everything before ROOT (GPT, USR-A/B, OEM, ...) comes straight from
    # the decompression: it must be byte-identical to bunzip2's.
    cmp -s -n "$root_off" -- "$out" "$man" || { check="before-ROOT-differs"; return; }
    check=ok
}

check_grow() {
    local tf mf f gsize psize
    local fields='^(Partition GUID code|Partition unique GUID|First sector|Attribute flags|Partition name):'
    tf=$(fsck_files "$out" "$root_off") || { check="fsck-FAIL"; return; }
    mf=$(fsck_files "$man" "$root_off") || die "manual grow result fails e2fsck: setup problem"
    [[ $tf == "$mf" ]] || { check="inodes-$tf!=$mf"; return; }
    gpt_ok "$man" || die "manual grow result fails sgdisk -v: setup problem"
    gpt_ok "$out" || { check="gpt-FAIL"; return; }
    # p9 moved its end only.
    f=$(sgdisk -i 9 -- "$fixture" | grep -E "$fields")
    [[ $(sgdisk -i 9 -- "$out" | grep -E "$fields") == "$f" ]] || { check="p9-changed"; return; }
    # The fs grew beyond the old ROOT and stays inside the new one.
    gsize=$(dumpe2fs -h "$out?offset=$root_off" 2>/dev/null | awk -F: '
        /^Block count/ { c = $2 } /^Block size/ { s = $2 } END { printf "%.0f", c * s }')
    psize=$(($(p9 "$out" "Partition size") * 512))
    ((gsize > root_size && gsize <= psize)) || { check="fs-size-$gsize-in-$psize"; return; }
    # The partitions before ROOT are untouched; the first 34 sectors (MBR,
    # primary GPT) change with the disk size.
    cmp -s -i 17408 -n "$((root_off - 17408))" -- "$fixture" "$out" || { check="before-ROOT-differs"; return; }
    check=ok
}

rows=()
details=()
check_failed=0
declare -A t_ratio a_ratio checks tool_t man_t tool_a man_a
for case in decompress grow; do
    if [[ $case == decompress ]]; then
        tool_args=("$bz2" "$tiny" --grow no)
        cat -- "$bz2" "$tiny" >/dev/null
    else
        tool_args=("$fixture" "$big")
        cat -- "$big" >/dev/null
    fi
    # Untimed first pair: it warms caches and the freshly written output
    # files, and its results are checked outside any timing.
    echo "$case: warm-up and check" >&2
    run_tool "${tool_args[@]}"
    "run_man_$case"
    "check_$case"
    [[ $check == ok ]] || check_failed=1
    checks[$case]=$check
    tool_size=$(stat -c %s -- "$out")
    man_size=$(stat -c %s -- "$man")
    rm -f -- "$out" "$man"

    tool_times=() man_times=() tool_allocs=() man_allocs=()
    for ((i = 1; i <= RUNS; i++)); do
        echo "$case: run $i/$RUNS" >&2
        run_tool "${tool_args[@]}"
        rm -f -- "$out"
        tool_times+=("$tool_s") tool_allocs+=("$tool_alloc")
        "run_man_$case"
        rm -f -- "$man"
        man_times+=("$man_s") man_allocs+=("$man_alloc")
    done

    t_med=$(median "${tool_times[@]}")
    m_med=$(median "${man_times[@]}")
    ta_med=$(median "${tool_allocs[@]}")
    ma_med=$(median "${man_allocs[@]}")
    tool_t[$case]=$t_med man_t[$case]=$m_med tool_a[$case]=$ta_med man_a[$case]=$ma_med
    t_ratio[$case]=$(awk -v t="$t_med" -v m="$m_med" 'BEGIN { printf "%.2f", t / m }')
    a_ratio[$case]=$(awk -v t="$ta_med" -v m="$ma_med" 'BEGIN { printf "%.3f", t / m }')
    rows+=("$(awk -v c="$case" -v t="$t_med" -v m="$m_med" -v r="${t_ratio[$case]}" \
        -v ta="$ta_med" -v ma="$ma_med" -v ar="${a_ratio[$case]}" \
        -v ts="$tool_size" -v ms="$man_size" -v k="$check" 'BEGIN {
            printf "%-10s %8.2f %8.2f %6s %10.1f %10.1f %6s %9.2f %9.2f  %s",
                c, t, m, r, ta / 1048576, ma / 1048576, ar, ts / 1073741824, ms / 1073741824, k }')")
    details+=("$case runs (s): tool ${tool_times[*]}; manual ${man_times[*]}")
    details+=("$case allocated (bytes): tool ${tool_allocs[*]}; manual ${man_allocs[*]}")
done

echo
printf '%-10s %8s %8s %6s %10s %10s %6s %9s %9s  %s\n' case "tool s" "man s" ratio \
    "tool MiB" "man MiB" ratio "tool GiB" "man GiB" check
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${details[@]}"
echo "medians of $RUNS alternating runs after one untimed pair; ratio = tool / manual;"
echo "MiB = allocated (du -B1); GiB = apparent size; ROOT of the compressed disk holds $FILL_MIB MiB;"
echo "manual grow adds $MANUAL_GROW; check = e2fsck -fn and sgdisk -v clean, same inode count as manual,"
echo "partitions before ROOT unchanged"
# Goals: tool <= manual, on the medians themselves (a rounded ratio of 1.000
# can hide a tool a little worse); INVALID when the tool's output for that
# case failed its check.
for case in decompress grow; do
    printf 'goal: %-10s tool time  <= manual  %-7s (%s)\n' "$case" \
        "$(verdict "${tool_t[$case]}" le "${man_t[$case]}" "${checks[$case]}")" "${t_ratio[$case]}"
    printf 'goal: %-10s tool alloc <= manual  %-7s (%s)\n' "$case" \
        "$(verdict "${tool_a[$case]}" le "${man_a[$case]}" "${checks[$case]}")" "${a_ratio[$case]}"
done

if ((check_failed)); then
    die "the tool's output failed a check (see the check column)"
fi

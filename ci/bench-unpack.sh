#!/usr/bin/env bash
# bench-unpack.sh - compare `flatcar-preload unpack` with the kernel path
# (loop mount + GNU tar) on the same fixture, archives and machine, in one run.
#
# Usage: ci/bench-unpack.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload (built with
#   `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench} (archives are cached there).
#   BENCH_RUNS: timed runs per method and archive (default 3).
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails (a command, a run, a result check).
# It must run as root because the kernel path needs mount.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

# Timed runs per method and archive (odd, so the median is a real run).
readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
# Goals, as in the project brief.
readonly GOAL_LARGE_RATIO=1.0 GOAL_SMALL_RATIO=2.0 GOAL_RSS_MIB=64

bench_init "the kernel path loop-mounts the image" "$@"
need /usr/bin/time time # GNU time for peak RSS (%M); bash's builtin has none
need setfattr attr
need sgdisk gdisk
need perl perl

bench_workdir
fixture=$work/fixture.bin
out=$work/out.bin
mnt=$work/mnt
log=$work/tool.log
timef=$work/time.txt
mkdir -p -- "$mnt"

# Two runs sharing the work dir would unmount and delete each other's files.
bench_lock bench-unpack.sh

# On any exit, leave no mount and no loop device behind.
cleanup() {
    unmount_quietly "$mnt"
    detach_loops "$out"
    rm -rf -- "$work/src.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Space: 1 GiB archive + 1 GiB of its sources while packing, ~0.4 GiB for the
# small archive, ~1.1 GiB of written output image.
need_space 4

# The fixture is cheap (about a second), so make it fresh: a stale one from an
# older make-disk.sh would skew the comparison.
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
read -r off size < <(root_geometry "$fixture") || die "cannot read partition 9 of $fixture"

# Archive A: 8 x 128 MiB of incompressible data (1 GiB), the image-layer case.
make_large() {
    local src=$work/src.tmp i
    rm -rf -- "$src"
    mkdir -p -- "$src/large"
    for i in 1 2 3 4 5 6 7 8; do
        head -c 128M /dev/urandom >"$src/large/blob-$i"
    done
    tar --xattrs --format=pax -C "$src" -cf "$work/large.tar.tmp" large
    rm -rf -- "$src"
}

# Archive B: 100 dirs x 1000 files of 1-4 KiB, a few hundred with a user
# xattr: the many-small-files case (metadata-bound, like /var/lib/docker).
make_small() {
    local src=$work/src.tmp d f
    rm -rf -- "$src"
    mkdir -p -- "$src/small"
    # perl writes the 100,000 files from one process; a process per file
    # (head/dd) would take minutes.
    perl -e '
        use strict; use warnings;
        my $root = shift;
        open(my $rnd, "<:raw", "/dev/urandom") or die "urandom: $!";
        for my $d (0 .. 99) {
            my $dir = sprintf("%s/d%03d", $root, $d);
            mkdir($dir) or die "$dir: $!";
            for my $f (0 .. 999) {
                my $n = 1024 + int(rand(3073));
                read($rnd, my $buf, $n) == $n or die "short read";
                my $path = sprintf("%s/f%04d", $dir, $f);
                open(my $o, ">:raw", $path) or die "$path: $!";
                print {$o} $buf or die "$path: $!";
                close($o) or die "$path: $!";
            }
        }' "$src/small"
    # One setfattr --restore instead of ~300 setfattr processes.
    for ((d = 0; d < 100; d++)); do
        for ((f = d % 3; f < 1000; f += 300)); do
            printf '# file: small/d%03d/f%04d\nuser.x="y"\n\n' "$d" "$f"
        done
    done >"$src/xattrs.txt"
    (cd -- "$src" && setfattr --restore=xattrs.txt)
    tar --xattrs --format=pax -C "$src" -cf "$work/small.tar.tmp" small
    rm -rf -- "$src"
}

# Archives are made once and cached; build under .tmp and rename so an
# interrupted run never leaves a truncated archive that looks valid.
for name in large small; do
    if [[ ! -s $work/$name.tar ]]; then
        echo "making $work/$name.tar (once; cached)" >&2
        "make_$name"
        mv -- "$work/$name.tar.tmp" "$work/$name.tar"
    fi
done

# One tool run; sets tool_s and tool_kib.
run_tool() {
    local archive=$1 t0 t1
    rm -f -- "$out"
    sync
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f '%M' -o "$timef" \
        "$bin" unpack "$fixture" "$archive" -o "$out" >"$log" 2>&1; then
        tail -20 -- "$log" >&2
        die "flatcar-preload unpack failed on $archive (log: $log)"
    fi
    t1=$EPOCHREALTIME
    tool_s=$(elapsed "$t0" "$t1")
    tool_kib=$(tail -n 1 -- "$timef")
}

# One kernel run, timed as a whole; sets kern_s. The copy and the unmount are
# inside the timing because the tool's time includes its copy and its fsync.
run_kernel() {
    local archive=$1 t0 t1
    rm -f -- "$out"
    sync
    t0=$EPOCHREALTIME
    cp --sparse=always -- "$fixture" "$out"
    mount -o "loop,offset=$off,sizelimit=$size" -- "$out" "$mnt"
    tar --xattrs --xattrs-include='*' -xpf "$archive" -C "$mnt"
    umount -- "$mnt"
    # umount flushes the fs through the loop device; fsync the image too so
    # both paths end with the data on disk (cheap if already clean).
    sync -- "$out"
    t1=$EPOCHREALTIME
    kern_s=$(elapsed "$t0" "$t1")
}

rows=()
details=()
check_failed=0
max_rss_mib=0
declare -A ratio checks
for name in large small; do
    archive=$work/$name.tar
    # Both methods read the archive; have it in the page cache for both.
    cat -- "$archive" >/dev/null

    # Untimed first pair: it warms caches and the freshly written output
    # file (first runs were up to 2x slower), and its results are checked
    # outside any timing: the tool's image must be a clean fs holding as
    # many inodes as the kernel's.
    echo "$name: warm-up and check" >&2
    check=ok
    run_tool "$archive"
    tool_files=$(fsck_files "$out" "$off") || { check="fsck-FAIL"; tool_files=; }
    rss_kib=$tool_kib
    run_kernel "$archive"
    kern_files=$(fsck_files "$out" "$off") || die "kernel-made image fails e2fsck: setup problem"
    if [[ $check == ok && $tool_files != "$kern_files" ]]; then
        check="inodes-${tool_files}!=${kern_files}"
    fi
    [[ $check == ok ]] || check_failed=1
    checks[$name]=$check

    tool_times=() kern_times=()
    for ((i = 1; i <= RUNS; i++)); do
        echo "$name: run $i/$RUNS" >&2
        run_tool "$archive"
        tool_times+=("$tool_s")
        if ((tool_kib > rss_kib)); then rss_kib=$tool_kib; fi
        run_kernel "$archive"
        kern_times+=("$kern_s")
    done
    rm -f -- "$out"

    t_med=$(median "${tool_times[@]}")
    k_med=$(median "${kern_times[@]}")
    ratio[$name]=$(awk -v t="$t_med" -v k="$k_med" 'BEGIN { printf "%.2f", t / k }')
    rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
    if awk -v a="$rss_mib" -v b="$max_rss_mib" 'BEGIN { exit !(a > b) }'; then
        max_rss_mib=$rss_mib
    fi
    rows+=("$(printf '%-8s %10.2f %12.2f %8s %14s  %s' "$name" "$t_med" "$k_med" "${ratio[$name]}" "$rss_mib" "$check")")
    details+=("$name runs (s): tool ${tool_times[*]}; kernel ${kern_times[*]}")
done

echo
printf '%-8s %10s %12s %8s %14s  %s\n' archive "tool med s" "kernel med s" ratio "tool RSS MiB" check
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${details[@]}"
echo "medians of $RUNS alternating runs after one untimed pair; ratio = tool / kernel;"
echo "RSS = peak over all the tool's runs; check = e2fsck -fn clean and same inode count as the kernel's"
printf 'goal: large ratio <= %s  %-6s (%s)\n' "$GOAL_LARGE_RATIO" "$(verdict "${ratio[large]}" le "$GOAL_LARGE_RATIO" "${checks[large]}")" "${ratio[large]}"
printf 'goal: small ratio <= %s  %-6s (%s)\n' "$GOAL_SMALL_RATIO" "$(verdict "${ratio[small]}" le "$GOAL_SMALL_RATIO" "${checks[small]}")" "${ratio[small]}"
printf 'goal: peak RSS < %s MiB  %-6s (%s)\n' "$GOAL_RSS_MIB" "$(verdict "$max_rss_mib" lt "$GOAL_RSS_MIB")" "$max_rss_mib"

if ((check_failed)); then
    die "the tool's output failed a check (see the check column)"
fi

#!/usr/bin/env bash
# bench-scale.sh - how `flatcar-preload unpack` and `populate` scale (issue
# 18): peak RSS, open file descriptors and wall time at 1x, 4x and 10x.
#
#   unpack    archives of 100,000 / 400,000 / 1,000,000 entries (small files
#             of 0-2 KiB in dirs of 1,000 entries, 1% symlinks, 1% hard
#             links, 0.1% with a user xattr) into the fixture's ROOT:
#             `unpack DISK ARCHIVE -o OUT --grow auto`.
#   populate  22 single-layer images of random (incompressible) data in the
#             test registry, ~0.75 / ~3 / ~7.5 GB of store in all: 20 images
#             of 24 MiB in 1 MiB files and ~250 files of 1-8 KiB, one image
#             of a 200 MiB layer (2 files of 100 MiB) and one of 10,000
#             files of 1-8 KiB, each times the scale (at 10x: a 2 GB layer
#             and an image of 100,000 small files):
#             `populate DISK --list LIST -o OUT ...`, pull included, the
#             store where the tool puts it (in memory when it fits).
#
# For each scale: the wall time and the tool's peak RSS (GNU time), the most
# file descriptors the tool had open (/proc/PID/fd, sampled every 0.2 s),
# for populate the time per GB and per 10,000 entries and the peak of the
# store in memory (its tmpfs, sampled from the host every 0.2 s), and the
# linearity: (time / first scale's time) / (size / first scale's
# size), 1.0 = linear, below 1 = a fixed cost spread over more work. Goal:
# peak RSS under 64 MiB at every scale, fds bounded.
#
# Usage: ci/bench-scale.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload (built with
#   `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench}, shared with the other benches
#   (own files start with "scale-"; the archives are cached there, ~3 GB
#   for the three scales), and locked so that no two benches run at once.
#   BENCH_SCALES: the scales to run, among 1 4 10 (default "1 4 10").
#   BENCH_PART: unpack, populate or all (default all).
#   BENCH_RUNS: timed runs per scale (default 1; the median is reported,
#   RSS and fds are the peaks over the runs).
#
# The images are made without network (generated tars, `docker import`,
# `docker push`) and pushed once to 127.0.0.1:5000/fp-scale/imgNN:SCALEx-1;
# the registry is their cache (~7.5 GB for the three scales). Needs the
# Docker test environment of ci/docker-env.sh for the populate part.
#
# Each run's output is checked outside the timing (e2fsck -fn clean; for
# unpack, ROOT's inode count is the fixture's plus the archive's; for
# populate, 20 images and a verified store) and removed before the next.
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails (a command, a run, a result check).
# It runs as root: Docker's socket, and /proc/PID/fd of the tool.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

readonly SCALES=${BENCH_SCALES:-1 4 10}
readonly PART=${BENCH_PART:-all}
readonly RUNS=${BENCH_RUNS:-1}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
[[ $PART =~ ^(unpack|populate|all)$ ]] || { echo "BENCH_PART must be unpack, populate or all" >&2; exit 1; }
read -r -a scales <<<"$SCALES"
((${#scales[@]} > 0)) || { echo "BENCH_SCALES is empty" >&2; exit 1; }
for s in "${scales[@]}"; do
    [[ $s =~ ^(1|4|10)$ ]] || { echo "BENCH_SCALES: $s is not one of 1 4 10" >&2; exit 1; }
done
# Goals (issue 18).
readonly GOAL_RSS_MIB=64 GOAL_FDS_SLACK=16
# Entries of the unpack archive at 1x; images of the populate part.
readonly UNPACK_BASE=100000 IMAGES=20
# The two more images of the populate part: one large layer, many small files.
readonly EXTRAS=(big small)
# Bump when the generator changes, so that cached archives and images made
# by an older one are not reused.
readonly GEN=1
readonly IMAGE_REPO=127.0.0.1:5000/fp-scale

bench_init "it reads the tool's /proc/PID/fd and uses Docker's socket" "$@"
need /usr/bin/time time # GNU time for peak RSS (%M); bash's builtin has none
need sgdisk gdisk
need e2fsck e2fsprogs
need python3 python3
if [[ $PART != unpack ]]; then
    need jq jq
    need curl curl
    # Exports DOCKER_HOST, FP_DIND_IMAGE, FP_REGISTRY_CONTAINER, FP_REGISTRY.
    bench_docker_env FP_REGISTRY
    [[ $FP_REGISTRY == "${IMAGE_REPO%%/*}" ]] ||
        die "the registry is $FP_REGISTRY; the scale images are in ${IMAGE_REPO%%/*}"
fi

bench_workdir
# Own names, apart from the other benches' files in the same dir.
fixture=$work/scale-disk.bin
out=$work/scale-out.bin
log=$work/scale-tool.log
json=$work/scale-tool.json
timef=$work/scale-time.txt
storef=$work/scale-store.tmp
pidf=$work/scale-pid.txt
pids=$work/scale-pids.txt
list=$work/scale-images.list
importing=''

bench_lock bench
: >"$pids"

# Removes what our runs of the tool left (a run that failed or was
# interrupted before its own cleanup): its containers and volumes, which it
# names and labels "PID-N", and its partial output. Only ours: the other
# runs on this daemon are none of our business.
remove_tool_leftovers() {
    local pid i
    [[ -s $pids ]] || return 0
    # The engine may be restarting (the tests restart it): give it a minute.
    if [[ -n ${DOCKER_HOST:-} ]]; then
        for ((i = 0; i < 60; i++)); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if [[ -n ${DOCKER_HOST:-} ]]; then
            bench_remove_run_leftovers "$pid"
        fi
        rm -f -- "$work/.${out##*/}.partial-$pid"
    done <"$pids"
}

cleanup() {
    remove_tool_leftovers
    # An image being made when we were stopped (only our own tag).
    if [[ -n $importing ]]; then docker image rm "$importing" >/dev/null 2>&1 || true; fi
    rm -f -- "$out" "$pids" "$pidf" "$list" "$work"/scale-*.tmp
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mib_free() { df -Pk -- "$1" | awk 'NR == 2 { print int($4 / 1024) }'; }

# --- the generator ----------------------------------------------------------
# gen unpack OUT N: a tar of exactly N entries under scale/, and OUT.meta
# ("ENTRIES INODES": the inodes it makes in ROOT; hard links make none).
# gen image OUT INDEX SCALE: the tree of one populate image (OUT "-" is
# stdout), its files from /dev/urandom so that no two images share a byte.
# gen big OUT SCALE, gen small OUT SCALE: the large-layer image and the
# many-small-files one.
# It writes the tar stream itself (ustar, a pax header for xattrs): 100,000
# entries take ~2 s, where GNU tar of a real tree of 1,000,000 files would
# take many minutes.
gen() {
    python3 - "$@" <<'PY'
import os, random, sys

MTIME = 1700000000

def header(name, size=0, mode=0o644, typ=b"0", link="", uid=0):
    def num(v, w):
        return b"%0*o\0" % (w - 1, v)
    n = name.encode()
    assert len(n) <= 100 and len(link.encode()) <= 100, name
    h = bytearray(512)
    h[0:100] = n.ljust(100, b"\0")
    h[100:108] = num(mode, 8)
    h[108:116] = num(uid, 8)
    h[116:124] = num(uid, 8)
    h[124:136] = num(size, 12)
    h[136:148] = num(MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    h[157:257] = link.encode().ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    owner = b"root" if uid == 0 else b"user"
    h[265:297] = owner.ljust(32, b"\0")
    h[297:329] = owner.ljust(32, b"\0")
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)

def pad(size):
    return b"\0" * (-size % 512)

def pax(name, key, value):
    # A record is "LEN KEY=VALUE\n", LEN counting itself.
    rec = b" %s=%s\n" % (key, value)
    n = len(rec) + 1
    while len(str(n)) + len(rec) != n:
        n = len(str(n)) + len(rec)
    body = str(n).encode() + rec
    return header("PaxHeaders/" + name[-80:], len(body), typ=b"x") + body + pad(len(body))

def unpack(out, n):
    rnd = random.Random(18)
    pool = os.urandom(1 << 20)
    inodes = 0
    with open(out, "wb", buffering=1 << 20) as f:
        w = f.write
        w(header("scale/", mode=0o755, typ=b"5"))
        inodes += 1
        d, last = "", None
        for j in range(n - 1):
            if j % 1000 == 0:
                d = "scale/d%04d/" % (j // 1000)
                w(header(d, mode=0o755, typ=b"5"))
                inodes += 1
                last = None
                continue
            name = "%sf%03d" % (d, j % 1000)
            if j % 100 == 37 and last:
                w(header(name + ".lnk", mode=0o777, typ=b"2", link=last.rsplit("/", 1)[1]))
                inodes += 1
            elif j % 100 == 71 and last:
                w(header(name + ".hl", typ=b"1", link=last))
            else:
                size = rnd.randrange(0, 2049)
                if j % 1000 == 500:
                    w(pax(name, b"SCHILY.xattr.user.bench", b"scale"))
                off = rnd.randrange(0, len(pool) - size)
                w(header(name, size, mode=0o755 if j % 13 == 0 else 0o644,
                         uid=1000 if j % 7 == 0 else 0))
                w(pool[off:off + size])
                w(pad(size))
                inodes += 1
                last = name
        w(b"\0" * 1024)
    with open(out + ".meta", "w") as m:
        print(n, inodes, file=m)

def image(out, index, scale):
    rnd = random.Random(index * 1000 + scale)
    f = sys.stdout.buffer if out == "-" else open(out, "wb")
    w = f.write
    top = "opt/scale/img%02d/" % index
    for d in ("opt/", "opt/scale/", top, top + "big/", top + "small/"):
        w(header(d, mode=0o755, typ=b"5"))
    for i in range(24 * scale):
        name = "%sbig/b%04d" % (top, i)
        w(header(name, 1 << 20))
        w(os.urandom(1 << 20))
    for i in range(250 * scale):
        sub = "%ssmall/s%03d/" % (top, i // 100)
        if i % 100 == 0:
            w(header(sub, mode=0o755, typ=b"5"))
        name = "%sf%03d" % (sub, i % 100)
        size = rnd.randrange(1024, 8193)
        w(header(name, size, uid=1000 if i % 7 == 0 else 0))
        w(os.urandom(size))
        w(pad(size))
        if i % 50 == 10:
            w(header(name + ".lnk", mode=0o777, typ=b"2", link="f%03d" % (i % 100)))
        elif i % 50 == 20:
            w(header(name + ".hl", typ=b"1", link=name))
    w(b"\0" * 1024)
    f.flush()

def big(out, scale):
    # One layer of 2 * SCALE files of 100 MiB (a 2 GB layer at 10x).
    f = sys.stdout.buffer if out == "-" else open(out, "wb")
    w = f.write
    for d in ("opt/", "opt/scale/", "opt/scale/big/"):
        w(header(d, mode=0o755, typ=b"5"))
    for i in range(2 * scale):
        w(header("opt/scale/big/b%02d" % i, 100 << 20))
        for _ in range(100):
            w(os.urandom(1 << 20))
    w(b"\0" * 1024)
    f.flush()

def small(out, scale):
    # 10,000 * SCALE files of 1-8 KiB in dirs of 1,000 (100,000 at 10x).
    rnd = random.Random(scale)
    pool = os.urandom(1 << 20)
    f = sys.stdout.buffer if out == "-" else open(out, "wb")
    w = f.write
    for d in ("opt/", "opt/scale/", "opt/scale/small/"):
        w(header(d, mode=0o755, typ=b"5"))
    for i in range(10000 * scale):
        if i % 1000 == 0:
            w(header("opt/scale/small/d%04d/" % (i // 1000), mode=0o755, typ=b"5"))
        size = rnd.randrange(1024, 8193)
        off = rnd.randrange(0, len(pool) - size)
        w(header("opt/scale/small/d%04d/f%03d" % (i // 1000, i % 1000), size,
                 uid=1000 if i % 7 == 0 else 0))
        w(pool[off:off + size])
        w(pad(size))
    w(b"\0" * 1024)
    f.flush()

mode = sys.argv[1]
if mode == "unpack":
    unpack(sys.argv[2], int(sys.argv[3]))
elif mode == "big":
    big(sys.argv[2], int(sys.argv[3]))
elif mode == "small":
    small(sys.argv[2], int(sys.argv[3]))
else:
    image(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
PY
}

# --- measuring --------------------------------------------------------------
# Prints the most entries /proc/PID/fd had, sampled every 0.2 s while PID
# lives (the last sample of a zombie counts none).
sample_fds() {
    local pid=$1 peak=0 fds
    shopt -s nullglob
    while kill -0 "$pid" 2>/dev/null; do
        fds=("/proc/$pid/fd/"*)
        if ((${#fds[@]} > peak)); then peak=${#fds[@]}; fi
        sleep 0.2
    done
    echo "$peak"
}

# run_tool ARGS...: one timed run of the tool with ARGS, stdout to $json and
# stderr to $log; sets run_s (wall seconds), run_kib (peak RSS) and run_fds.
# Fails when the tool does.
run_tool() {
    local runpid toolpid='' i
    rm -f -- "$out" "$pidf"
    sync
    # bash -c records the tool's PID (for the fd sampling, and the names of
    # its containers) and execs the tool, so that GNU time measures the tool
    # itself, in the same process.
    # shellcheck disable=SC2016 # $$, $1 are for the inner bash
    /usr/bin/time -f '%e %M' -o "$timef" \
        bash -c 'echo "$$" >"$1"; echo "$$" >>"$2"; shift 2; exec "$@"' _ "$pidf" "$pids" \
        "$bin" "$@" >"$json" 2>"$log" &
    runpid=$!
    for ((i = 0; i < 500; i++)); do
        toolpid=$(cat -- "$pidf" 2>/dev/null || true)
        [[ -n $toolpid ]] && break
        sleep 0.01
    done
    [[ -n $toolpid ]] || die "the tool's PID did not show up in $pidf"
    if [[ $1 == populate ]]; then bench_sample_store "$toolpid" >"$storef" & fi
    run_fds=$(sample_fds "$toolpid")
    wait "$runpid" || return 1
    run_store=0
    if [[ $1 == populate ]]; then
        wait $! || true
        run_store=$(cat -- "$storef")
    fi
    read -r run_s run_kib < <(tail -n 1 -- "$timef")
    [[ $run_kib =~ ^[0-9]+$ ]] || die "no peak RSS from /usr/bin/time in $timef"
}

# When the registry container started: it restarts with the engine.
engine_epoch() { docker inspect -f '{{.State.StartedAt}}' "$FP_REGISTRY_CONTAINER" 2>/dev/null || echo down; }

# run_checked ARGS...: run_tool, dying when the tool fails. With
# engine_retry=1 (populate), a run that failed because the engine was
# restarted under it (the engine is shared with the tests, which restart
# it) is run again, up to 3 times: that failure is not the tool's.
run_checked() {
    local try epoch i
    for ((try = 1; ; try++)); do
        if ((engine_retry)); then epoch=$(engine_epoch); fi
        run_tool "$@" && return 0
        if ((engine_retry && try < 3)); then
            for ((i = 0; i < 120; i++)); do
                docker info >/dev/null 2>&1 && break
                sleep 1
            done
            if [[ $(engine_epoch) != "$epoch" ]]; then
                echo "  the engine was restarted during the run (not by the tool): running again (try $((try + 1)) of 3)" >&2
                remove_tool_leftovers
                continue
            fi
        fi
        tail -n 20 -- "$log" >&2
        die "flatcar-preload $1 failed (log: $log)"
    done
}

# runs_of ARGS...: RUNS timed runs; sets med_s (median seconds), max_kib,
# max_fds and max_store (peaks over the runs), and times, rsss and fdss
# (each run's seconds, peak RSS in MiB and most fds).
runs_of() {
    local i
    times=() rsss=() fdss=() max_kib=0 max_fds=0 max_store=0
    for ((i = 1; i <= RUNS; i++)); do
        ((RUNS == 1)) || echo "  run $i/$RUNS" >&2
        run_checked "$@"
        times+=("$run_s")
        rsss+=("$(mib "$run_kib")")
        fdss+=("$run_fds")
        if ((run_kib > max_kib)); then max_kib=$run_kib; fi
        if ((run_fds > max_fds)); then max_fds=$run_fds; fi
        if ((run_store > max_store)); then max_store=$run_store; fi
    done
    med_s=$(median "${times[@]}")
}

# goal_lines PART: the goal lines of PART, from rss_all and fds_all (one
# value a scale). The fds are bounded when the largest scale needs no more
# than the first one, give or take GOAL_FDS_SLACK (sampling, timing).
goal_lines() {
    local rss_max
    rss_max=$(max_of "${rss_all[@]}")
    summary+=("$(printf 'goal: %-9s %-34s %-7s (max %s MiB; per scale: %s)' "$1" \
        "peak RSS < $GOAL_RSS_MIB MiB" "$(verdict "$rss_max" lt "$GOAL_RSS_MIB")" "$rss_max" "${rss_all[*]}")")
    summary+=("$(printf 'goal: %-9s %-34s %-7s (max %s; per scale: %s)' "$1" \
        "fds bounded (last <= first + $GOAL_FDS_SLACK)" \
        "$(verdict "${fds_all[-1]}" le "$((fds_all[0] + GOAL_FDS_SLACK))")" \
        "$(max_of "${fds_all[@]}")" "${fds_all[*]}")")
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# linear TIME BASE_TIME SIZE BASE_SIZE: (time ratio) / (size ratio).
linear() { awk -v t="$1" -v t0="$2" -v n="$3" -v n0="$4" 'BEGIN { printf "%.2f", (t / t0) / (n / n0) }'; }
max_of() { printf '%s\n' "$@" | sort -g | tail -n 1; }

# The fixture is cheap (about a second), so make it fresh: a stale one from an
# older make-disk.sh would skew the comparison.
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
read -r off _ < <(root_geometry "$fixture") || die "cannot read partition 9 of $fixture"
base_inodes=$(fsck_files "$fixture" "$off") || die "the fixture fails e2fsck: setup problem"

# The largest scale asked for: the space checks are for it.
top=$(max_of "${scales[@]}")

summary=()

# --- unpack -----------------------------------------------------------------
bench_unpack() {
    local s n archive meta need_mib=1024 want=0 tout toff files check rss fds
    local first_s='' first_n='' rows=() details=() rss_all=() fds_all=() failed=0

    # Space: the archives still to make (~1.8 KiB an entry) and the largest
    # output (~4.5 KiB an entry: a block, an inode, directory entries).
    for s in "${scales[@]}"; do
        n=$((UNPACK_BASE * s))
        [[ -s $work/scale-v$GEN-$n.tar && -s $work/scale-v$GEN-$n.tar.meta ]] ||
            want=$((want + n * 18 / 10240))
    done
    need_mib=$((need_mib + want + UNPACK_BASE * top * 45 / 10240))
    (($(mib_free "$work") > need_mib)) ||
        die "not enough room for the unpack part at ${top}x: need $need_mib MiB free in $work (the archives to make and the output image), have $(mib_free "$work") MiB"

    for s in "${scales[@]}"; do
        n=$((UNPACK_BASE * s))
        archive=$work/scale-v$GEN-$n.tar
        meta=$archive.meta
        # Made once and cached; built under .tmp and renamed so that an
        # interrupted run never leaves a truncated archive that looks valid.
        if [[ ! -s $archive || ! -s $meta ]]; then
            echo "making $archive (once; cached)" >&2
            gen unpack "$work/scale-unpack.tmp" "$n"
            mv -- "$work/scale-unpack.tmp.meta" "$meta"
            mv -- "$work/scale-unpack.tmp" "$archive"
        fi
        read -r _ files <"$meta"
        # The tool reads the archive; have it in the page cache.
        cat -- "$archive" >/dev/null

        echo "unpack ${s}x: $n entries" >&2
        runs_of unpack "$fixture" "$archive" -o "$out" --grow auto

        # The check, untimed: a clean fs holding the fixture's inodes plus
        # the archive's.
        check=ok
        read -r toff _ < <(root_geometry "$out") || die "cannot read partition 9 of $out"
        if tout=$(fsck_files "$out" "$toff"); then
            ((tout == base_inodes + files)) || check="inodes-$tout!=$((base_inodes + files))"
        else
            check=fsck-FAIL
        fi
        [[ $check == ok ]] || failed=1
        rm -f -- "$out"

        [[ -n $first_s ]] || { first_s=$med_s first_n=$n; }
        rss=$(mib "$max_kib") fds=$max_fds
        rss_all+=("$rss") fds_all+=("$fds")
        rows+=("$(printf '%-6s %10d %9.2f %12.2f %9s %9s %8s %6s  %s' "${s}x" "$n" "$med_s" \
            "$(awk -v t="$med_s" -v n="$n" 'BEGIN { print t / n * 100000 }')" \
            "$(linear "$med_s" "$first_s" "$n" "$first_n")" "$rss" \
            "$(verdict "$rss" lt "$GOAL_RSS_MIB" "$check")" "$fds" "$check")")
        details+=("${s}x runs: seconds ${times[*]}; RSS MiB ${rsss[*]}; fds ${fdss[*]}")
    done

    echo
    echo "unpack: flatcar-preload unpack DISK ARCHIVE -o OUT --grow auto"
    printf '%-6s %10s %9s %12s %9s %9s %8s %6s  %s\n' scale entries seconds "s/100k ent" linearity "RSS MiB" "RSS<64" "fds" check
    printf '%s\n' "${rows[@]}"
    printf '%s\n' "${details[@]}"
    goal_lines unpack
    ((failed == 0)) || unpack_failed=1
}

# --- populate ---------------------------------------------------------------
# MiB of one scale's store (20 images of ~25.1 MiB, 200 MiB and ~46 MiB a
# scale).
store_mib() { echo $(($1 * (IMAGES * 2510 / 100 + 246))); }
# image_ref K SCALE: image K (1-20, or big or small) of a scale.
image_ref() {
    case $1 in
    big | small) printf '%s/%s:%sx-%s' "$IMAGE_REPO" "$1" "$2" "$GEN" ;;
    *) printf '%s/img%02d:%sx-%s' "$IMAGE_REPO" "$1" "$2" "$GEN" ;;
    esac
}
# image_mib K SCALE: MiB of image K's layer.
image_mib() {
    case $1 in
    big) echo $((200 * $2)) ;;
    small) echo $((46 * $2)) ;;
    *) echo $((2510 * $2 / 100)) ;;
    esac
}
# The images of a scale, one K a line.
image_keys() { seq 1 "$IMAGES"; printf '%s\n' "${EXTRAS[@]}"; }
in_registry() {
    local ref=$1 repo tag
    repo=${ref#*/} tag=${ref##*:}
    repo=${repo%:*}
    curl -sf -o /dev/null "http://${ref%%/*}/v2/$repo/manifests/$tag" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
}

# Makes sure the 20 images of scale $1 are in the registry: generated,
# imported into the test engine, pushed, and dropped from the engine. The
# engine is shared with the tests, which may restart it: a failed image is
# made again, up to 3 times, once the engine answers again.
ensure_images() {
    local s=$1 k ref try i
    for k in $(image_keys); do
        ref=$(image_ref "$k" "$s")
        in_registry "$ref" && continue
        echo "making $ref (once; cached in the registry)" >&2
        importing=$ref
        for ((try = 1; ; try++)); do
            if case $k in big | small) gen "$k" - "$s" ;; *) gen image - "$k" "$s" ;; esac |
                docker import - "$ref" >/dev/null &&
                docker push -q "$ref" >/dev/null; then
                break
            fi
            ((try < 3)) || die "docker import or push of $ref failed $try times"
            echo "making $ref failed (try $try of 3); waiting for the engine" >&2
            for ((i = 0; i < 120; i++)); do
                docker info >/dev/null 2>&1 && break
                sleep 1
            done
        done
        docker image rm "$ref" >/dev/null || true
        importing=''
        in_registry "$ref" || die "pushed $ref but the registry has no manifest for it"
    done
}

bench_populate() {
    local s k ref missing=0 mib_out mib_store dockroot toff check first_s='' first_b='' first_e=''
    local rows=() details=() rss_all=() fds_all=() failed=0 rss fds images bytes entries pull verified kind

    # Space, for the largest scale: the output image holds the store (plus
    # the fixture's few MiB); the tool's dind volume holds the store twice
    # at worst (layers and their downloads); the registry grows by the
    # images not yet pushed, made one at a time in the engine.
    for s in "${scales[@]}"; do
        for k in $(image_keys); do
            in_registry "$(image_ref "$k" "$s")" || missing=$((missing + $(image_mib "$k" "$s")))
        done
    done
    mib_out=$(($(store_mib "$top") * 11 / 10 + 1024))
    mib_store=$(($(store_mib "$top") * 2 + missing + $(image_mib big "$top") + 1024))
    dockroot=$(docker info -f '{{.DockerRootDir}}') || die "docker info failed"
    [[ -d $dockroot ]] || die "the engine's data-root $dockroot is not on this machine"
    if [[ $(stat -c %d -- "$dockroot") == $(stat -c %d -- "$work") ]]; then
        (($(mib_free "$work") > mib_out + mib_store)) ||
            die "not enough room for the populate part at ${top}x: need $((mib_out + mib_store)) MiB free in $work (the output image $mib_out, the engine's store and the images to push $mib_store), have $(mib_free "$work") MiB"
    else
        (($(mib_free "$work") > mib_out)) ||
            die "not enough room for the populate part at ${top}x: need $mib_out MiB free in $work for the output image, have $(mib_free "$work") MiB"
        (($(mib_free "$dockroot") > mib_store)) ||
            die "not enough room for the populate part at ${top}x: need $mib_store MiB free in $dockroot (the engine's store and the images to push), have $(mib_free "$dockroot") MiB"
    fi

    for s in "${scales[@]}"; do
        ensure_images "$s"
        for k in $(image_keys); do image_ref "$k" "$s"; echo; done >"$list"

        echo "populate ${s}x: $((IMAGES + 2)) images, ~$(store_mib "$s") MiB" >&2
        runs_of populate "$fixture" --list "$list" -o "$out" --grow auto \
            --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
            --insecure-registry "${IMAGE_REPO%%/*}" --platform linux/amd64 --json

        # The last run's summary, and its output checked untimed.
        images=$(jq -er '.images | length' "$json") || die "no images in the tool's JSON ($json)"
        bytes=$(jq -er '.bytes_written' "$json")
        entries=$(jq -er '.entries_written' "$json")
        pull=$(jq -er '.seconds.pull * 100 | round / 100' "$json")
        verified=$(jq -er '.verified.layers // "no"' "$json")
        check=ok
        ((images == IMAGES + 2)) || check="images-$images!=$((IMAGES + 2))"
        kind=$(jq -er '.stores[0].kind' "$json")
        [[ $verified != no ]] || check="not-verified"
        read -r toff _ < <(root_geometry "$out") || die "cannot read partition 9 of $out"
        fsck_files "$out" "$toff" >/dev/null || check=fsck-FAIL
        [[ $check == ok ]] || failed=1
        rm -f -- "$out"

        [[ -n $first_s ]] || { first_s=$med_s first_b=$bytes first_e=$entries; }
        rss=$(mib "$max_kib") fds=$max_fds
        rss_all+=("$rss") fds_all+=("$fds")
        rows+=("$(printf '%-6s %8.2f %8d %8.2f %7.2f %6.2f %8.2f %6.2f %6.2f %8.0f %-6s %7s %6s %4s  %s' "${s}x" \
            "$(awk -v b="$bytes" 'BEGIN { print b / 1e9 }')" "$entries" "$med_s" "$pull" \
            "$(awk -v t="$med_s" -v b="$bytes" 'BEGIN { print t / b * 1e9 }')" \
            "$(awk -v t="$med_s" -v e="$entries" 'BEGIN { print t / e * 1e4 }')" \
            "$(linear "$med_s" "$first_s" "$bytes" "$first_b")" \
            "$(linear "$med_s" "$first_s" "$entries" "$first_e")" \
            "$(awk -v b="$max_store" 'BEGIN { print b / 1048576 }')" "$kind" "$rss" \
            "$(verdict "$rss" lt "$GOAL_RSS_MIB" "$check")" "$fds" "$check")")
        details+=("${s}x runs: seconds ${times[*]}; RSS MiB ${rsss[*]}; fds ${fdss[*]}")
    done

    echo
    echo "populate: flatcar-preload populate DISK --list LIST ($((IMAGES + 2)) images) -o OUT, pull and verify included"
    echo "(lin B, lin E: linearity in bytes and in entries; tmpfs MiB: peak of the store in memory)"
    printf '%-6s %8s %8s %8s %7s %6s %8s %6s %6s %8s %-6s %7s %6s %4s  %s\n' scale "store GB" entries seconds "pull s" "s/GB" "s/10k e" "lin B" "lin E" "tmpfs MiB" store "RSS MiB" "RSS<64" fds check
    printf '%s\n' "${rows[@]}"
    printf '%s\n' "${details[@]}"
    goal_lines populate
    ((failed == 0)) || populate_failed=1
}

unpack_failed=0 populate_failed=0 engine_retry=0
if [[ $PART != populate ]]; then bench_unpack; fi
if [[ $PART != unpack ]]; then
    engine_retry=1
    bench_populate
fi

echo
echo "scales: ${scales[*]}; $RUNS timed run(s) each (median; RSS and fds: peaks over the runs)"
echo "seconds: wall time of the whole run (GNU time); RSS: the tool's peak (GNU time %M);"
echo "fds: most entries of /proc/PID/fd, sampled every 0.2 s; linearity: (time / first"
echo "scale's time) / (size / first scale's size), 1.00 = linear, below = fixed costs amortised"
printf '%s\n' "${summary[@]}"

((unpack_failed == 0)) || die "an unpack output failed its check (see the check column)"
((populate_failed == 0)) || die "a populate output failed its check (see the check column)"

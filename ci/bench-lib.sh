# shellcheck shell=bash
# bench-lib.sh - what ci/bench-unpack.sh, ci/bench-populate.sh and
# ci/bench-grow.sh share. Sourced, not run:
#
#   . "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"
#
# It only defines functions: sourcing it runs nothing, sets no variable and
# no shell option. Each bench keeps its own `set -euo pipefail` and the order
# of its checks (root, arguments, tools, work dir, lock), and so its output,
# as before; a library that acted when sourced would run ahead of them. The
# functions are written for set -euo pipefail (every expected failure is
# tested or ends in `|| true`).
#
# Globals the functions set are named in their comments (repo, bin, work).

die() {
    echo "${0##*/}: $*" >&2
    exit 1
}

# bench_init WHY [ARGS...]: the start of every bench. Checks that it runs as
# root (WHY: why it must, after "must run as root: ") and takes at most one
# argument, BIN. Sets repo (this checkout) and bin: BIN, or the release
# build, made with `cargo build --release` when missing.
bench_init() {
    local why=$1
    shift
    # This file is in ci/, as the benches are.
    repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

    ((EUID == 0)) || die "must run as root: $why"
    (($# <= 1)) || die "usage: ${0##*/} [BIN]"

    if (($# == 1)); then
        bin=$(realpath -- "$1") || die "no such binary: $1"
        [[ -x $bin ]] || die "not an executable: $1"
    else
        bin=$repo/target/x86_64-unknown-linux-gnu/release/flatcar-preload
        if [[ ! -x $bin ]]; then
            echo "building $bin" >&2
            (cd -- "$repo" && cargo build --release) || die "cargo build --release failed"
        fi
        [[ -x $bin ]] || die "cargo build did not produce $bin"
    fi
}

# Install a missing tool from its Debian package; update the package lists
# only if the first try fails, since that is slow and usually not needed.
need() {
    local cmd=$1 pkg=$2
    if [[ -x $cmd ]] || command -v -- "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    echo "installing $pkg (for $cmd)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$pkg" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null; } ||
        die "cannot install $pkg"
}

# Sets work: ${BENCH_DIR:-/var/tmp/fp-bench}, made if missing, as an
# absolute path. All the benches share it (each under its own file names).
bench_workdir() {
    work=${BENCH_DIR:-/var/tmp/fp-bench}
    mkdir -p -- "$work"
    work=$(cd -- "$work" && pwd)
}

# bench_lock WHO: takes the work dir's lock on fd 9 for the rest of the
# script, or dies with "another WHO is using $work". One lock for all the
# benches: two at once would skew each other's timings, and unmount or
# delete each other's files.
bench_lock() {
    exec 9>"$work/.lock"
    flock -n 9 || die "another $1 is using $work"
}

# need_space GIB: dies unless the work dir's file system has more than GIB
# GiB free.
need_space() {
    local gib=$1 avail_kib
    avail_kib=$(df -Pk -- "$work" | awk 'NR == 2 { print $4 }')
    ((avail_kib > gib * 1024 * 1024)) ||
        die "need $gib GiB free in $work (have $((avail_kib / 1024)) MiB)"
}

# For the EXIT traps, so neither fails: unmount MNT if something is mounted
# there (lazily if it is busy), and detach every loop device on one of FILEs.
unmount_quietly() {
    if mountpoint -q -- "$1"; then
        umount -- "$1" 2>/dev/null || umount -l -- "$1" || true
    fi
}
detach_loops() {
    local f dev
    for f in "$@"; do
        while read -r dev; do
            if [[ -n $dev ]]; then losetup -d "$dev" 2>/dev/null || true; fi
        done < <(losetup -j "$f" -O NAME -n 2>/dev/null || true)
    done
}

# p9 DISK FIELD: a field of `sgdisk -i 9` ("First sector", "Partition size",
# ...): its first word after the colon. p9_field does the same on sgdisk's
# output on stdin.
p9_field() { awk -v f="$1:" 'index($0, f) == 1 { sub(f " *", ""); print $1; exit }'; }
p9() {
    local disk=$1 field=$2 info
    info=$(sgdisk -i 9 -- "$disk") || return 1
    p9_field "$field" <<<"$info"
}

# Byte offset and size of ROOT (partition 9), printed as "OFFSET SIZE".
root_geometry() {
    local disk=$1 info first size
    info=$(sgdisk -i 9 -- "$disk") || return 1
    first=$(p9_field "First sector" <<<"$info")
    size=$(p9_field "Partition size" <<<"$info")
    [[ $first =~ ^[0-9]+$ && $size =~ ^[0-9]+$ ]] || return 1
    echo "$((first * 512)) $((size * 512))"
}

# fsck_files IMAGE OFFSET: used inodes of the ext4 at byte OFFSET of IMAGE
# (ROOT), from a read-only full fsck. Fails, showing the end of e2fsck's
# output, if e2fsck finds any problem.
fsck_files() {
    local res
    res=$(e2fsck -fn "$1?offset=$2" 2>&1) || { printf '%s\n' "$res" | tail -20 >&2; return 1; }
    sed -n 's|^[^:]*: \([0-9]*\)/[0-9]* files.*|\1|p' <<<"$res"
}

# verdict VALUE OP GOAL [CHECK]: PASS or MISS for "VALUE OP GOAL", OP one
# of le (<=), ge (>=), lt (<); INVALID when CHECK is given and is not "ok":
# a fast wrong result must not read as a pass.
verdict() {
    if [[ ${4:-ok} != ok ]]; then
        echo INVALID
        return
    fi
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN {
        if (op == "le") ok = v <= g
        else if (op == "ge") ok = v >= g
        else if (op == "lt") ok = v < g
        else { print "verdict: unknown op " op > "/dev/stderr"; exit 1 }
        print ok ? "PASS" : "MISS" }'
}

# Seconds between two $EPOCHREALTIME stamps.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# Median of the numbers given (the lower of the middle two for an even
# count; the benches make odd counts).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Brings up the Docker test environment of ci/docker-env.sh (or only checks
# it when it is up) and exports its variables (DOCKER_HOST, FP_DIND_IMAGE,
# FP_REGISTRY_CONTAINER, ...); dies unless it gave those, each variable
# named as an argument, and the registry the bench images are in.
bench_docker_env() {
    local vars v
    vars=$("$repo/ci/docker-env.sh" 2>/dev/null) || {
        "$repo/ci/docker-env.sh" >/dev/null || true # again, to show its errors
        die "ci/docker-env.sh failed"
    }
    set -a
    eval "$vars"
    set +a
    for v in DOCKER_HOST FP_DIND_IMAGE FP_REGISTRY_CONTAINER "$@"; do
        [[ -n ${!v:-} ]] || die "ci/docker-env.sh did not give $v"
    done
    [[ ${FP_REGISTRY:-} == "${BENCH_IMAGE%%/*}" ]] ||
        die "the registry is ${FP_REGISTRY:-unset}; the bench images are in ${BENCH_IMAGE%%/*}"
}

# --- the bench image of bench-populate.sh, bench-cache.sh, bench-verify.sh ---
# Bump the tag when bench_context changes, so that a stale image in the
# registry is not reused.
readonly BENCH_IMAGE=127.0.0.1:5000/fp/bench:1
# Build context: 3 COPY layers, ~500 MB in ~7,000 files, shaped like a real
# image store's hard part: a few big incompressible files (layer blobs,
# binaries) and thousands of 1-64 KiB files in nested dirs, with hard links
# and symlinks.
#   big/    4 files of 50-100 MiB from /dev/urandom               (~294 MiB)
#   tree1/  20 x 17 dirs x 10 files of 1-64 KiB, 100 symlinks     (~108 MiB)
#   tree2/  the same, plus ~150 hard links (within the layer: a
#           hard link cannot span layers)                        (~108 MiB)
bench_context() {
    local ctx=$1
    rm -rf -- "$ctx"
    mkdir -p -- "$ctx/big"
    local mib
    for mib in 50 64 80 100; do
        head -c "${mib}M" /dev/urandom >"$ctx/big/blob-${mib}m"
    done
    # perl writes the ~7,000 files from one process; a process per file
    # would take minutes.
    perl -e '
        use strict; use warnings;
        use File::Path qw(make_path);
        my $root = shift;
        open(my $rnd, "<:raw", "/dev/urandom") or die "urandom: $!";
        srand(42);
        for my $t (1, 2) {
            my $n = 0;
            for my $a (0 .. 19) {
                for my $b (0 .. 16) {
                    my $dir = sprintf("%s/tree%d/a%02d/b%02d", $root, $t, $a, $b);
                    make_path($dir);
                    for my $f (0 .. 9) {
                        my $size = 1024 + int(rand(63 * 1024 + 1));
                        read($rnd, my $buf, $size) == $size or die "short read";
                        my $path = sprintf("%s/f%02d", $dir, $f);
                        open(my $o, ">:raw", $path) or die "$path: $!";
                        print {$o} $buf or die "$path: $!";
                        close($o) or die "$path: $!";
                        $n++;
                        # Relative symlinks, as packages ship them.
                        if ($n % 34 == 0) {
                            symlink("f$f", "$path.lnk") or die "$path.lnk: $!";
                        }
                        # Hard links in tree2, next to their file.
                        if ($t == 2 && $n % 23 == 0) {
                            link($path, "$path.hl") or die "$path.hl: $!";
                        }
                    }
                }
            }
            # A symlink to a dir and an absolute one.
            symlink("a00/b00", "$root/tree$t/first") or die "first: $!";
            symlink("/opt/big/blob-50m", "$root/tree$t/abs") or die "abs: $!";
        }' "$ctx"
    printf '%s\n' 'FROM scratch' \
        'COPY big/ /opt/big/' \
        'COPY tree1/ /usr/share/tree1/' \
        'COPY tree2/ /srv/tree2/' >"$ctx/Dockerfile"
}

# Makes sure the bench image REF is in the test registry: built from
# bench_context in CTX and pushed once (the registry is its cache), with the
# build's log in LOG.
ensure_bench_image() {
    local ref=$1 ctx=$2 log=$3 registry=${1%%/*} repo=${1#*/}
    repo=${repo%:*}
    manifest_exists() {
        curl -sf -o /dev/null "http://$registry/v2/$repo/manifests/${ref##*:}" \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
    }
    if manifest_exists; then
        echo "bench image: $ref (cached in the registry)" >&2
        return
    fi
    echo "bench image: making $ref (once; cached in the registry)" >&2
    bench_context "$ctx"
    # Legacy builder: the 28.x CLI has no buildx plugin here, and the 20.10
    # daemon's BuildKit would need it.
    DOCKER_BUILDKIT=0 docker build -q -t "$ref" "$ctx" >"$log" 2>&1 ||
        { tail -n 20 -- "$log" >&2; die "docker build of $ref failed"; }
    docker push -q "$ref" >/dev/null || die "docker push $ref failed"
    # The registry is the cache: drop the context and the host's copy (~1 GB).
    rm -rf -- "$ctx"
    docker image rm "$ref" >/dev/null || true
    manifest_exists || die "pushed $ref but the registry has no manifest for it"
}

# bench_remove_run_leftovers PID: removes the containers and volumes of the
# tool's run in process PID (it labels them org.flatcar-preload.run=PID-N),
# which it leaves when it fails or is interrupted before its own cleanup.
# Only those: other runs on the engine are none of the bench's business.
bench_remove_run_leftovers() {
    local pid=$1 obj val label=org.flatcar-preload.run
    while read -r obj val; do
        if [[ $val == "$pid"-* ]]; then docker rm -f -v "$obj" >/dev/null 2>&1 || true; fi
    done < <(docker ps -a --filter "label=$label" --format "{{.ID}} {{.Label \"$label\"}}" 2>/dev/null || true)
    while read -r obj val; do
        if [[ $val == "$pid"-* ]]; then docker volume rm -f "$obj" >/dev/null 2>&1 || true; fi
    done < <(docker volume ls --filter "label=$label" --format "{{.Name}} {{.Label \"$label\"}}" 2>/dev/null || true)
}

# bench_sample_store PID: samples the used bytes of the tool's tmpfs store
# from the host (through /proc/PID/root of its dind) every 0.1 s while the
# tool's run with PID $1 lasts; prints the peak (0 when the store was not
# in memory).
bench_sample_store() {
    local run=$1 peak=0 ctr='' dpid='' used
    while kill -0 "$run" 2>/dev/null; do
        if [[ -z $dpid ]]; then
            ctr=$(docker ps -q --filter "label=org.flatcar-preload.run" --filter "name=flatcar-preload-$run-" 2>/dev/null | head -n 1)
            if [[ -n $ctr ]]; then
                dpid=$(docker inspect -f '{{.State.Pid}}' "$ctr" 2>/dev/null || true)
                [[ $dpid =~ ^[1-9][0-9]*$ ]] || dpid=''
            fi
        fi
        if [[ -n $dpid ]] && [[ $(stat -f -c %T "/proc/$dpid/root/var/lib/docker" 2>/dev/null) == tmpfs ]]; then
            used=$(stat -f -c '%b %f %S' "/proc/$dpid/root/var/lib/docker" 2>/dev/null |
                awk '{ printf "%.0f\n", ($1 - $2) * $3 }')
            if [[ $used =~ ^[0-9]+$ ]] && ((used > peak)); then peak=$used; fi
        elif [[ -n $dpid ]] && ! kill -0 "$dpid" 2>/dev/null; then
            # The dind is gone (pulled again on disk): look for the next.
            dpid=''
        fi
        sleep 0.1
    done
    echo "$peak"
}

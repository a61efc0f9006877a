#!/usr/bin/env bash
# bench-populate.sh - compare `flatcar-preload populate` with the documented
# manual procedure (tar /var/lib/docker out of a dind, loop-mount ROOT, GNU
# tar it in) on the same fixture, image and machine, in one run.
#
# Usage: ci/bench-populate.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload (built with
#   `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench} (shared with bench-unpack.sh,
#   and locked so that the two never run at the same time).
#   BENCH_RUNS: timed runs per method (default 3).
#
# Needs the Docker test environment of ci/docker-env.sh (it is brought up, or
# only checked when already up). The bench image 127.0.0.1:5000/fp/bench:1
# (~500 MB in ~7,000 files, 3 layers) is built and pushed once; the registry
# is its cache.
#
# What is timed:
#   A (tool)   seconds.copy + seconds.export_and_write of its --json summary:
#              the sparse copy of the disk, then the export of the store and
#              the writing of ROOT. The pull (and the stop of the inner
#              daemon) are left out: the manual procedure pulls too, and its
#              pull is not timed either. The pull time is printed for
#              information.
#   B (manual) as a whole: `docker exec DIND tar -cf - -C /var/lib/docker .`
#              to a file, `cp --sparse=always`, loop mount of ROOT, GNU tar
#              -xpf into /var/lib/docker, umount. Its dind stays up between
#              runs (as in the documented procedure) and pulls only once.
#   Neither path fsyncs the output file (the tool does not, and umount only
#   flushes to the file's page cache); `sync` runs before each run, untimed,
#   so that no run pays for the previous run's dirty pages.
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails (a command, a run, a result check).
# It must run as root: the manual path needs mount, and Docker's socket.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

# Timed runs per method (odd, so the median is a real run).
readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
# Goals, as in the project brief: the tool at least twice as fast as the
# manual procedure, in less than 64 MiB.
readonly GOAL_SPEEDUP=2.0 GOAL_RSS_MIB=64
# The bench image. Bump the tag when make_context changes, so that a stale
# image in the registry is not reused.
readonly BENCH_REF=127.0.0.1:5000/fp/bench:1
# Our manual-path dind and its store. Fixed names (not labelled with the
# tool's run label): a stale pair from a killed run is replaced at start.
readonly B_CTR=fpbench-dind B_VOL=fpbench-vol
# The label the tool puts on every container and volume it creates.
readonly RUN_LABEL=org.flatcar-preload.run

bench_init "the manual path loop-mounts the image" "$@"
need /usr/bin/time time # GNU time for peak RSS (%M); bash's builtin has none
need sgdisk gdisk
need perl perl
need jq jq
need curl curl

# The Docker environment. Its output is KEY=VALUE lines without `export`;
# set -a exports them so that the docker CLI (a child) sees DOCKER_HOST.
env_vars=$("$repo/ci/docker-env.sh" 2>/dev/null) || {
    "$repo/ci/docker-env.sh" >/dev/null || true # again, to show its errors
    die "ci/docker-env.sh failed"
}
set -a
eval "$env_vars"
set +a
[[ -n ${DOCKER_HOST:-} && -n ${FP_DIND_IMAGE:-} && -n ${FP_REGISTRY_CONTAINER:-} ]] ||
    die "ci/docker-env.sh did not give DOCKER_HOST, FP_DIND_IMAGE and FP_REGISTRY_CONTAINER"
registry=${BENCH_REF%%/*}
[[ ${FP_REGISTRY:-} == "$registry" ]] || die "the registry is ${FP_REGISTRY:-unset}, this script expects $registry"

bench_workdir
# Own names, apart from bench-unpack.sh's files in the same dir.
fixture=$work/populate-disk.bin
out=$work/populate-out.bin
store=$work/populate-store.tar
mnt=$work/populate-mnt
ctx=$work/bench-image.tmp
log=$work/populate-tool.log
json=$work/populate-tool.json
timef=$work/populate-time.txt
# PIDs of the tool's runs: the tool names its containers and volumes, and
# sets their run label, "PID-N", so cleanup can find exactly ours.
pids=$work/populate-pids.txt
mkdir -p -- "$mnt"

# The same lock as bench-unpack.sh: two benches at once would skew each
# other's timings (and two of this one would share container names).
bench_lock "bench (bench-unpack.sh or bench-populate.sh)"
: >"$pids"

# Removes the tool's containers and volumes left over from our runs (a run
# that failed or was interrupted before its own cleanup). Only ours: other
# runs of the tool on this daemon (tests, --keep-dind) are none of our business.
remove_tool_leftovers() {
    local pid obj val
    [[ -s $pids ]] || return 0
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        while read -r obj val; do
            if [[ $val == "$pid"-* ]]; then docker rm -f -v "$obj" >/dev/null 2>&1 || true; fi
        done < <(docker ps -a --filter "label=$RUN_LABEL" --format "{{.ID}} {{.Label \"$RUN_LABEL\"}}" 2>/dev/null || true)
        while read -r obj val; do
            if [[ $val == "$pid"-* ]]; then docker volume rm -f "$obj" >/dev/null 2>&1 || true; fi
        done < <(docker volume ls --filter "label=$RUN_LABEL" --format "{{.Name}} {{.Label \"$RUN_LABEL\"}}" 2>/dev/null || true)
        # The tool's partial output, if it was killed before removing it.
        rm -f -- "$work/.${out##*/}.partial-$pid"
    done <"$pids"
}

# On any exit, leave no mount, loop device, container or volume behind.
cleanup() {
    unmount_quietly "$mnt"
    detach_loops "$out"
    # DOCKER_HOST is set before this trap is, so these reach our daemon.
    docker rm -f -v "$B_CTR" >/dev/null 2>&1 || true
    docker volume rm -f "$B_VOL" >/dev/null 2>&1 || true
    remove_tool_leftovers
    rm -rf -- "$ctx"
    rm -f -- "$store" "$out" "$pids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Space: ~0.5 GiB each for the output's store, the store tar, the manual
# dind's volume and the tool's dind volume, plus ~1 GiB for the context and
# the host daemon's copy while the image is made.
need_space 4

# --- the bench image --------------------------------------------------------
# Build context: 3 COPY layers, ~500 MB in ~7,000 files, shaped like a real
# image store's hard part: a few big incompressible files (layer blobs,
# binaries) and thousands of 1-64 KiB files in nested dirs, with hard links
# and symlinks.
#   big/    4 files of 50-100 MiB from /dev/urandom               (~294 MiB)
#   tree1/  20 x 17 dirs x 10 files of 1-64 KiB, 100 symlinks     (~108 MiB)
#   tree2/  the same, plus ~150 hard links (within the layer: a
#           hard link cannot span layers)                        (~108 MiB)
make_context() {
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

manifest_exists() {
    curl -sf -o /dev/null "http://$registry/v2/fp/bench/manifests/${BENCH_REF##*:}" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
}

if manifest_exists; then
    echo "bench image: $BENCH_REF (cached in the registry)" >&2
else
    echo "bench image: making $BENCH_REF (once; cached in the registry)" >&2
    make_context
    # Legacy builder: the 28.x CLI has no buildx plugin here, and the 20.10
    # daemon's BuildKit would need it.
    DOCKER_BUILDKIT=0 docker build -q -t "$BENCH_REF" "$ctx" >"$work/populate-build.log" 2>&1 ||
        { tail -n 20 -- "$work/populate-build.log" >&2; die "docker build of $BENCH_REF failed"; }
    docker push -q "$BENCH_REF" >/dev/null || die "docker push $BENCH_REF failed"
    # The registry is the cache: drop the context and the host's copy (~1 GB).
    rm -rf -- "$ctx"
    docker image rm "$BENCH_REF" >/dev/null || true
    manifest_exists || die "pushed $BENCH_REF but the registry has no manifest for it"
fi

# The fixture is cheap (about a second), so make it fresh: a stale one from an
# older make-disk.sh would skew the comparison.
rm -f -- "$fixture"
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
read -r off size < <(root_geometry "$fixture") || die "cannot read partition 9 of $fixture"

# --- the manual path's dind ---------------------------------------------------
# Started as the tool starts its own (see Engine::start_dind): same image,
# network, capabilities, flags and a volume for the store, so both export the
# same kind of overlay2 store.
docker rm -f -v "$B_CTR" >/dev/null 2>&1 || true
docker volume rm -f "$B_VOL" >/dev/null 2>&1 || true
docker volume create "$B_VOL" >/dev/null
docker run -d --name "$B_CTR" --network "container:$FP_REGISTRY_CONTAINER" \
    --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
    -v "$B_VOL:/var/lib/docker" --entrypoint dockerd "$FP_DIND_IMAGE" \
    --storage-driver=overlay2 --host=unix:///var/run/docker.sock \
    --iptables=false --ip6tables=false --bridge=none >/dev/null
for ((i = 0; i < 240; i++)); do
    docker exec "$B_CTR" docker info >/dev/null 2>&1 && break
    sleep 0.25
done
docker exec "$B_CTR" docker info >/dev/null 2>&1 ||
    { docker logs --tail 20 "$B_CTR" >&2; die "the dind $B_CTR did not start"; }
echo "manual path: pulling $BENCH_REF in $B_CTR (once, untimed)" >&2
docker exec "$B_CTR" docker pull -q "$BENCH_REF" >/dev/null || die "$B_CTR could not pull $BENCH_REF"

# One tool run; sets tool_s (copy + export_and_write), pull_s, tool_kib and
# the counts of the summary.
run_tool() {
    rm -f -- "$out"
    sync
    # bash -c records the tool's PID (it names the run's containers and
    # volumes) and then execs the tool, so /usr/bin/time measures the tool
    # itself (a shell's peak RSS is far below the tool's).
    # shellcheck disable=SC2016 # $$, $1 are for the inner bash
    if ! /usr/bin/time -f '%M' -o "$timef" \
        bash -c 'echo "$$" >>"$1"; shift; exec "$@"' _ "$pids" \
        "$bin" populate "$fixture" "$BENCH_REF" -o "$out" \
        --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
        --json >"$json" 2>"$log"; then
        tail -n 20 -- "$log" >&2
        die "flatcar-preload populate failed (log: $log)"
    fi
    tool_s=$(jq -er '.seconds.copy + .seconds.export_and_write | . * 1000 | round / 1000' "$json") ||
        die "no seconds.copy/export_and_write in the tool's JSON ($json)"
    pull_s=$(jq -er '.seconds.pull' "$json")
    tool_entries=$(jq -er '.entries_written' "$json")
    tool_bytes=$(jq -er '.bytes_written' "$json")
    tool_kib=$(tail -n 1 -- "$timef")
    [[ $tool_kib =~ ^[0-9]+$ ]] || die "no peak RSS from /usr/bin/time in $timef"
}

# One manual run, timed as a whole; sets man_s.
run_manual() {
    local t0 t1
    rm -f -- "$out" "$store"
    sync
    t0=$EPOCHREALTIME
    docker exec "$B_CTR" tar -cf - -C /var/lib/docker . >"$store" ||
        die "tar of /var/lib/docker in $B_CTR failed"
    cp --sparse=always -- "$fixture" "$out"
    mount -o "loop,offset=$off,sizelimit=$size" -- "$out" "$mnt"
    mkdir -p -- "$mnt/var/lib/docker"
    tar -xpf "$store" -C "$mnt/var/lib/docker" || die "tar -x of the store into ROOT failed"
    umount -- "$mnt"
    t1=$EPOCHREALTIME
    rm -f -- "$store"
    man_s=$(elapsed "$t0" "$t1")
}

# Untimed first pair: it warms caches (the image's layers in the registry,
# the fixture, the output file) and its results are checked outside any
# timing: both images must be clean filesystems. The inode counts are
# printed so that a large gap between the two shows.
echo "warm-up and check" >&2
check=ok
run_tool
tool_files=$(fsck_files "$out" "$off") || { check="fsck-FAIL"; tool_files='?'; }
rss_kib=$tool_kib
run_manual
man_files=$(fsck_files "$out" "$off") || die "the manually made image fails e2fsck: setup problem"

tool_times=() man_times=() pull_times=()
for ((i = 1; i <= RUNS; i++)); do
    echo "run $i/$RUNS" >&2
    run_tool
    tool_times+=("$tool_s")
    pull_times+=("$pull_s")
    if ((tool_kib > rss_kib)); then rss_kib=$tool_kib; fi
    run_manual
    man_times+=("$man_s")
done
rm -f -- "$out"

t_med=$(median "${tool_times[@]}")
m_med=$(median "${man_times[@]}")
p_med=$(median "${pull_times[@]}")
speedup=$(awk -v t="$t_med" -v m="$m_med" 'BEGIN { printf "%.2f", m / t }')
rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')

echo
printf '%-34s %8s  %s\n' method "median s" "runs (s)"
printf '%-34s %8.2f  %s\n' "A flatcar-preload populate" "$t_med" "${tool_times[*]}"
printf '%-34s %8.2f  %s\n' "B docker exec tar + loop + tar -x" "$m_med" "${man_times[*]}"
echo
echo "medians of $RUNS alternating runs after one untimed pair"
echo "A = seconds.copy + seconds.export_and_write; B = the whole manual sequence"
echo "A pull seconds (not timed, for information): median $p_med (${pull_times[*]})"
echo "A wrote $tool_entries entries, $tool_bytes bytes; ROOT inodes after A: $tool_files, after B: $man_files"
echo "A output check (e2fsck -fn on the warm-up image): $check"
printf 'goal: speed-up B/A >= %s  %-7s (%s)\n' "$GOAL_SPEEDUP" "$(verdict "$speedup" ge "$GOAL_SPEEDUP" "$check")" "$speedup"
printf 'goal: A peak RSS < %s MiB  %-7s (%s)\n' "$GOAL_RSS_MIB" "$(verdict "$rss_mib" lt "$GOAL_RSS_MIB")" "$rss_mib"

if [[ $check != ok ]]; then
    die "the tool's output failed e2fsck"
fi

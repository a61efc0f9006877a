#!/usr/bin/env bash
# bench-populate.sh - compare `flatcar-preload populate` with the documented
# manual procedure and with balena's mechanism, on the same fixture, image
# and machine, in one run, alternating.
#
# Usage: ci/bench-populate.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload (built with
#   `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench} (shared with bench-unpack.sh,
#   and locked so that the two never run at the same time).
#   BENCH_RUNS: timed runs per method (default 3).
#   BENCH_TOOL_ARGS: more arguments for the tool (e.g. "--jobs 6" or
#   "--store disk").
#
# Needs the Docker test environment of ci/docker-env.sh (it is brought up, or
# only checked when already up). The set: the bench image
# 127.0.0.1:5000/fp/bench:1 (~500 MB of random data in ~7,000 files, 3
# layers), built and pushed once, and a real, compressible image,
# 127.0.0.1:5000/fp/real:1 (FP_DIND_IMAGE, Debian and Docker, one layer),
# pushed once; the registry is their cache. BENCH_SET=synthetic: the bench
# image alone.
#
# What is timed, each as a whole run from the disk image to the output
# image with the bench image in its ROOT (pull included):
#   A (tool)    `flatcar-preload populate DISK IMAGE -o OUT`, no root.
#   B (manual)  the documented procedure: a dind with a fresh volume, pull,
#               `docker exec DIND tar -cf - -C /var/lib/docker .` to a file,
#               `cp --sparse=always`, loop mount of ROOT, GNU tar -xpf into
#               /var/lib/docker, umount, dind and volume removed.
#   C (balena)  balena's mechanism (root): `cp --sparse=always`, loop mount
#               of ROOT, a dind whose /var/lib/docker is the mounted
#               directory, pull, stop, the build machine's state dropped
#               (all but image/ and overlay2/, as the tool keeps), umount.
#   D (floor)   the work no method can skip, in two timed steps summed:
#               every blob fetched from the registry and decompressed at
#               once (curl | the fastest unpigz at hand, into files in
#               memory), then `cp --sparse=always` and the uncompressed
#               layers written into ROOT by the tool's own writer
#               (`flatcar-preload unpack --in-place --target` per layer,
#               labels included as populate writes them). No dockerd: no
#               metadata, no second hash, no export.
#   E (floor with the target's daemon) what any tool that has the target's
#               dockerd make the store pays: a dind started as the tool
#               starts it (store in memory, the tool as its unpigz) and the
#               set pulled, plus D's write step.
#   F (direct)  `flatcar-preload populate --engine direct DISK IMAGE -o OUT`:
#               the tool's own registry client, no daemon, no root; a new
#               empty --blob-cache each run (every blob fetched), its peak
#               RSS from GNU time.
#   All dinds are started as the tool starts its own (see
#   Engine::start_dind): same image, network, capabilities and flags.
#   No path fsyncs the output file (the tool does not, and umount only
#   flushes to the file's page cache); `sync` runs before each run, untimed,
#   so that no run pays for the previous run's dirty pages.
#   The peak of the tool's store in memory (its tmpfs) is sampled from the
#   host every 0.1 s; the tool's own peak RSS comes from GNU time.
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails (a command, a run, a result check).
# It must run as root: the manual paths need mount, and Docker's socket.
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

# Timed runs per method (odd, so the median is a real run).
readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
# Goals (issues 9 and 21): the tool's whole run at most 0.70x balena's
# mechanism and 1.5x the floor, with no root, in less than 64 MiB.
readonly GOAL_RATIO=0.70 GOAL_FLOOR=1.50 GOAL_RSS_MIB=64
# Issue 34: --engine direct at most 1.2x the floor and 0.5x balena's.
readonly GOAL_DIRECT_FLOOR=1.20 GOAL_DIRECT_BALENA=0.50
# More arguments for the tool (word-split on purpose).
read -r -a tool_args <<<"${BENCH_TOOL_ARGS:-}"
# The bench image (see ensure_bench_image in bench-lib.sh).
readonly BENCH_REF=$BENCH_IMAGE
# The second image of the set: a real one, compressible as real layers
# are (the build container's own image, Debian and Docker, ~430 MB in one
# ~160 MB gzip layer), pushed once from the local image. BENCH_SET=synthetic
# leaves it out.
readonly REAL_REF=127.0.0.1:5000/fp/real:1
case ${BENCH_SET:-both} in
both) refs=("$BENCH_REF" "$REAL_REF") ;;
synthetic) refs=("$BENCH_REF") ;;
*) die "BENCH_SET must be both or synthetic" ;;
esac
# Our manual paths' dinds and B's store. Fixed names (not labelled with the
# tool's run label): stale ones from a killed run are replaced at start.
readonly B_CTR=fpbench-dind B_VOL=fpbench-vol C_CTR=fpbench-balena E_CTR=fpbench-daemon

bench_init "the manual paths loop-mount the image" "$@"
need /usr/bin/time time # GNU time for peak RSS (%M); bash's builtin has none
need sgdisk gdisk
need perl perl
need jq jq
need curl curl
need pigz pigz # one of the floor's decompressors

# The Docker environment. Its output is KEY=VALUE lines without `export`;
# set -a exports them so that the docker CLI (a child) sees DOCKER_HOST.
bench_docker_env

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
# The floor's uncompressed layers, in memory as the tool's store is.
floor=$(mktemp -d /dev/shm/fp-floor.XXXXXX)
mkdir -p -- "$mnt"

# The same lock as bench-unpack.sh: two benches at once would skew each
# other's timings (and two of this one would share container names).
bench_lock "bench (bench-unpack.sh or bench-populate.sh)"
: >"$pids"

# Removes the tool's containers and volumes left over from our runs (a run
# that failed or was interrupted before its own cleanup). Only ours: other
# runs of the tool on this daemon (tests, --keep-dind) are none of our business.
remove_tool_leftovers() {
    local pid
    [[ -s $pids ]] || return 0
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        bench_remove_run_leftovers "$pid"
        # The tool's partial output, if it was killed before removing it.
        rm -f -- "$work/.${out##*/}.partial-$pid"
    done <"$pids"
}

# On any exit, leave no mount, loop device, container or volume behind.
cleanup() {
    # DOCKER_HOST is set before this trap is, so these reach our daemon.
    # C's dind first: its store is the mounted ROOT.
    docker rm -f -v "$B_CTR" "$C_CTR" "$E_CTR" >/dev/null 2>&1 || true
    docker volume rm -f "$B_VOL" >/dev/null 2>&1 || true
    remove_tool_leftovers
    unmount_quietly "$mnt"
    detach_loops "$out"
    rm -rf -- "$ctx" "$floor"
    rm -f -- "$store" "$out" "$pids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Space: ~0.5 GiB each for the output's store, the store tar, the manual
# dind's volume and the tool's dind volume, plus ~1 GiB for the context and
# the host daemon's copy while the image is made.
need_space 4

# --- the bench image --------------------------------------------------------
ensure_bench_image "$BENCH_REF" "$ctx" "$work/populate-build.log"
if [[ ${refs[*]} == *"$REAL_REF"* ]]; then
    if ! curl -sf -o /dev/null "http://${REAL_REF%%/*}/v2/fp/real/manifests/1" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'; then
        echo "real image: pushing $FP_DIND_IMAGE as $REAL_REF (once)" >&2
        docker tag "$FP_DIND_IMAGE" "$REAL_REF"
        docker push -q "$REAL_REF" >/dev/null || die "docker push $REAL_REF failed"
        docker image rm "$REAL_REF" >/dev/null || true
    fi
fi

# The fixture is cheap (about a second), so make it fresh: a stale one from an
# older make-disk.sh would skew the comparison.
rm -f -- "$fixture"
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"
read -r off size < <(root_geometry "$fixture") || die "cannot read partition 9 of $fixture"

# --- the runs -------------------------------------------------------------------
# A dind as the tool starts its own (see Engine::start_dind), store at $2
# (a volume name or a directory; empty: in memory, as the tool's), ready to
# pull. $3, when given, is a directory with an unpigz, first on dockerd's
# PATH (as the tool gives its build container).
start_dind() {
    local name=$1 store=$2 i opts=()
    docker rm -f -v "$name" >/dev/null 2>&1 || true
    if [[ -n $store ]]; then opts+=(-v "$store:/var/lib/docker"); else opts+=(--tmpfs /var/lib/docker); fi
    if [[ -n ${3:-} ]]; then
        opts+=(-v "$(realpath -- "$bin"):/fp-bin/unpigz:ro" -e PATH=/fp-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    fi
    docker run -d --name "$name" --network "container:$FP_REGISTRY_CONTAINER" \
        --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
        "${opts[@]}" --entrypoint dockerd "$FP_DIND_IMAGE" \
        --storage-driver=overlay2 --host=unix:///var/run/docker.sock \
        --iptables=false --ip6tables=false --bridge=none >/dev/null
    for ((i = 0; i < 2400; i++)); do
        docker exec "$name" docker version >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    docker logs --tail 20 "$name" >&2
    die "the dind $name did not start"
}

# Pulls the set in the dind $1, all at once (as the tool does).
pull_all() {
    local ref p ps=()
    for ref in "${refs[@]}"; do
        docker exec "$1" docker pull -q "$ref" >/dev/null &
        ps+=($!)
    done
    for p in "${ps[@]}"; do wait "$p" || die "$1 could not pull the set (${refs[*]})"; done
}

# One run of --engine direct with an empty blob cache, timed as a whole;
# sets direct_s and direct_kib.
run_direct() {
    local t0 t1 blobs
    rm -f -- "$out"
    blobs=$(mktemp -d "$work/blobs.XXXXXX")
    sync
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f '%M' -o "$timef" \
        "$bin" populate "$fixture" "${refs[@]}" -o "$out" --engine direct \
        --blob-cache "$blobs" "${tool_args[@]}" --json >"$json" 2>"$log"; then
        tail -n 20 -- "$log" >&2
        rm -rf -- "$blobs"
        die "flatcar-preload populate --engine direct failed (log: $log)"
    fi
    t1=$EPOCHREALTIME
    rm -rf -- "$blobs"
    direct_s=$(elapsed "$t0" "$t1")
    direct_kib=$(tail -n 1 -- "$timef")
}

# One tool run, timed as a whole; sets tool_s, the phase seconds of its
# summary (phase_*), tool_kib, store_peak and the counts of the summary.
run_tool() {
    local t0 t1 runpid
    rm -f -- "$out"
    sync
    t0=$EPOCHREALTIME
    # bash -c records the tool's PID (it names the run's containers and
    # volumes) and then execs the tool, so /usr/bin/time measures the tool
    # itself (a shell's peak RSS is far below the tool's).
    # shellcheck disable=SC2016 # $$, $1 are for the inner bash
    /usr/bin/time -f '%M' -o "$timef" \
        bash -c 'echo "$$" >>"$1"; shift; exec "$@"' _ "$pids" \
        "$bin" populate "$fixture" "${refs[@]}" -o "$out" \
        --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
        "${tool_args[@]}" --json >"$json" 2>"$log" &
    runpid=$!
    # The tool is time's child; its PID is in $pids once bash has started.
    local toolpid='' i
    for ((i = 0; i < 100; i++)); do
        toolpid=$(tail -n 1 -- "$pids" 2>/dev/null || true)
        [[ -n $toolpid ]] && kill -0 "$toolpid" 2>/dev/null && break
        sleep 0.01
    done
    store_peak=$(bench_sample_store "$toolpid")
    if ! wait "$runpid"; then
        tail -n 20 -- "$log" >&2
        die "flatcar-preload populate failed (log: $log)"
    fi
    t1=$EPOCHREALTIME
    tool_s=$(elapsed "$t0" "$t1")
    local phase_line
    phase_line=$(jq -er '.seconds | [.pull, .stop, .measure, .copy, .export_and_write]
        | map(. * 100 | round / 100 | tostring) | join(" ")' "$json") ||
        die "no seconds in the tool's JSON ($json)"
    read -r phase_pull phase_stop phase_measure phase_copy phase_export <<<"$phase_line"
    store_kind=$(jq -er '.stores[0].kind' "$json") || die "no store in the tool's JSON ($json)"
    tool_entries=$(jq -er '.entries_written' "$json")
    tool_bytes=$(jq -er '.bytes_written' "$json")
    tool_kib=$(tail -n 1 -- "$timef")
    [[ $tool_kib =~ ^[0-9]+$ ]] || die "no peak RSS from /usr/bin/time in $timef"
}

# One run of the documented procedure, timed as a whole; sets man_s.
run_manual() {
    local t0 t1
    rm -f -- "$out" "$store"
    docker rm -f -v "$B_CTR" >/dev/null 2>&1 || true
    docker volume rm -f "$B_VOL" >/dev/null 2>&1 || true
    sync
    t0=$EPOCHREALTIME
    docker volume create "$B_VOL" >/dev/null
    start_dind "$B_CTR" "$B_VOL"
    pull_all "$B_CTR"
    # The procedure tars the store of a running daemon: GNU tar's status 1
    # ("file changed as we read it", containerd's bolt file) is part of it.
    local rc=0
    docker exec "$B_CTR" tar -cf - -C /var/lib/docker . >"$store" || rc=$?
    ((rc <= 1)) || die "tar of /var/lib/docker in $B_CTR failed (status $rc)"
    cp --sparse=always -- "$fixture" "$out"
    mount -o "loop,offset=$off,sizelimit=$size" -- "$out" "$mnt"
    mkdir -p -- "$mnt/var/lib/docker"
    tar -xpf "$store" -C "$mnt/var/lib/docker" || die "tar -x of the store into ROOT failed"
    umount -- "$mnt"
    docker rm -f -v "$B_CTR" >/dev/null
    docker volume rm -f "$B_VOL" >/dev/null
    t1=$EPOCHREALTIME
    rm -f -- "$store"
    man_s=$(elapsed "$t0" "$t1")
}

# One run of balena's mechanism, timed as a whole; sets bal_s.
run_balena() {
    local t0 t1 d
    rm -f -- "$out"
    docker rm -f -v "$C_CTR" >/dev/null 2>&1 || true
    sync
    t0=$EPOCHREALTIME
    cp --sparse=always -- "$fixture" "$out"
    mount -o "loop,offset=$off,sizelimit=$size" -- "$out" "$mnt"
    mkdir -p -- "$mnt/var/lib/docker"
    start_dind "$C_CTR" "$mnt/var/lib/docker"
    pull_all "$C_CTR"
    docker stop -t 60 "$C_CTR" >/dev/null
    docker rm -v "$C_CTR" >/dev/null
    # The build machine's state: all but what the tool keeps.
    d=$mnt/var/lib/docker
    find "$d" -mindepth 1 -maxdepth 1 ! -name image ! -name overlay2 -exec rm -rf -- {} +
    rm -rf -- "$d/image/overlay2/layerdb/mounts"
    umount -- "$mnt"
    t1=$EPOCHREALTIME
    bal_s=$(elapsed "$t0" "$t1")
}

# --- the floor ------------------------------------------------------------------
# The set's layer blobs ("REGISTRY/REPO/blobs/DIGEST" per line, each
# once; the bench image's largest first).
blobs=()
for ref in "${refs[@]}"; do
    r=${ref#*/}
    while read -r bsize d; do
        [[ ${blobs[*]} == *"$d"* ]] || blobs+=("$bsize ${ref%%/*}/v2/${r%:*}/blobs/$d")
    done < <(curl -sf "http://${ref%%/*}/v2/${r%:*}/manifests/${ref##*:}" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' |
        jq -r '.layers[] | "\(.size) \(.digest)"')
done
((${#blobs[@]} > 0)) || die "no layers in the manifests of ${refs[*]}"
mapfile -t blobs < <(printf '%s\n' "${blobs[@]}" | sort -rn | cut -d' ' -f2)
# The decompressors at hand: the tool itself as unpigz (what it gives a
# build container without one), Debian's pigz and gzip. Each inflates every
# blob of the set from memory, one after the other; every output must be
# byte-for-byte gzip's. The fastest in all is the floor's.
choose_unpigz() {
    local best='' best_s='' name cmd t0 t1 s i total=0
    mkdir -p -- "$floor/bin"
    ln -sf -- "$bin" "$floor/bin/unpigz"
    for i in "${!blobs[@]}"; do
        curl -sf -o "$floor/blob-$i.gz" "http://${blobs[i]}" || die "cannot fetch ${blobs[i]}"
        gzip -dc <"$floor/blob-$i.gz" >"$floor/blob-$i.gzip"
        total=$((total + $(stat -c %s "$floor/blob-$i.gzip")))
    done
    for name in tool pigz gzip; do
        case $name in
        tool) cmd="$floor/bin/unpigz -d -c" ;;
        pigz) cmd="unpigz -d -c" ;;
        gzip) cmd="gzip -dc" ;;
        esac
        s=0
        for i in "${!blobs[@]}"; do
            t0=$EPOCHREALTIME
            $cmd <"$floor/blob-$i.gz" >"$floor/blob.out"
            t1=$EPOCHREALTIME
            cmp -s -- "$floor/blob-$i.gzip" "$floor/blob.out" || die "$name's output of ${blobs[i]} differs from gzip's"
            s=$(awk -v s="$s" -v d="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.3f", s + d }')
        done
        printf 'decompressor %-5s %5.0f MB/s of output (%s s for the %s blobs; byte-for-byte gzip'"'"'s)\n' \
            "$name" "$(awk -v b="$total" -v s="$s" 'BEGIN { print b / s / 1e6 }')" "$s" "${#blobs[@]}" >&2
        if [[ -z $best ]] || awk -v a="$s" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
            best=$cmd best_s=$s
        fi
    done
    rm -f -- "$floor"/blob-* "$floor/blob.out"
    floor_unpigz=$best
    echo "floor decompressor: $floor_unpigz" >&2
}

# One run of the floor with the target's daemon: a dind as the tool starts
# it (store in memory, the tool as its unpigz), the set pulled; then D's
# write. Sets daemon_s (the pull part) and dfloor_s (with D's write).
run_daemon_floor() {
    local t0 t1 i
    docker rm -f -v "$E_CTR" >/dev/null 2>&1 || true
    sync
    t0=$EPOCHREALTIME
    start_dind "$E_CTR" "" "$floor/bin"
    pull_all "$E_CTR"
    t1=$EPOCHREALTIME
    docker rm -f -v "$E_CTR" >/dev/null
    daemon_s=$(elapsed "$t0" "$t1")
    dfloor_s=$(awk -v a="$daemon_s" -v b="$floor_write_s" 'BEGIN { printf "%.3f", a + b }')
}

# One floor run; sets floor_fetch_s, floor_write_s and floor_s (their sum).
run_floor() {
    local t0 t1 t2 i pids_f=() p
    rm -f -- "$out" "$floor"/layer-*.tar
    sync
    t0=$EPOCHREALTIME
    for i in "${!blobs[@]}"; do
        # shellcheck disable=SC2086 # $floor_unpigz is a command and its flags
        curl -sf "http://${blobs[i]}" |
            $floor_unpigz >"$floor/layer-$i.tar" &
        pids_f+=($!)
    done
    for p in "${pids_f[@]}"; do wait "$p" || die "fetching or decompressing a blob failed"; done
    t1=$EPOCHREALTIME
    cp --sparse=always -- "$fixture" "$out"
    for i in "${!blobs[@]}"; do
        "$bin" unpack --in-place --grow no --target "/var/lib/docker/overlay2/floor-$i/diff" \
            "$out" "$floor/layer-$i.tar" >/dev/null 2>"$log" ||
            { tail -n 5 -- "$log" >&2; die "unpack of layer $i failed"; }
    done
    t2=$EPOCHREALTIME
    rm -f -- "$floor"/layer-*.tar
    floor_fetch_s=$(elapsed "$t0" "$t1")
    floor_write_s=$(elapsed "$t1" "$t2")
    floor_s=$(elapsed "$t0" "$t2")
}

# Untimed first round: it warms caches (the image's layers in the
# registry, the fixture, the output file) and its results are checked
# outside any timing: all images must be clean filesystems. The inode
# counts are printed so that a large gap shows.
echo "warm-up and check" >&2
check=ok
run_tool
tool_files=$(fsck_files "$out" "$off") || { check="fsck-FAIL"; tool_files='?'; }
rss_kib=$tool_kib peak_store=$store_peak
run_manual
man_files=$(fsck_files "$out" "$off") || die "the manually made image fails e2fsck: setup problem"
run_balena
bal_files=$(fsck_files "$out" "$off") || die "balena's mechanism's image fails e2fsck: setup problem"
choose_unpigz
run_floor
floor_files=$(fsck_files "$out" "$off") || die "the floor's image fails e2fsck"
run_daemon_floor
run_direct
direct_files=$(fsck_files "$out" "$off") || { check="fsck-FAIL (direct)"; direct_files='?'; }
direct_rss=$direct_kib

tool_times=() man_times=() bal_times=() floor_times=() floor_parts=() dfloor_times=() phases=() direct_times=()
for ((i = 1; i <= RUNS; i++)); do
    echo "run $i/$RUNS" >&2
    run_tool
    tool_times+=("$tool_s")
    phases+=("pull $phase_pull stop $phase_stop measure $phase_measure copy $phase_copy export+write $phase_export (store: $store_kind)")
    if ((tool_kib > rss_kib)); then rss_kib=$tool_kib; fi
    if ((store_peak > peak_store)); then peak_store=$store_peak; fi
    run_manual
    man_times+=("$man_s")
    run_balena
    bal_times+=("$bal_s")
    run_floor
    floor_times+=("$floor_s")
    floor_parts+=("fetch+decompress $floor_fetch_s write $floor_write_s")
    run_daemon_floor
    dfloor_times+=("$dfloor_s")
    floor_parts[-1]+="; E: dind start and pull $daemon_s"
    run_direct
    direct_times+=("$direct_s")
    if ((direct_kib > direct_rss)); then direct_rss=$direct_kib; fi
done
rm -f -- "$out"

t_med=$(median "${tool_times[@]}")
m_med=$(median "${man_times[@]}")
c_med=$(median "${bal_times[@]}")
f_med=$(median "${floor_times[@]}")
ratio_f=$(awk -v t="$t_med" -v m="$f_med" 'BEGIN { printf "%.2f", t / m }')
e_med=$(median "${dfloor_times[@]}")
ratio_e=$(awk -v t="$t_med" -v m="$e_med" 'BEGIN { printf "%.2f", t / m }')
ratio_c=$(awk -v t="$t_med" -v m="$c_med" 'BEGIN { printf "%.2f", t / m }')
ratio_b=$(awk -v t="$t_med" -v m="$m_med" 'BEGIN { printf "%.2f", t / m }')
rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
d_med=$(median "${direct_times[@]}")
ratio_df=$(awk -v t="$d_med" -v m="$f_med" 'BEGIN { printf "%.2f", t / m }')
ratio_dc=$(awk -v t="$d_med" -v m="$c_med" 'BEGIN { printf "%.2f", t / m }')
ratio_da=$(awk -v t="$d_med" -v m="$t_med" 'BEGIN { printf "%.2f", t / m }')
direct_mib=$(awk -v k="$direct_rss" 'BEGIN { printf "%.1f", k / 1024 }')
peak_mib=$(awk -v k="$peak_store" 'BEGIN { printf "%.1f", k / 1048576 }')

echo
printf '%-34s %8s  %s\n' method "median s" "runs (s)"
printf '%-34s %8.2f  %s\n' "A flatcar-preload populate" "$t_med" "${tool_times[*]}"
printf '%-34s %8.2f  %s\n' "B documented procedure" "$m_med" "${man_times[*]}"
printf '%-34s %8.2f  %s\n' "C balena's mechanism (root)" "$c_med" "${bal_times[*]}"
printf '%-34s %8.2f  %s\n' "D floor (fetch+inflate, write)" "$f_med" "${floor_times[*]}"
printf '%-34s %8.2f  %s\n' "E floor with the target's dockerd" "$e_med" "${dfloor_times[*]}"
printf '%-34s %8.2f  %s\n' "F populate --engine direct" "$d_med" "${direct_times[*]}"
echo
echo "medians of $RUNS alternating runs after one untimed round; whole runs, pull included"
echo "tool arguments: ${tool_args[*]:-(none)}"
for ((i = 0; i < ${#phases[@]}; i++)); do
    echo "A run $((i + 1)) phases (s, overlapping): ${phases[i]}"
done
for ((i = 0; i < ${#floor_parts[@]}; i++)); do
    echo "D run $((i + 1)) (s): ${floor_parts[i]} (decompressor: $floor_unpigz)"
done
echo "A wrote $tool_entries entries, $tool_bytes bytes; ROOT inodes after A: $tool_files, B: $man_files, C: $bal_files, D: $floor_files"
echo "A output check (e2fsck -fn on the warm-up image): $check"
echo "A/B (documented procedure): $ratio_b"
echo "A/E (the floor with dockerd's pull, which the tool must use): $ratio_e"
echo "A peak of the store in memory (tmpfs): $peak_mib MiB"
printf 'goal: A/D (floor) <= %s  %-7s (%s)\n' "$GOAL_FLOOR" "$(verdict "$ratio_f" le "$GOAL_FLOOR" "$check")" "$ratio_f"
printf 'goal: A/C (balena) <= %s  %-7s (%s)\n' "$GOAL_RATIO" "$(verdict "$ratio_c" le "$GOAL_RATIO" "$check")" "$ratio_c"
printf 'goal: A peak RSS < %s MiB  %-7s (%s)\n' "$GOAL_RSS_MIB" "$(verdict "$rss_mib" lt "$GOAL_RSS_MIB")" "$rss_mib"
echo "F/A (direct against dind): $ratio_da; ROOT inodes after F: $direct_files"
printf 'goal: F/D (floor) <= %s  %-7s (%s)\n' "$GOAL_DIRECT_FLOOR" "$(verdict "$ratio_df" le "$GOAL_DIRECT_FLOOR" "$check")" "$ratio_df"
printf 'goal: F/C (balena) <= %s  %-7s (%s)\n' "$GOAL_DIRECT_BALENA" "$(verdict "$ratio_dc" le "$GOAL_DIRECT_BALENA" "$check")" "$ratio_dc"
printf 'goal: F peak RSS <= %s MiB  %-7s (%s)\n' "$GOAL_RSS_MIB" "$(verdict "$direct_mib" le "$GOAL_RSS_MIB")" "$direct_mib"

if [[ $check != ok ]]; then
    die "the tool's output failed e2fsck"
fi

#!/usr/bin/env bash
# bench-cache.sh - what `populate --cache NAME` saves, in one run: the same
# list populated cold (an empty cache), warm (nothing changed) and warm with
# one image changed, each a whole run from the disk image to the output.
#
# Usage: ci/bench-cache.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload
#   (built with `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench} (locked: one bench at a time).
#   BENCH_RUNS: rounds (default 3); each round is cold, warm, one changed,
#   and the medians are printed.
#
# The list: the bench image of bench-populate.sh (~500 MB, 3 layers) and a
# small image (busybox and a file) that is pushed again with new content
# before each "one changed" run. Goals (issue 11): warm total <= 25% of cold,
# warm pull phase <= 5% of cold's (the pull phase is the time spent getting
# the images into the dind's daemon, from the registries' answers to the
# last layer; starting the dind is its own phase).
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails. Run as root (Docker's socket of
# the test environment, ci/docker-env.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
readonly GOAL_TOTAL=0.25 GOAL_PULL=0.05
readonly CACHE=fpbench-cache
readonly SMALL=127.0.0.1:5000/fp/bench-small:1

bench_init "Docker's socket of the test environment is root's" "$@"
need jq jq
need curl curl
bench_docker_env
bench_workdir
bench_lock "bench"
fixture=$work/cache-disk.bin
out=$work/cache-out.bin
ctx=$work/cache-small.tmp
json=$work/cache-run.json
need_space 3

cleanup() {
    "$bin" cache rm "$CACHE" >/dev/null 2>&1 || true
    rm -rf -- "$ctx" "$out" "$json"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_bench_image "$BENCH_IMAGE" "$work/bench-image.tmp" "$work/cache-build.log"
rm -f -- "$fixture"
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"

# Pushes the small image with new content (a new layer and a new ID).
push_small() {
    rm -rf -- "$ctx"
    mkdir -p -- "$ctx"
    cp /bin/busybox "$ctx/busybox"
    head -c 4096 /dev/urandom >"$ctx/v"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY v /v\n' >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$SMALL" "$ctx" >/dev/null 2>&1 || die "docker build of $SMALL failed"
    docker push -q "$SMALL" >/dev/null || die "docker push $SMALL failed"
    docker image rm "$SMALL" >/dev/null || true
}

# One populate run with the cache; prints "TOTAL PULL DOWNLOADED_LAYERS".
run() {
    rm -f -- "$out"
    sync
    "$bin" populate "$fixture" "$BENCH_IMAGE" "$SMALL" -o "$out" --cache "$CACHE" \
        --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
        --platform linux/amd64 --json >"$json" 2>"$work/cache-run.log" ||
        { tail -n 20 -- "$work/cache-run.log" >&2; die "populate failed"; }
    jq -r '[(.seconds.total * 1000 | round / 1000), (.seconds.pull * 1000 | round / 1000),
            ([.images[].downloaded_layers | length] | add)] | @tsv' "$json"
}

cold_t=() cold_p=() warm_t=() warm_p=() chg_t=() chg_p=()
push_small
for ((r = 1; r <= RUNS; r++)); do
    "$bin" cache rm "$CACHE" >/dev/null 2>&1 || true
    read -r t p n < <(run)
    echo "round $r cold:        total $t s, pull $p s, $n layers downloaded" >&2
    cold_t+=("$t") cold_p+=("$p")
    read -r t p n < <(run)
    echo "round $r warm:        total $t s, pull $p s, $n layers downloaded" >&2
    ((n == 0)) || die "the warm run downloaded $n layers"
    warm_t+=("$t") warm_p+=("$p")
    push_small
    read -r t p n < <(run)
    echo "round $r one changed: total $t s, pull $p s, $n layers downloaded" >&2
    chg_t+=("$t") chg_p+=("$p")
done

ct=$(median "${cold_t[@]}") cp_=$(median "${cold_p[@]}")
wt=$(median "${warm_t[@]}") wp=$(median "${warm_p[@]}")
xt=$(median "${chg_t[@]}") xp=$(median "${chg_p[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
rt=$(ratio "$wt" "$ct") rp=$(ratio "$wp" "$cp_")
echo
echo "medians of $RUNS rounds ($BENCH_IMAGE + $SMALL, cache on a Docker volume):"
echo "  cold         total $ct s, pull $cp_ s"
echo "  warm         total $wt s, pull $wp s"
echo "  one changed  total $xt s, pull $xp s"
echo "  warm/cold total: $rt (goal <= $GOAL_TOTAL): $(verdict "$rt" le "$GOAL_TOTAL")"
echo "  warm/cold pull:  $rp (goal <= $GOAL_PULL): $(verdict "$rp" le "$GOAL_PULL")"
echo "  one changed/cold total: $(ratio "$xt" "$ct")"

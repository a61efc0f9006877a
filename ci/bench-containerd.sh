#!/usr/bin/env bash
# bench-containerd.sh - containerd's store baked by `flatcar-preload populate
# --containerd-image` against what users do instead, on the same image set and
# machine, in one run, alternating.
#
# Usage: ci/bench-containerd.sh [BIN]
#   BIN defaults to target/x86_64-unknown-linux-gnu/release/flatcar-preload
#   (built with `cargo build --release` when missing and BIN is not given).
#   Work dir: ${BENCH_DIR:-/var/tmp/fp-bench} (shared with the other benches,
#   and locked so that two never run at the same time).
#   BENCH_RUNS: timed runs per method (default 3).
#
# Needs the Docker test environment of ci/docker-env.sh (brought up, or only
# checked when up): its registry, the pulling dind image and crictl. The
# image set is the bench image of bench-populate.sh (127.0.0.1:5000/fp/bench:1,
# ~500 MB in ~7,000 files, 3 layers; built and pushed once) and the sandbox
# image (pause:3.10 of the local registry, baked as registry.k8s.io/pause:3.10
# through --registry-mirror, as an air-gapped build does).
#
# The target is the containerd of FP_DIND_IMAGE (2.1 today, Flatcar stable's),
# started in a container as the tests start it, with Flatcar's configuration
# (version 2, overlayfs, CRI on). Timed inside that container, from
# containerd's start:
#   first boot, baked   containerd on a copy of the baked /var/lib/containerd
#                       until `crictl images` lists every image.
#   first boot, import  the k3s/RKE2 way: containerd on an empty root imports
#                       the same images' archive (`ctr -n k8s.io images import`,
#                       made once, untimed, with `ctr images export`) until
#                       `crictl images` lists every image.
#   direct pull         containerd on an empty root pulls the images through
#                       the CRI (`crictl pull`, what a kubelet does).
# and, from the host:
#   bake                the whole `populate` run (disk image to output image).
# Ratios: import / baked (how much a first boot gains), bake / direct pull
# (what baking costs against the pull it replaces).
#
# This is a report, not a test: it exits 0 whether or not the goals are met,
# and non-zero only when something fails. It must run as root (loop mounts,
# Docker's socket).
set -euo pipefail
# shellcheck source=SCRIPTDIR/bench-lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/bench-lib.sh"

readonly RUNS=${BENCH_RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer" >&2; exit 1; }
# Goal: a first boot with the baked store at least 5 times faster than
# importing the same images (import / baked >= 5).
readonly GOAL_BOOT=5
readonly CTR_NAME=fpbench-ctrd

bench_init "the first boots loop-mount the output" "$@"
need sgdisk gdisk
need jq jq
need curl curl
bench_docker_env FP_CRICTL
registry=$FP_REGISTRY

bench_workdir
fixture=$work/ctrd-disk.bin
out=$work/ctrd-out.bin
copy=$work/ctrd-copy.bin
mnt=$work/ctrd-mnt
fresh=$work/ctrd-fresh
archive=$work/ctrd-images.tar
log=$work/ctrd-tool.log
mkdir -p -- "$mnt"
bench_lock "bench"

cleanup() {
    docker rm -f -v "$CTR_NAME" >/dev/null 2>&1 || true
    unmount_quietly "$mnt"
    detach_loops "$copy" "$out"
    rm -rf -- "$fresh" "$work/bench-image.tmp"
    rm -f -- "$out" "$copy" "$archive"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
need_space 4

ensure_bench_image "$BENCH_IMAGE" "$work/bench-image.tmp" "$work/ctrd-build.log"
# The sandbox image, under its real name through the mirror: pushed to the
# local registry once, as pause:3.10 (any small image serves).
pause_src=$registry/pause:3.10
if ! curl -sf -o /dev/null "http://$registry/v2/pause/manifests/3.10" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'; then
    docker pull -q "$registry/fp/test:1" >/dev/null 2>&1 || die "the registry has neither pause:3.10 nor fp/test:1 (run ci/docker-env.sh with FP_VERIFY=1)"
    docker tag "$registry/fp/test:1" "$pause_src" && docker push -q "$pause_src" >/dev/null ||
        die "cannot push $pause_src"
fi
readonly SANDBOX=registry.k8s.io/pause:3.10
# What crictl must list: the two names.
want_images=("$BENCH_IMAGE" "$SANDBOX")

rm -f -- "$fixture"
"$repo/tests/fixtures/make-disk.sh" --layout current "$fixture"

# The target containerd in a container (as tests/populate.rs starts it):
# root at $1 (a host directory), network of the registry, script on stdin
# after the shared preamble. Prints what the script prints.
target() {
    local root=$1 script
    script=$(cat)
    docker rm -f -v "$CTR_NAME" >/dev/null 2>&1 || true
    docker run --rm --name "$CTR_NAME" --network "container:$FP_REGISTRY_CONTAINER" \
        --cap-add ALL --cap-drop SYS_RESOURCE \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        --security-opt systempaths=unconfined --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup \
        -v "$FP_CRICTL:/usr/local/bin/crictl:ro" -v "$root:/var/lib/containerd" \
        -v "$work:/bench" "$FP_DIND_IMAGE" bash -c "
        set -e
        printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\n' >/etc/crictl.yaml
        mkdir -p /etc/fp-hosts/registry.k8s.io /etc/fp-hosts/$registry
        printf 'server = \"https://registry.k8s.io\"\n[host.\"http://$registry\"]\n  capabilities = [\"pull\", \"resolve\"]\n' >/etc/fp-hosts/registry.k8s.io/hosts.toml
        printf 'server = \"http://$registry\"\n' >/etc/fp-hosts/$registry/hosts.toml
        printf 'version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/fp-hosts\"\n' >/tmp/config.toml
        now() { date +%s.%N; }
        # Until crictl lists every wanted image (or 600 s).
        listed() {
            for i in \$(seq 6000); do
                n=0
                for w in ${want_images[*]}; do crictl images -o json 2>/dev/null | grep -q \"\\\"\$w\\\"\" && n=\$((n + 1)); done
                [[ \$n == ${#want_images[@]} ]] && return 0
                sleep 0.1
            done
            echo 'crictl never listed every image'; tail -n 20 /tmp/containerd.log; return 1
        }
        t0=\$(now)
        containerd --config /tmp/config.toml >/tmp/containerd.log 2>&1 &
        pid=\$!
        for i in \$(seq 600); do ctr version >/dev/null 2>&1 && break; sleep 0.05; done
        $script
        echo \"SECONDS \$(awk -v a=\$t0 -v b=\$(now) 'BEGIN { printf \"%.3f\", b - a }')\"
        kill \$pid; wait \$pid || true"
}
seconds_of() { sed -n 's/^SECONDS //p' | tail -n 1; }

# The archive of the k3s way, and a check that the direct pull works: once.
rm -rf -- "$fresh" && mkdir -p -- "$fresh"
target "$fresh" <<EOF >/dev/null
for r in ${want_images[*]}; do crictl pull \$r >/dev/null; done
ctr -n k8s.io images export /bench/${archive##*/} ${want_images[*]}
EOF
[[ -s $archive ]] || die "no image archive made"
echo "archive of the image set (k3s way): $(du -h -- "$archive" | cut -f1)" >&2

declare -a bake_s boot_baked_s boot_import_s pull_s
for ((r = 1; r <= RUNS; r++)); do
    # bake
    rm -f -- "$out"
    sync
    t0=$EPOCHREALTIME
    "$bin" populate "$fixture" --containerd-image "$BENCH_IMAGE" --sandbox-image "$SANDBOX" \
        --registry-mirror "registry.k8s.io=http://$registry" \
        --dind-image "$FP_DIND_IMAGE" --dind-network "container:$FP_REGISTRY_CONTAINER" \
        -o "$out" >"$log" 2>&1 || { tail -n 20 -- "$log" >&2; die "populate failed (log $log)"; }
    bake_s+=("$(elapsed "$t0" "$EPOCHREALTIME")")

    # first boot, baked: on a writable copy (containerd writes to its root)
    read -r off size < <(root_geometry "$out") || die "cannot read partition 9 of $out"
    cp --sparse=always -- "$out" "$copy"
    mount -o "loop,offset=$off,sizelimit=$size" -- "$copy" "$mnt"
    s=$(target "$mnt/var/lib/containerd" <<<'listed' | seconds_of)
    umount -- "$mnt"
    rm -f -- "$copy"
    [[ -n $s ]] || die "the first boot on the baked store failed"
    boot_baked_s+=("$s")

    # first boot, import (k3s, RKE2)
    rm -rf -- "$fresh" && mkdir -p -- "$fresh"
    s=$(target "$fresh" <<EOF | seconds_of
ctr -n k8s.io images import --platform linux/amd64 /bench/${archive##*/} >/dev/null
listed
EOF
    )
    [[ -n $s ]] || die "the first boot importing the archive failed"
    boot_import_s+=("$s")

    # direct pull (CRI)
    rm -rf -- "$fresh" && mkdir -p -- "$fresh"
    s=$(target "$fresh" <<EOF | seconds_of
for r in ${want_images[*]}; do crictl pull \$r >/dev/null; done
listed
EOF
    )
    [[ -n $s ]] || die "the direct pull failed"
    pull_s+=("$s")
    echo "run $r/$RUNS: bake ${bake_s[-1]} s, first boot baked ${boot_baked_s[-1]} s, import ${boot_import_s[-1]} s, direct pull ${pull_s[-1]} s" >&2
done

bake=$(median "${bake_s[@]}")
baked=$(median "${boot_baked_s[@]}")
import=$(median "${boot_import_s[@]}")
pull=$(median "${pull_s[@]}")
boot_ratio=$(awk -v a="$import" -v b="$baked" 'BEGIN { printf "%.2f", a / b }')
bake_ratio=$(awk -v a="$bake" -v b="$pull" 'BEGIN { printf "%.2f", a / b }')
cat <<EOF
containerd store, image set: $BENCH_IMAGE + $SANDBOX (medians of $RUNS runs, target containerd of $FP_DIND_IMAGE)
  first boot, baked store        ${baked} s   (containerd start to crictl listing all)
  first boot, import (k3s way)   ${import} s
  ratio import / baked           ${boot_ratio}   goal >= ${GOAL_BOOT}: $(verdict "$boot_ratio" ge "$GOAL_BOOT")
  bake (populate, whole run)     ${bake} s
  direct CRI pull                ${pull} s
  ratio bake / direct pull       ${bake_ratio}
EOF

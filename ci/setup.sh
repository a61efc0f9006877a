#!/usr/bin/env bash
# Installs what building and testing flatcar-preload needs on a fresh Debian
# machine (as root). Quick when everything is there already.
set -euo pipefail

# libext2fs-dev: the library the ext4 writer links; e2fsprogs: e2fsck and
# debugfs that the tests read results back with; gdisk: sgdisk for fixtures;
# attr: getfattr/setfattr for the benchmark; time: peak RSS in benchmarks.
packages=(libext2fs-dev e2fsprogs gdisk attr time pkg-config gzip)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

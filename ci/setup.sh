#!/usr/bin/env bash
# Installs what building and testing flatcar-preload needs on Debian or
# Ubuntu (as root, or through sudo). Quick and silent when everything is
# there already, so that the README's first command can start with it.
# Elsewhere it only says what to install.
set -euo pipefail

# libext2fs-dev: the library the ext4 writer links (with its static
# archives, and comerr-dev's); pkg-config: how build.rs finds it; gcc and
# libc6-dev: the C layer and the static glibc the binary is linked with;
# e2fsprogs: e2fsck and resize2fs that the tool runs, debugfs that the tests
# read results back with; gdisk: sgdisk for fixtures; attr: getfattr/setfattr
# for the benchmark; time: peak RSS in benchmarks; qemu-utils: qcow2 and
# vmdk inputs and their tests; bzip2, zstd: compressed inputs in the tests;
# python3: ci/modules.py, the module graph check. What the tool runs for the
# node's image beside the stores: btrfs-progs and fakeroot (OEM rebuilt
# rootless), mtools (the ESP), squashfs-tools and erofs-utils (system
# extensions' release files); dosfstools: mkfs.fat and fsck.fat in tests.
packages=(libext2fs-dev pkg-config gcc libc6-dev e2fsprogs gdisk attr time gzip qemu-utils bzip2 zstd python3
    btrfs-progs fakeroot mtools squashfs-tools erofs-utils dosfstools)

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "setup: not Debian/Ubuntu: install libext2fs with its headers and static archives, pkg-config," \
        "a C compiler, static glibc, e2fsprogs, gdisk and qemu-img yourself" \
        "(Fedora: e2fsprogs-devel e2fsprogs-static glibc-static pkgconf-pkg-config gcc gdisk qemu-img;" \
        "Arch: e2fsprogs pkgconf gcc gptfdisk qemu-img)" >&2
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null ||
        { echo "setup: missing ${missing[*]}: run ci/setup.sh as root" >&2; exit 1; }
    sudo=(sudo)
fi
echo "setup: installing ${missing[*]}" >&2
# The lists we have first; `apt-get update` only when that fails (no lists
# yet on a fresh machine, or stale ones).
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

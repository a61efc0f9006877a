#!/usr/bin/env bash
# Makes the seed corpus of tests/fuzz_tar.rs with GNU tar (the archives a
# user would really feed `unpack`): PAX with xattrs holding newline bytes,
# GNU long names, ustar, a hard link, devices and a symlink. Run as root
# (trusted.* xattrs, device nodes); the output is committed.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)/corpus
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cd "$src"
mkdir -p t/d/opaque t/"new
line"
printf 'hello\n' >t/d/file
printf '' >t/d/empty
ln t/d/file t/d/hard
ln -s ../d/file t/d/sym
ln -s "with
newline" t/"new
line"/link
mknod t/d/whiteout c 0 0
mkfifo t/d/fifo
setfattr -n trusted.overlay.opaque -v y t/d/opaque
# cap_dac_override,cap_fowner+ep: 0x0a in the value.
setfattr -n security.capability -v 0x010000020a000000000000000000000000000000 t/d/file
setfattr -n user.nl -v 0x0a0a410a t/d/empty
long=$(printf 'L%.0s' $(seq 1 120))
mkdir -p "t/$long"
printf 'x' >"t/$long/$long"
touch -d @1700000000.5 t/d/file t/d/empty
tar --format=pax --xattrs --xattrs-include='*' --numeric-owner -cf "$out/gnu-pax-xattrs.tar" t
tar --format=gnu --numeric-owner -cf "$out/gnu-longnames.tar" "t/$long" t/d
tar --format=ustar --numeric-owner -cf "$out/ustar.tar" t/d/file t/d/sym t/d/hard t/d/opaque
echo "made $(ls "$out" | wc -l) seeds in $out" >&2

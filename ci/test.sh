#!/usr/bin/env bash
# Runs every check of flatcar-preload: formatting, lints, unit tests and the
# integration suites (which write real disk images, read them back with
# e2fsck, debugfs and ext4-view, and loop-mount them: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ((EUID == 0)); then
    ci/setup.sh
else
    echo "test: not root: the suites that loop-mount images will fail; run as root" >&2
fi
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --no-fail-fast

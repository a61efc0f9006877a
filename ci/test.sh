#!/usr/bin/env bash
# Runs every check of flatcar-preload: formatting, lints, unit tests and the
# integration suites (which write real disk images, read them back with
# e2fsck, debugfs and ext4-view, loop-mount them, and preload images with a
# real Docker: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ((EUID == 0)); then
    ci/setup.sh
    # A dockerd of our own, a local registry and a locally built dind image
    # (Docker Hub is not reachable): what tests/populate.rs drives.
    set -a
    eval "$(ci/docker-env.sh)"
    set +a
else
    echo "test: not root: the suites that loop-mount images or start Docker will fail; run as root" >&2
fi
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features test-hooks --quiet -- -D warnings
cargo test --features test-hooks --no-fail-fast

#!/usr/bin/env bash
# Runs every check of flatcar-preload: formatting, lints, unit tests and the
# integration suites (which write real disk images, read them back with
# e2fsck, debugfs and ext4-view, loop-mount them, and preload images with a
# real Docker: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ((EUID == 0)); then
    ci/setup.sh
    # A dockerd of our own, a local registry and dind images built from
    # Debian's suites (Docker Hub is not reachable): what tests/populate.rs
    # drives.
    set -a
    eval "$(ci/docker-env.sh)"
    set +a
    # Everything the tests need is set up now: a test that would skip fails
    # instead (tests/common/mod.rs).
    export CI=true
else
    echo "test: not root: the tests that loop-mount images or start Docker skip, each saying so; run as root for all of them" >&2
    ci/setup.sh
    # e2fsck, resize2fs, debugfs, mke2fs and sgdisk live in sbin, which is not
    # in a Debian user's PATH.
    PATH=$PATH:/usr/sbin:/sbin
fi
cargo fmt --check
# No import cycles, no module using its parent's internals.
python3 ci/modules.py
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features test-hooks --quiet -- -D warnings
# The tar fuzzer (tests/fuzz_tar.rs) runs for a minute here; 10 s otherwise.
# The parser targets (tests/fuzz_parsers.rs) run 11 s each, about 2 minutes
# in all (FP_FUZZ_PARSER_SECONDS for a longer run).
FP_FUZZ_SECONDS=${FP_FUZZ_SECONDS:-60} cargo test --features test-hooks --no-fail-fast
if ((EUID == 0)); then
    # The same test binaries again as an unprivileged user (fpuser, created
    # when missing), without CI=true and without Docker, as the README's
    # non-root command runs them: what needs root or Docker skips, saying
    # so, and everything else must pass (a test that passes only as root
    # fails here). Nothing is rebuilt: about 3 minutes.
    ci/test-as-user.sh
fi

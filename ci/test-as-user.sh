#!/usr/bin/env bash
# Runs the test binaries that the root run of ci/test.sh built once more as
# an unprivileged user, as the README's `PATH=$PATH:/usr/sbin:/sbin cargo
# test` runs them for a user: the tests that need root or Docker skip, each
# printing `SKIPPED name: reason`, and every other one must pass. A test
# that passes only as root (a fixture file that only root can read back,
# say) fails here instead of on a user's machine.
#
# Usage, as root, after `cargo test --features test-hooks` (ci/test.sh):
#   ci/test-as-user.sh [USER]    (default fpuser, created when missing)
#
# Nothing is rebuilt: cargo only names the binaries it built. They run one
# after the other with a clean environment: no CI (skipping is allowed),
# no DOCKER_* (no engine), a Debian user's PATH plus /usr/sbin:/sbin, a HOME
# and TMPDIR of the run's, 5 s of tar fuzzing and 1 s per parser target.
# The tests find the checkout, the tool and cargo's directory for their
# files through CARGO_MANIFEST_DIR, CARGO_BIN_EXE_flatcar-preload and
# CARGO_TARGET_TMPDIR (tests/common/mod.rs): the checkout and the binaries
# where they are when the user can read them there, else copies (a clone
# in root's home); always a directory of the run's for the tests' files
# (root's target/tmp is not the user's to write).
#
# Prints each binary's output, then one line per binary and a summary
# line; exits 1 when a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ((EUID != 0)); then
    echo "test-as-user: run as root: it runs the tests as another user" >&2
    exit 2
fi
user=${1:-fpuser}
if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
    echo "test-as-user: created user $user"
fi
if (($(id -u "$user") == 0)); then
    echo "test-as-user: $user is root" >&2
    exit 2
fi
start=$SECONDS

# What `cargo test --features test-hooks` built: the tool, and the test
# binaries with their target's kind and name (in that order, sorted).
tool= kinds=() names=() exes=()
while IFS=$'\t' read -r kind name exe; do
    if [[ $kind == tool ]]; then
        tool=$exe
    else
        kinds+=("$kind") names+=("$name") exes+=("$exe")
    fi
done < <(
    cargo test --features test-hooks --no-run --quiet --message-format=json |
        python3 -c '
import json, sys
built = set()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0] if m["profile"]["test"] else "tool"
        built.add((kind != "tool", kind, m["target"]["name"], m["executable"]))
for b in sorted(built):
    print(*b[1:], sep="\t")
'
)
if [[ -z $tool ]] || ((${#exes[@]} == 0)); then
    echo "test-as-user: cargo named no test binaries" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fp-as-user.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/home" "$work/tmp" "$work/target-tmp" "$work/logs"
src=$PWD
if ! runuser -u "$user" -- sh -c 'for f; do [ -r "$f" ] || exit 1; done' sh \
    "$src/Cargo.toml" "$tool" "${exes[@]}"; then
    echo "test-as-user: $user cannot read $src or its binaries: running copies"
    mkdir "$work/src" "$work/bin"
    tar -C "$src" --exclude=./target --exclude=./.git -cf - . | tar -C "$work/src" -xf -
    src=$work/src
    for i in "${!exes[@]}"; do
        cp --reflink=auto "${exes[i]}" "$work/bin/"
        exes[i]=$work/bin/${exes[i]##*/}
    done
    cp --reflink=auto "$tool" "$work/bin/"
    tool=$work/bin/${tool##*/}
    chown -R "$user:" "$work/src" "$work/bin"
fi
chown "$user:" "$work" "$work/home" "$work/tmp" "$work/target-tmp"

passed=0 failed=0 skipped=0 bad=() summary=()
for i in "${!exes[@]}"; do
    kind=${kinds[i]} name=${names[i]}
    log=$work/logs/$kind-$name.log
    rc=0
    if [[ $name == build_script ]]; then
        # It builds a probe crate with the cargo that built it: root's
        # toolchain and registry, not this user's (the root run ran it).
        echo "SKIPPED $name: runs root's cargo and registry (the root run ran it)" | tee "$log"
    else
        echo "== $kind $name, as $user"
        (cd "$src" && runuser -u "$user" -- env -i \
            HOME="$work/home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 \
            PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin TMPDIR="$work/tmp" \
            CARGO_MANIFEST_DIR="$src" CARGO_BIN_EXE_flatcar-preload="$tool" \
            CARGO_TARGET_TMPDIR="$work/target-tmp" \
            FP_FUZZ_SECONDS=5 FP_FUZZ_PARSER_SECONDS=1 RUST_BACKTRACE=1 \
            "${exes[i]}") 2>&1 | tee "$log" || rc=$?
    fi
    # libtest's last line: "test result: ok. 3 passed; 0 failed; 1 ignored; ...".
    result=$(grep '^test result: ' "$log" | tail -n 1 || true)
    p=$(sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p' <<<"$result")
    f=$(sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p' <<<"$result")
    s=$(grep -c 'SKIPPED ' "$log" || true)
    passed=$((passed + ${p:-0})) failed=$((failed + ${f:-0})) skipped=$((skipped + s))
    line=$(printf '%-5s %-16s %4d passed %3d failed %3d skipped' "$kind" "$name" "${p:-0}" "${f:-0}" "$s")
    if ((rc != 0)); then
        line+="  (exit status $rc)"
        bad+=("$kind $name")
    fi
    summary+=("$line")
done

failing=
if ((${#bad[@]})); then
    failing=$(printf '%s, ' "${bad[@]}")
    failing="; failing: ${failing%, }"
fi
printf 'test-as-user: %s\n' "${summary[@]}"
echo "test-as-user: ${#exes[@]} test binaries as $user in $((SECONDS - start)) s:" \
    "$passed passed, $failed failed, $skipped skipped (SKIPPED lines)$failing"
((${#bad[@]} == 0))

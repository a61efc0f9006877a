#!/usr/bin/env bash
# docker-env-down.sh - undo the running part of ci/docker-env.sh, for local cleanup.
#
# Removes every container of OUR dockerd (unix:///run/fp-docker/docker.sock;
# it is dedicated to the tests, so nothing else lives there), the smoke test's
# volume, stops that dockerd and deletes its bridge. Debian's own docker.service
# (/var/run/docker.sock) is not touched.
#
# Kept on purpose (slow to rebuild, and the next ci/docker-env.sh reuses them):
# the data-root (${FP_DOCKER_ROOT:-/var/lib/fp-docker}: the fp-dind images, the
# registry volume fp-registry-data with pushed fixtures, other volumes), the
# rootfs tarballs in ${FP_CACHE:-/var/cache/flatcar-preload}, packages, group
# fpdocker and user fptest. To start from scratch after this script:
#   rm -rf /var/lib/fp-docker /var/cache/flatcar-preload
set -euo pipefail

readonly RUN_DIR=/run/fp-docker
readonly SOCK=$RUN_DIR/docker.sock
readonly PIDFILE=$RUN_DIR/dockerd.pid
readonly BRIDGE=fpdocker0
export DOCKER_HOST=unix://$SOCK

say() { echo "docker-env-down: $*" >&2; }

((EUID == 0)) || { say "must run as root"; exit 1; }

if docker info >/dev/null 2>&1; then
    mapfile -t ids < <(docker ps -aq)
    if ((${#ids[@]})); then
        # -v: also anonymous volumes of those containers; named ones stay.
        docker rm -f -v "${ids[@]}" >/dev/null
    fi
    docker volume rm fp-dind-probe-vol >/dev/null 2>&1 || true
    say "containers: removed ${#ids[@]}"
else
    say "containers: dockerd not answering, skipped"
fi

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    # SIGTERM: dockerd stops its containerd, unmounts and removes the pidfile.
    kill -TERM "$pid"
    for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd: pid $pid still alive after 30 s, sending SIGKILL"
        kill -KILL "$pid" || true
    fi
    say "dockerd: stopped (pid $pid)"
else
    say "dockerd: not running"
fi

if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link delete "$BRIDGE"
    say "bridge: deleted $BRIDGE"
fi
# Leftovers of a killed daemon (netns bind mounts) keep the dir busy; only the
# socket and run dir are removed when nothing is mounted under it.
if ! grep -q " $RUN_DIR/" /proc/self/mounts; then
    rm -rf "$RUN_DIR"
else
    say "note: mounts remain under $RUN_DIR (see /proc/self/mounts)"
fi

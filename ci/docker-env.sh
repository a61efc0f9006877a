#!/usr/bin/env bash
# docker-env.sh - bring up the Docker environment the integration tests need.
#
# Idempotent: on a fresh Debian 12 machine it installs and builds everything
# (~2.5 min, most of it two debootstraps); on a machine that already has it, it
# only checks that each piece is there and answering (a second or two).
#
# What it sets up (all of it separate from Debian's own docker.service):
#   * our own dockerd (Debian 12's docker.io, 20.10) with its own data-root,
#     exec-root, pidfile, bridge and socket unix:///run/fp-docker/docker.sock,
#     log in /var/log/fp-docker.log; it also listens on tcp://127.0.0.1:2376
#     with TLS and wants a client certificate there (a remote engine), with a
#     test CA, server and client certificates made once in $FP_CACHE/tls
#     (FP_DOCKER_TLS_HOST, FP_DOCKER_CERT_PATH: the client's directory);
#   * group `fpdocker` owning that socket, and a non-root test user `fptest`
#     in that group;
#   * one dind image per Debian suite of FP_DIND_SUITES (stable unstable):
#     a rootfs made with debootstrap holding that suite's docker.io and
#     docker-cli, iptables and ca-certificates, imported with `docker import`
#     and named by the Docker version found inside: today fp-dind:26 (stable,
#     the major of Flatcar LTS) and fp-dind:28 (unstable, Flatcar stable and
#     beta), and fp-dind:29: the unstable image with dockerd 29.1.3 (Flatcar
#     alpha) from the shared directory, as Debian has no Docker 29 yet.
#     The last suite's image also has docker-registry: it is the dind that
#     pulls (FP_DIND_IMAGE) and the registry's image. All of them are started
#     on written stores by the truth tests (FP_TARGET_DOCKERS);
#   * container fp-registry running Debian's registry on port 5000 of its own
#     network namespace, data on volume fp-registry-data, published to the
#     host on 127.0.0.1:5000 only.
#
# Usage (as root):
#   ci/docker-env.sh                 # run: step lines on stderr, KEY=VALUE on stdout
#   eval "$(ci/docker-env.sh)"       # ... and take the variables
#   . ci/docker-env.sh               # sourced: runs in a child bash (so that
#                                    # set -e/-u cannot leak into the caller),
#                                    # then exports the variables here
#   . "${FP_CACHE:-/var/cache/flatcar-preload}/docker-env.sh"   # later, variables only
#
# Knobs (environment):
#   FP_DOCKER_ROOT     data-root of our dockerd      (/var/lib/fp-docker)
#   FP_CACHE           rootfs tarballs + env file    (/var/cache/flatcar-preload)
#   FP_DIND_MIRROR     Debian mirror for debootstrap (first Debian URI in apt's
#                      sources; none there: debootstrap's own default)
#   FP_DIND_SUITES     suites to build dind images from, the last one pulls
#                      ("stable unstable")
#   FP_DIND_REFRESH=1  debootstrap every suite again (a machine that keeps its
#                      cache picks up a new Docker of a suite this way)
#   FP_BRIDGE_CIDR     address of our bridge         (172.30.99.1/24)
#   FP_DOCKER_TIMEOUT  seconds to wait for dockerd   (60)
#   FP_DOCKER_TLS_PORT its TLS port on 127.0.0.1     (2376)
#   FP_SHARED_DIR      where crictl/ and docker29/ are (../shared beside the
#                      repository, else /work/shared); unpacked into FP_CACHE
#   FP_VERIFY=1        run the dind/registry smoke test even when nothing changed
#
# How the pieces are meant to be used (exact commands, all verified here):
#
#   # A dind that can pull (inner Docker 28 today, overlay2 on a volume):
#   docker run -d --name D --network container:fp-registry \
#       --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
#       -v VOL:/var/lib/docker fp-dind:28 \
#       dockerd --storage-driver=overlay2 --host=unix:///var/run/docker.sock \
#               --iptables=false --ip6tables=false --bridge=none
#   docker exec D docker pull 127.0.0.1:5000/fp/test:1
#
#   Why each flag:
#   - SYS_ADMIN + apparmor=unconfined: mount overlay, write trusted.* xattrs.
#     (--privileged fails on this VM: CAP_SYS_RESOURCE is not in the bounding set.)
#   - -v VOL:/var/lib/docker: the inner overlay2 cannot sit on the container's
#     own overlay root (overlay on overlay); a volume is plain ext4.
#   - --iptables=false --ip6tables=false --bridge=none: without NET_ADMIN the
#     inner dockerd can neither create its NAT chains ("iptables ... Permission
#     denied (you must be root)", fatal) nor the docker0 bridge ("Failed to
#     create bridge docker0 via netlink: operation not permitted", fatal);
#     ip6tables only warns but is noise. Pulling needs none of them. Not giving
#     NET_ADMIN also means the inner dockerd cannot touch the shared netns.
#   - --network container:fp-registry: 127.0.0.1 of the dind IS 127.0.0.1 of
#     fp-registry, so 127.0.0.1:5000 reaches the registry over loopback, and
#     Docker treats 127.0.0.0/8 registries as insecure (plain HTTP) by itself.
#     (Never host network: a dind there with --bridge=none deleted the host
#     daemon's docker0.)
#   - Nested `docker run` inside such a dind fails ("mkdir
#     /sys/fs/cgroup/cpuset/docker: read-only file system"); running containers
#     in it needs the wider flag set of shared/notes/findings.md. Pull-only is fine.
#
#   # Pushing fixtures from the host (through the published loopback port,
#   # also plain HTTP without any daemon config since it is 127.0.0.1):
#   docker build -t 127.0.0.1:5000/fp/NAME:TAG DIR   # or docker tag
#   docker push 127.0.0.1:5000/fp/NAME:TAG
#   Inside its netns the registry listens on :5000 (all addresses), because the
#   published port is forwarded (docker-proxy) to the container's bridge
#   address, not to its 127.0.0.1. So other containers on our bridge could
#   reach it too; from outside the host it is not reachable.

# Sourced? Run ourselves in a child bash and import the result, so that the
# caller's shell options are not changed and a failure returns instead of
# exiting the caller's shell.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    bash "${BASH_SOURCE[0]}" >/dev/null &&
        . "${FP_CACHE:-/var/cache/flatcar-preload}/docker-env.sh"
    return
fi

set -euo pipefail

readonly FP_DOCKER_ROOT=${FP_DOCKER_ROOT:-/var/lib/fp-docker}
readonly FP_CACHE=${FP_CACHE:-/var/cache/flatcar-preload}
readonly RUN_DIR=/run/fp-docker
readonly SOCK=$RUN_DIR/docker.sock
readonly LOG=/var/log/fp-docker.log
readonly GROUP=fpdocker
readonly TEST_USER=fptest
readonly BRIDGE=fpdocker0
readonly BRIDGE_CIDR=${FP_BRIDGE_CIDR:-172.30.99.1/24}
readonly DIND_REPO=fp-dind
# Debian suites to build dind images from, by their moving names: stable
# (Docker 26 today, the major of Flatcar LTS) and unstable (28 today, 29
# later). The last one pulls in the tests and serves the registry.
read -r -a DIND_SUITES <<<"${FP_DIND_SUITES:-stable unstable}"
readonly DIND_SUITES
((${#DIND_SUITES[@]})) || { echo "docker-env: ERROR: FP_DIND_SUITES is empty" >&2; exit 1; }
# Bump when the rootfs recipe changes: it names the cached tarballs and is a
# label of the images, so an old cache/image is not reused after a change.
readonly DIND_RECIPE=1
readonly REG_CTR=fp-registry
readonly REG_VOL=fp-registry-data
readonly REGISTRY=127.0.0.1:5000
readonly TLS_DIR=$FP_CACHE/tls
readonly TLS_PORT=${FP_DOCKER_TLS_PORT:-2376}
readonly PROBE_CTR=fp-dind-probe
readonly PROBE_VOL=fp-dind-probe-vol
readonly TEST_REF=$REGISTRY/fp/test:1

export DOCKER_HOST=unix://$SOCK

say() { echo "docker-env: $*" >&2; }
die() {
    echo "docker-env: ERROR: $*" >&2
    exit 1
}

((EUID == 0)) || die "must run as root"

changed=0 # set when something was (re)built: triggers the smoke test

# --- 1. packages ------------------------------------------------------------
# docker.io      dockerd 20.10 + CLI (our host daemon), pulls containerd, runc
# debootstrap    builds the rootfs of each dind image
# (no docker-registry on the host: the registry runs from the pulling dind image, see
#  step 5; the host package would only add a service that wants port 5000)
# busybox-static static /bin/busybox for FROM-scratch test images
# iptables       host dockerd's bridge/NAT and port publishing
# iproute2       `ip` for our bridge;  curl: registry health check
# passwd         useradd/groupadd (always there, listed for completeness)
# zstd           decompresses the shared crictl (step 6b)
# openssl        the certificates of our dockerd's TLS endpoint (step 3)
# openssh-*      the remote-engine test over ssh starts its own sshd (never
#                the system's: the policy-rc.d below keeps it stopped)
# selinux-utils  matchpathcon: the labels the tool writes are checked against
#                libselinux's own lookup (no SELinux kernel needed)
pkgs=(docker.io debootstrap busybox-static iptables iproute2 curl passwd zstd openssl openssh-server openssh-client selinux-utils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        missing+=("$p")
done
if ((${#missing[@]})); then
    # The postinsts of docker.io (and docker-registry, if ever added) would
    # start Debian's daemons through invoke-rc.d: there is no systemd here, so
    # that falls back to /etc/init.d and would really start a second dockerd on
    # /var/run/docker.sock. A policy-rc.d that exits 101 forbids it. The image
    # of this VM already has one; create it only for the install when missing.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/fp-apt.log 2>&1
    }
    # Try with the lists we have; `apt-get update` only when that fails
    # (no lists yet, or stale ones pointing at versions that are gone).
    if ! apt_install; then
        apt-get update -q >>/tmp/fp-apt.log 2>&1 || { tail -n 20 /tmp/fp-apt.log >&2; die "apt-get update failed"; }
        apt_install || { tail -n 20 /tmp/fp-apt.log >&2; die "apt-get install ${missing[*]} failed (log /tmp/fp-apt.log)"; }
    fi
    if ((own_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    say "packages: installed ${missing[*]}"
else
    say "packages: ok"
fi
command -v dockerd >/dev/null || PATH=$PATH:/usr/sbin:/sbin

# --- 2. group, test user ----------------------------------------------------
# Our own group rather than `docker`, which is the socket group of Debian's
# daemon: members of fpdocker get our daemon only.
getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
if ! id "$TEST_USER" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash --groups "$GROUP" "$TEST_USER"
    say "user: created $TEST_USER (group $GROUP)"
else
    id -nG "$TEST_USER" | tr ' ' '\n' | grep -qx "$GROUP" || usermod -aG "$GROUP" "$TEST_USER"
    say "user: ok ($TEST_USER in $GROUP)"
fi
# No password, but not locked ('*', where useradd leaves '!'): sshd lets no
# one into a locked account, even with a key (the ssh remote-engine test).
[[ $(getent shadow "$TEST_USER" | cut -d: -f2) == '*' ]] || usermod -p '*' "$TEST_USER"

# --- 3. our dockerd ---------------------------------------------------------
docker_up() { docker info >/dev/null 2>&1; }

# It also listens on tcp://127.0.0.1:$TLS_PORT with TLS, and wants a client
# certificate there: a remote engine, as a docker:dind service is to a CI
# job (DOCKER_HOST=tcp://...:2376, DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH).
# A CA, the server's certificate (IP 127.0.0.1) and a client's, made once
# into $TLS_DIR; the client's directory is laid out as DOCKER_CERT_PATH
# wants it (ca.pem, cert.pem, key.pem) and readable by group $GROUP.
make_tls() {
    [[ -f $TLS_DIR/client/key.pem ]] && return
    local t
    t=$(mktemp -d)
    (
        cd "$t"
        ssl() { openssl "$@" >/dev/null 2>&1 || die "openssl $1 failed"; }
        ssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 3650 \
            -subj "/CN=flatcar-preload test engine CA"
        ssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj "/CN=127.0.0.1"
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
        ssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -out server-cert.pem -days 3650 -extfile server.ext
        ssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj "/CN=fp-test-client"
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        ssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -out cert.pem -days 3650 -extfile client.ext
        mkdir client
        cp ca.pem cert.pem key.pem client/
    )
    mkdir -p "$FP_CACHE"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    cp "$t"/{ca.pem,server-cert.pem,server-key.pem} "$TLS_DIR/"
    cp -r "$t/client" "$TLS_DIR/client"
    rm -rf "$t"
    chmod 600 "$TLS_DIR/server-key.pem"
    chgrp -R "$GROUP" "$TLS_DIR/client"
    chmod 750 "$TLS_DIR/client"
    chmod 640 "$TLS_DIR/client/key.pem"
    say "tls: made a CA, server and client certificates in $TLS_DIR"
}
tls_up() {
    curl -fsS -o /dev/null --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client/cert.pem" \
        --key "$TLS_DIR/client/key.pem" "https://127.0.0.1:$TLS_PORT/_ping" 2>/dev/null
}
make_tls
chmod 755 "$TLS_DIR"
if docker_up && ! tls_up; then
    # Started by an older version of this script: without the endpoint.
    pid=$(cat "$RUN_DIR/dockerd.pid")
    say "dockerd: running without its TLS endpoint: restarting it (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 240; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    ! kill -0 "$pid" 2>/dev/null || die "dockerd (pid $pid) did not stop"
fi

if docker_up; then
    say "dockerd: ok (already running, $SOCK)"
else
    mkdir -p "$RUN_DIR" "$FP_DOCKER_ROOT"
    pid=$(cat "$RUN_DIR/dockerd.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        # Started but not answering yet (or wedged): wait, do not start a 2nd.
        say "dockerd: pid $pid exists, waiting for it"
    else
        # Own bridge instead of docker0: docker0 belongs to Debian's daemon
        # (two daemons on one bridge fight over addresses and iptables rules),
        # and a dind on host network with --bridge=none deletes "docker0".
        if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
            ip link add "$BRIDGE" type bridge
            ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
        fi
        ip link set "$BRIDGE" up
        # --group: socket root:fpdocker 0660, so fptest can use it.
        # --exec-root: our containerd (dockerd starts its own, with the socket
        #   under exec-root), netns files and shims, apart from Debian's.
        # setsid + all fds redirected: the daemon outlives this script and
        #   does not hold the caller's stdout/stderr open.
        setsid dockerd \
            --data-root "$FP_DOCKER_ROOT" \
            --exec-root "$RUN_DIR/exec" \
            --pidfile "$RUN_DIR/dockerd.pid" \
            --host "unix://$SOCK" \
            --host "tcp://127.0.0.1:$TLS_PORT" \
            --tlsverify \
            --tlscacert "$TLS_DIR/ca.pem" \
            --tlscert "$TLS_DIR/server-cert.pem" \
            --tlskey "$TLS_DIR/server-key.pem" \
            --group "$GROUP" \
            --storage-driver overlay2 \
            --bridge "$BRIDGE" \
            </dev/null >>"$LOG" 2>&1 &
    fi
    timeout=${FP_DOCKER_TIMEOUT:-60}
    for ((i = 0; i < timeout * 4; i++)); do
        docker_up && break
        sleep 0.25
    done
    if ! docker_up; then
        echo "---- tail of $LOG ----" >&2
        tail -n 30 "$LOG" >&2 || true
        die "dockerd did not answer on $SOCK within ${timeout}s"
    fi
    say "dockerd: started ($(docker version -f '{{.Server.Version}}'), $SOCK, log $LOG)"
fi
# dir: traversable by all; socket: group fpdocker (dockerd --group sets it,
# re-applied in case an older daemon ran without it).
chmod 755 "$RUN_DIR"
chgrp "$GROUP" "$SOCK" && chmod 660 "$SOCK"
runuser -u "$TEST_USER" -- env DOCKER_HOST="$DOCKER_HOST" docker version >/dev/null 2>&1 ||
    die "user $TEST_USER cannot use $SOCK"

# --- 4. dind images, one per Debian suite --------------------------------------
# Each suite of FP_DIND_SUITES gives a rootfs (debootstrap) with the Docker
# that suite has today, imported as fp-dind:MAJOR. No version is pinned: when
# unstable moves to Docker 29 the next fresh build is fp-dind:29 and the truth
# tests start it on the written store, with no change here.

# Debian mirror for debootstrap: the one apt already uses (deb822 `URIs:` or
# one-line `deb URI suite`), the Debian archive proper, not -security. None:
# debootstrap's own default.
debian_mirror() {
    local f u
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        u=$(awk '/^[[:space:]]*#/ {next}
                 $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }
                 $1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' "$f" |
            grep -E '/debian/?$' | head -n 1 || true)
        [[ -n $u ]] && { echo "${u%/}"; return; }
    done
}

label() { docker image inspect -f "{{index .Config.Labels \"org.flatcar-preload.$2\"}}" "$1" 2>/dev/null || true; }

# The path of REL in the shared directory beside the repository (FP_SHARED_DIR
# first); fails when no such directory has it.
shared_file() {
    local here d
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    for d in "${FP_SHARED_DIR:-}" "$here/../shared" /work/shared; do
        [[ -n $d && -f $d/$1 ]] && { echo "$d/$1"; return 0; }
    done
    return 1
}

# debootstrap SUITE into a rootfs, cached as TAR, its dockerd version in TAR.version.
build_rootfs() {
    local suite=$1 include=$2 tar=$3 mirror rootfs ver start
    mirror=${FP_DIND_MIRROR:-$(debian_mirror)}
    rootfs=$FP_CACHE/dind-rootfs-$suite.tmp
    rm -rf "$rootfs" "$tar.tmp"
    trap 'rm -rf "$rootfs" "$tar.tmp"' EXIT
    start=$SECONDS
    # ~35 s and ~600 MB per suite before trimming. An empty mirror argument
    # is left out: debootstrap then uses its own default.
    debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" ${mirror:+"$mirror"} \
        >"$FP_CACHE/debootstrap-$suite.log" 2>&1 ||
        { tail -n 20 "$FP_CACHE/debootstrap-$suite.log" >&2; die "debootstrap $suite ${mirror:-(default mirror)} failed (log $FP_CACHE/debootstrap-$suite.log)"; }
    ver=$(chroot "$rootfs" dockerd --version | sed -n 's/^Docker version \([0-9][0-9.]*\).*/\1/p')
    [[ $ver =~ ^[0-9]+\. ]] || die "$suite: cannot read the version of its dockerd ('$ver')"
    # Trim what a container never needs (~170 MB of .debs and lists).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    # Registry config without the htpasswd auth of Debian's default one.
    cat >"$rootfs/etc/fp-registry.yml" <<'EOF2'
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  # all addresses of the container's netns: the host reaches it through the
  # published 127.0.0.1:5000, dinds sharing the netns through 127.0.0.1:5000
  addr: :5000
EOF2
    # Uncompressed: import reads it fastest and disk is not short here.
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs" -cf "$tar.tmp" .
    echo "$ver" >"$tar.version"
    mv "$tar.tmp" "$tar"
    rm -rf "$rootfs"
    trap - EXIT
    say "image: debootstrap $suite from ${mirror:-the default mirror of debootstrap} (dockerd $ver) in $((SECONDS - start)) s, cached $tar"
}

# Sets $image to the fp-dind image of one suite, built if needed. The last
# suite's image also holds docker-registry: it pulls and serves the registry.
claimed=" "
dind_image() {
    local suite=$1 role=$2 key tar ver major include
    key=$suite-$role
    image=$(docker images --filter "label=org.flatcar-preload.rootfs=$key" \
        --filter "label=org.flatcar-preload.recipe=$DIND_RECIPE" \
        --format '{{.Repository}}:{{.Tag}}' | grep -m 1 "^$DIND_REPO:" || true)
    if [[ -n $image && ${FP_DIND_REFRESH:-0} != 1 ]]; then
        say "image: ok ($image: $suite, dockerd $(label "$image" docker))"
    else
        tar=$FP_CACHE/fp-dind-$key-r$DIND_RECIPE.tar
        include=docker.io,docker-cli,iptables,ca-certificates
        [[ $role == pull ]] && include+=,docker-registry
        if [[ ! -s $tar || ! -s $tar.version || ${FP_DIND_REFRESH:-0} == 1 ]]; then
            build_rootfs "$suite" "$include" "$tar"
        fi
        ver=$(<"$tar.version")
        major=${ver%%.*}
        # Named by the Docker inside; two suites with one major: the later
        # one says which it is.
        image=$DIND_REPO:$major
        [[ $claimed == *" $image "* ]] && image=$DIND_REPO:$major-$suite
        # No ENTRYPOINT: the command is the program (`dockerd ...` for a
        # dind, `docker-registry serve ...` for the registry). The default
        # CMD is a pull-only dind, with the flags explained at the top.
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change "LABEL org.flatcar-preload.recipe=$DIND_RECIPE" \
            --change "LABEL org.flatcar-preload.rootfs=$key" \
            --change "LABEL org.flatcar-preload.docker=$ver" \
            --change 'CMD ["dockerd", "--host=unix:///var/run/docker.sock", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false", "--bridge=none"]' \
            "$tar" "$image" >/dev/null
        [[ $role == pull ]] && changed=1
        say "image: imported $image ($suite, dockerd $ver) from $tar"
    fi
    claimed+="$image "
}

mkdir -p "$FP_CACHE"
targets=()
for ((n = 0; n < ${#DIND_SUITES[@]}; n++)); do
    role=target
    ((n == ${#DIND_SUITES[@]} - 1)) && role=pull
    dind_image "${DIND_SUITES[n]}" "$role"
    targets+=("$image")
done
DIND_IMAGE=$image
DIND_MAJOR=$(label "$DIND_IMAGE" docker)
DIND_MAJOR=${DIND_MAJOR%%.*}

# --- 4b. Docker 29, Flatcar alpha's: a target, not a pulling dind ------------
# Debian has no Docker 29 yet: the shared directory holds dockerd 29.1.3
# built from moby's source (its README says how). fp-dind:29 is the last
# suite's image (unstable: its containerd 2.1 and runc serve it) with that
# dockerd in place of Debian's; rebuilt when that image changes.
DOCKER29=$(shared_file docker29/dockerd-29.1.3.zst) ||
    die "docker29/dockerd-29.1.3.zst not found (FP_SHARED_DIR, ../shared beside the repository): the truth checks start Docker 29 on written stores"
DOCKER29_SHA256=805c259c559f4112c6b3352517d30ab6e67b17dc8e9a36fb2451bf743a8c72c2
base_id=$(docker image inspect -f '{{.Id}}' "$DIND_IMAGE")
image=$(docker images --filter "label=org.flatcar-preload.rootfs=docker29" \
    --filter "label=org.flatcar-preload.base=$base_id" \
    --format '{{.Repository}}:{{.Tag}}' | grep -m 1 "^$DIND_REPO:" || true)
if [[ -n $image ]]; then
    say "image: ok ($image: $DIND_IMAGE with dockerd $(label "$image" docker))"
else
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    zstd -dqf "$DOCKER29" -o "$ctx/dockerd" && chmod 755 "$ctx/dockerd"
    echo "$DOCKER29_SHA256  $ctx/dockerd" | sha256sum -c --status ||
        die "$DOCKER29: not the dockerd 29.1.3 its README names"
    ver=$("$ctx/dockerd" --version | sed -n 's/^Docker version \([0-9][0-9.]*\).*/\1/p')
    image=$DIND_REPO:${ver%%.*}
    printf 'FROM %s\nCOPY dockerd /usr/sbin/dockerd\nLABEL org.flatcar-preload.rootfs=docker29 org.flatcar-preload.base=%s org.flatcar-preload.docker=%s\n' \
        "$DIND_IMAGE" "$base_id" "$ver" >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null 2>&1 || die "docker build of $image failed"
    rm -rf "$ctx"
    trap - EXIT
    say "image: built $image ($DIND_IMAGE with dockerd $ver from $DOCKER29)"
fi
targets+=("$image")
# Oldest Docker first, as a machine upgraded through the majors sees it.
mapfile -t targets < <(printf '%s\n' "${targets[@]}" | sort -t: -k2,2V -u)

# --- 5. registry container ----------------------------------------------------
# Any image of the current recipe serves (the registry does not depend on the
# Docker version): a registry that runs is not recreated when the pulling
# image is rebuilt, so its data and port stay put.
reg_state=$(docker inspect -f '{{.State.Running}} {{.Image}}' "$REG_CTR" 2>/dev/null || true)
if [[ -n $reg_state && $(label "${reg_state#* }" recipe) != "$DIND_RECIPE" ]]; then
    docker rm -f "$REG_CTR" >/dev/null # built from an older recipe
    reg_state=
fi
if [[ -z $reg_state ]]; then
    # --restart unless-stopped: comes back with our dockerd. Data on a named
    # volume, kept across re-creations. Port published on host loopback only.
    docker run -d --name "$REG_CTR" --restart unless-stopped \
        -p "$REGISTRY:5000" -v "$REG_VOL:/var/lib/docker-registry" \
        "$DIND_IMAGE" docker-registry serve /etc/fp-registry.yml >/dev/null ||
        die "cannot start $REG_CTR (is $REGISTRY taken? $(ss -Hltnp "sport = :5000" 2>/dev/null | head -n 1))"
    changed=1
    what=started
elif [[ ${reg_state%% *} != true ]]; then
    docker start "$REG_CTR" >/dev/null
    what=restarted
else
    what=ok
fi
for ((i = 0; i < 80; i++)); do
    curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && break
    sleep 0.25
done
curl -fsS -o /dev/null "http://$REGISTRY/v2/" ||
    { docker logs --tail 20 "$REG_CTR" >&2; die "registry does not answer on $REGISTRY"; }
say "registry: $what ($REG_CTR, http://$REGISTRY, volume $REG_VOL)"

# --- 6. smoke test: host push -> registry -> dind pull ------------------------
# Only when something was (re)built, or FP_VERIFY=1: it costs a few seconds.
if ((changed)) || [[ ${FP_VERIFY:-0} == 1 ]]; then
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"; docker rm -f -v "$PROBE_CTR" >/dev/null 2>&1 || true; docker volume rm "$PROBE_VOL" >/dev/null 2>&1 || true' EXIT
    cp /bin/busybox "$ctx/busybox"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox", "true"]\n' >"$ctx/Dockerfile"
    # Legacy builder: no buildx plugin here, and dockerd 20.10's BuildKit
    # would need it with a recent CLI.
    DOCKER_BUILDKIT=0 docker build -q -t "$TEST_REF" "$ctx" >/dev/null 2>&1 ||
        die "docker build of $TEST_REF failed"
    docker push -q "$TEST_REF" >/dev/null || die "docker push $TEST_REF failed"
    docker rm -f -v "$PROBE_CTR" >/dev/null 2>&1 || true
    docker run -d --name "$PROBE_CTR" --network "container:$REG_CTR" \
        --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
        -v "$PROBE_VOL:/var/lib/docker" "$DIND_IMAGE" \
        dockerd --storage-driver=overlay2 --host=unix:///var/run/docker.sock \
        --iptables=false --ip6tables=false --bridge=none >/dev/null
    for ((i = 0; i < 120; i++)); do
        docker exec "$PROBE_CTR" docker info >/dev/null 2>&1 && break
        sleep 0.25
    done
    info=$(docker exec "$PROBE_CTR" docker info -f '{{.ServerVersion}} {{.Driver}}' 2>&1) ||
        { docker logs --tail 20 "$PROBE_CTR" >&2; die "dind in $DIND_IMAGE did not start"; }
    [[ $info == "$DIND_MAJOR".*" overlay2" ]] || die "dind reports '$info', want $DIND_MAJOR.x overlay2"
    docker exec "$PROBE_CTR" docker pull -q "$TEST_REF" >/dev/null ||
        die "dind could not pull $TEST_REF through $REG_CTR's loopback"
    docker rm -f -v "$PROBE_CTR" >/dev/null
    docker volume rm "$PROBE_VOL" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
    say "verify: host pushed $TEST_REF, dind ($info) pulled it over loopback"
fi

# --- 6b. crictl, the CRI client, for the containerd truth checks ----------------
# Debian has no cri-tools: the shared directory beside the repository holds
# crictl 1.34.0 built from its source (its README says how), checked here by
# its sha256 and decompressed into the cache once.
CRICTL=$FP_CACHE/crictl-1.34.0
CRICTL_SHA256=ce2ad88fcc9e83cffc552ea589764ce5d895067747bdaa35f1340fb90961d6f1
if ! echo "$CRICTL_SHA256  $CRICTL" | sha256sum -c --status 2>/dev/null; then
    zst=$(shared_file crictl/crictl-1.34.0.zst) ||
        die "crictl-1.34.0.zst not found (FP_SHARED_DIR, ../shared beside the repository): the containerd truth checks need it"
    mkdir -p "$FP_CACHE"
    zstd -dqf "$zst" -o "$CRICTL.tmp" && chmod 755 "$CRICTL.tmp"
    echo "$CRICTL_SHA256  $CRICTL.tmp" | sha256sum -c --status || die "$zst: not the crictl 1.34.0 its README names"
    mv "$CRICTL.tmp" "$CRICTL"
    say "crictl: $CRICTL from $zst"
fi

# --- 7. variables ---------------------------------------------------------------
# Shell-quoted (FP_TARGET_DOCKERS holds spaces): fit for eval and for source.
vars=()
kv() { vars+=("$1=$(printf %q "$2")"); }
kv DOCKER_HOST "$DOCKER_HOST"
kv FP_DIND_IMAGE "$DIND_IMAGE"
kv FP_TARGET_DOCKERS "${targets[*]}"
kv FP_REGISTRY_CONTAINER "$REG_CTR"
kv FP_REGISTRY "$REGISTRY"
kv FP_TEST_USER "$TEST_USER"
kv FP_CRICTL "$CRICTL"
kv FP_DOCKER_TLS_HOST "tcp://127.0.0.1:$TLS_PORT"
kv FP_DOCKER_CERT_PATH "$TLS_DIR/client"
mkdir -p "$FP_CACHE"
{
    echo "# written by ci/docker-env.sh; source it"
    printf 'export %s\n' "${vars[@]}"
} >"$FP_CACHE/docker-env.sh.tmp"
mv "$FP_CACHE/docker-env.sh.tmp" "$FP_CACHE/docker-env.sh"
chmod 644 "$FP_CACHE/docker-env.sh"
say "env: written $FP_CACHE/docker-env.sh"
printf '%s\n' "${vars[@]}"

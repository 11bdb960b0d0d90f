#!/bin/sh
# Install and start everything gc-daemon's tests and demo need, idempotently:
#   Debian packages (docker.io, docker-registry, busybox-static),
#   a loopback-only Docker engine, the test registry image, and the venv.
# Safe to run again: each step checks before it acts.
set -eu
cd "$(dirname "$0")/.."

need_pkgs=""
command -v dockerd >/dev/null 2>&1 || need_pkgs="$need_pkgs docker.io"
[ -x /usr/bin/docker-registry ] || need_pkgs="$need_pkgs docker-registry"
[ -x /bin/busybox ] || need_pkgs="$need_pkgs busybox-static"
command -v promtool >/dev/null 2>&1 || need_pkgs="$need_pkgs prometheus"
command -v docker-compose >/dev/null 2>&1 || need_pkgs="$need_pkgs docker-compose"
if [ -n "$need_pkgs" ]; then
    echo "setup: installing Debian packages:$need_pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_pkgs >/dev/null
fi

# The Debian engine's client talks API 1.41; use it rather than any newer client on PATH.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker

if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "setup: starting dockerd (no bridge, no iptables: loopback and host networking only)"
    mkdir -p /var/lib/docker
    nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        -H unix:///var/run/docker.sock --data-root /var/lib/docker \
        >/var/log/dockerd.log 2>&1 &
    i=0
    until "$DOCKER" info >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "setup: dockerd did not answer within 30 s; see /var/log/dockerd.log" >&2
            tail -20 /var/log/dockerd.log >&2 || true
            exit 1
        fi
        sleep 0.5
    done
fi

sh scripts/build-registry-image.sh "$DOCKER"

if [ ! -x .venv/bin/gc-daemon ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup: creating the venv in .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    touch .venv/.installed
fi

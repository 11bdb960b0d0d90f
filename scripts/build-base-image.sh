#!/bin/sh
# Build local/python:3.11-bookworm, a minimal Debian 12 root filesystem with python3 and venv, for
# machines that cannot pull python:* from Docker Hub (docs: /work/shared/docs/test-environment.md).
# Skipped when the image exists. Needs root (debootstrap) and the Debian mirror apt already uses.
#   usage: scripts/build-base-image.sh [DOCKER]     env: LOCAL_BASE_IMAGE (default local/python:3.11-bookworm)
set -eu
DOCKER=${1:-${DOCKER:-/usr/bin/docker}}
[ -x "$DOCKER" ] || DOCKER=docker
IMAGE=${LOCAL_BASE_IMAGE:-local/python:3.11-bookworm}
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base-image: installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /tmp/gc-daemon-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "build-base-image: debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
    tail -30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# Keep the image small: no apt lists or caches, no docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" -c . | "$DOCKER" import \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
    -m "debootstrap minbase bookworm + python3, python3-venv, ca-certificates" - "$IMAGE" >/dev/null
echo "build-base-image: built $IMAGE"

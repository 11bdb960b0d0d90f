#!/bin/sh
# Build gc-daemon-test/registry:2.8, shaped like the official registry:2, from Debian's
# distribution binary (no image can be pulled from Docker Hub here). Skipped when it exists.
set -eu
DOCKER=${1:-docker}
IMAGE=${REGISTRY_IMAGE:-gc-daemon-test/registry:2.8}
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
echo "setup: building $IMAGE from /usr/bin/docker-registry"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/lib/x86_64-linux-gnu" "$ctx/rootfs/lib64" \
         "$ctx/rootfs/etc/docker/registry" "$ctx/rootfs/var/lib/registry" "$ctx/rootfs/tmp"
cp /usr/bin/docker-registry "$ctx/rootfs/bin/registry"
cp /bin/busybox "$ctx/rootfs/bin/busybox"
for applet in sh ls find du stat cat sleep; do ln -s busybox "$ctx/rootfs/bin/$applet"; done
cp -L /lib/x86_64-linux-gnu/libc.so.6 "$ctx/rootfs/lib/x86_64-linux-gnu/"
cp -L /lib64/ld-linux-x86-64.so.2 "$ctx/rootfs/lib64/"
cp "$here/tests/registry-image/config.yml" "$ctx/rootfs/etc/docker/registry/config.yml"
cp "$here/tests/registry-image/entrypoint.sh" "$ctx/rootfs/entrypoint.sh"
chmod +x "$ctx/rootfs/entrypoint.sh"
cp "$here/tests/registry-image/Dockerfile" "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$IMAGE" "$ctx" >/dev/null
echo "setup: built $IMAGE"

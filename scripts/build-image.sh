#!/bin/sh
# Build the gc-daemon image without network inside the build:
#   1. wheels of the project and all its runtime dependencies, built on the host with the venv's pip
#      into dist/wheels (the host reaches PyPI; a build container may not verify its TLS);
#   2. docker build --network none, installing from those wheels only (--no-index).
# env: BASE_IMAGE (default local/python:3.11-bookworm, see scripts/build-base-image.sh),
#      IMAGE (default gc-daemon:dev), DOCKER (default /usr/bin/docker), PIP (default .venv/bin/pip).
# The base image's Python minor version must match the Python that builds the wheels.
set -eu
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
[ -x "$DOCKER" ] || DOCKER=docker
PIP=${PIP:-.venv/bin/pip}
BASE_IMAGE=${BASE_IMAGE:-local/python:3.11-bookworm}
IMAGE=${IMAGE:-gc-daemon:dev}

# One build at a time in this checkout (two test runs may both find the image stale).
mkdir -p dist
if command -v flock >/dev/null 2>&1; then
    exec 9>dist/.build-image.lock
    flock 9
fi

echo "build-image: wheels into dist/wheels"
rm -rf dist/wheels
had_build=0
[ -e build ] && had_build=1
"$PIP" wheel -q --disable-pip-version-check . -w dist/wheels
# setuptools leaves build/ behind; remove it unless it was there before.
[ "$had_build" = 1 ] || rm -rf build

echo "build-image: docker build $IMAGE from $BASE_IMAGE (no network)"
DOCKER_BUILDKIT=0 "$DOCKER" build -q --force-rm --network none \
    --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" . >/dev/null
echo "build-image: built $IMAGE"

# gc-daemon image. Build it with scripts/build-image.sh (`make image`): the project and every runtime
# dependency are built as wheels on the host into dist/wheels, and installed here with --no-index, so
# the build needs no network (it runs with `docker build --network none`).
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module, and the same Python minor version
# as the host that built the wheels (pydantic-core is a compiled wheel). Where python:* cannot be
# pulled, scripts/build-base-image.sh makes local/python:3.11-bookworm with debootstrap.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY dist/wheels/ /wheels/
RUN python3 -m venv /opt/gc-daemon \
 && /opt/gc-daemon/bin/pip install --no-index --find-links /wheels gc-daemon \
 && /opt/gc-daemon/bin/gc-daemon --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="gc-daemon" \
      org.opencontainers.image.description="Retention rules, safe tag removal and garbage-collect for a Docker Registry V2, with Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0"

# Non-root by default. To reach the Docker engine socket the user must be in the socket's group:
# compose `group_add: ["<gid of /var/run/docker.sock>"]` (docker run --group-add <gid>), or run as root
# (`user: root`). Better still, point DOCKER_HOST at a socket proxy that allows only the calls gc-daemon
# makes (README: "Deploying as a sidecar").
RUN groupadd --system --gid 10001 gc-daemon \
 && useradd --system --uid 10001 --gid gc-daemon --home-dir /var/lib/gc-daemon --no-create-home \
            --shell /usr/sbin/nologin gc-daemon \
 && mkdir -p /etc/gc-daemon /var/lib/gc-daemon /run/gc-daemon \
 && chown gc-daemon:gc-daemon /var/lib/gc-daemon /run/gc-daemon

COPY --from=build /opt/gc-daemon /opt/gc-daemon
COPY deploy/image/healthcheck.py /opt/gc-daemon/healthcheck.py
COPY retention.example.toml /etc/gc-daemon/retention.example.toml

ENV PATH=/opt/gc-daemon/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GC_DAEMON_CONFIG=/etc/gc-daemon/retention.toml

# Mount your config at /etc/gc-daemon/retention.toml (retention.example.toml beside it documents
# every key). State kept across runs lives in the volume (state.dir defaults to /var/lib/gc-daemon).
VOLUME ["/var/lib/gc-daemon"]
EXPOSE 9100
USER gc-daemon
WORKDIR /var/lib/gc-daemon

# Probes the daemon's HTTP endpoint on the configured metrics address/port (127.0.0.1 when it binds
# 0.0.0.0): /healthz (see deploy/image/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/gc-daemon/bin/python", "/opt/gc-daemon/healthcheck.py"]

CMD ["gc-daemon", "run"]

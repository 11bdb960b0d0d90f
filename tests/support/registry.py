"""Real distribution registries in Docker containers, for integration tests.

Every container uses host networking and binds 127.0.0.1 on a free port: tests never reach any
other address. Storage is a host directory bind-mounted at /var/lib/registry, so tests can inspect
(and damage) exactly what the registry wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

REGISTRY_IMAGE = os.environ.get("GC_DAEMON_TEST_REGISTRY_IMAGE", "gc-daemon-test/registry:2.8")
REGISTRY_CONFIG = "/etc/docker/registry/config.yml"
STORAGE_MOUNT = "/var/lib/registry"
LABELS = {"gc-daemon-test": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (it may be taken before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RegistryContainer:
    name: str
    container_id: str
    port: int
    url: str  # "http://127.0.0.1:PORT"
    storage_dir: Path
    client: docker.DockerClient = field(repr=False, compare=False)
    verify: ssl.SSLContext | bool = field(default=True, repr=False, compare=False)

    def container(self) -> Any:
        """The docker SDK Container (fresh attrs)."""
        return self.client.containers.get(self.container_id)

    def stop(self) -> None:
        """Remove the container (force); a container already gone is fine."""
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(self.container_id, force=True)

    def restart(self, timeout: float = 20) -> None:
        """Restart the container (drops the registry's in-memory blob descriptor cache)."""
        self.client.api.restart(self.container_id, timeout=10)
        self.wait_ready(timeout)

    def logs(self) -> str:
        raw: bytes = self.client.api.logs(self.container_id, stdout=True, stderr=True)
        return raw.decode(errors="replace")

    def started_at(self) -> str:
        """Container State.StartedAt, to prove a registry was (or was not) restarted."""
        started: str = self.client.api.inspect_container(self.container_id)["State"]["StartedAt"]
        return started

    def blob_store(self) -> dict[str, int]:
        """Every blob data file in storage ("sha256:<hex>" -> size). Manifests are blobs too."""
        root = self.storage_dir / "docker/registry/v2/blobs/sha256"
        if not root.is_dir():
            return {}
        return {f"sha256:{data.parent.name}": data.stat().st_size for data in root.glob("*/*/data")}

    def snapshot(self) -> dict[str, str]:
        """Relative path -> sha256 of content for every file, "dir" for every directory."""
        result: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.storage_dir):
            base = Path(dirpath)
            for d in dirnames:
                result[(base / d).relative_to(self.storage_dir).as_posix()] = "dir"
            for f in filenames:
                path = base / f
                result[path.relative_to(self.storage_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        return result

    def wait_ready(self, timeout: float = 20) -> None:
        """Wait until GET /v2/ answers 200; raise RuntimeError with the container logs otherwise."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2, verify=self.verify) as http:
            while True:
                try:
                    resp = http.get(f"{self.url}/v2/")
                    if resp.status_code in (200, 401):  # 401: serving, behind authentication
                        return
                    last = f"GET /v2/ -> {resp.status_code} {resp.text[:200]}"
                except httpx.TransportError as exc:
                    last = f"GET /v2/ -> {exc!r}"
                state = self.client.api.inspect_container(self.container_id)["State"]
                if not state["Running"]:
                    raise RuntimeError(
                        f"registry container {self.name} exited ({state['ExitCode']}) before it was "
                        f"ready at {self.url}; logs:\n{self.logs()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"registry {self.name} not ready at {self.url} after {timeout}s ({last}); logs:\n{self.logs()}"
                    )
                time.sleep(0.05)


def start_registry(
    docker_client: docker.DockerClient,
    storage_dir: Path,
    *,
    delete_enabled: bool = True,
    extra_env: dict[str, str] | None = None,
    name: str | None = None,
    port: int | None = None,
    tls_ca: Path | None = None,
    config_in_storage: str | None = None,
    attempts: int = 3,
) -> RegistryContainer:
    """Run the registry image on 127.0.0.1:<free port> with `storage_dir` as its storage.

    Several containers may share one storage_dir (e.g. a fresh registry without caches over the
    storage of another). A port taken between picking and binding is retried on another port.
    """
    storage_dir.mkdir(parents=True, exist_ok=True)
    storage_dir = storage_dir.resolve()
    last_error: RuntimeError | None = None
    for _ in range(attempts):
        chosen = port or free_port()
        env = {
            "REGISTRY_HTTP_ADDR": f"127.0.0.1:{chosen}",
            "REGISTRY_STORAGE_DELETE_ENABLED": "true" if delete_enabled else "false",
            # As README "Running it beside a registry" asks: a stop lets requests in flight finish (2.8 without
            # it dies mid-write on SIGTERM, and a cut push can leave an empty link that fails every collect).
            "REGISTRY_HTTP_DRAINTIMEOUT": "10s",
            **(extra_env or {}),
        }
        cname = name or f"gcd-test-{secrets.token_hex(6)}"
        container = docker_client.containers.run(
            REGISTRY_IMAGE,
            detach=True,
            name=cname,
            network_mode="host",
            environment=env,
            volumes={str(storage_dir): {"bind": STORAGE_MOUNT, "mode": "rw"}},
            labels=dict(LABELS),
            command=[f"{STORAGE_MOUNT}/{config_in_storage}"] if config_in_storage else None,
        )
        reg = RegistryContainer(
            name=cname,
            container_id=str(container.id),
            port=chosen,
            url=f"{'https' if tls_ca else 'http'}://127.0.0.1:{chosen}",
            storage_dir=storage_dir,
            client=docker_client,
            verify=ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True,
        )
        try:
            reg.wait_ready()
            return reg
        except RuntimeError as exc:
            logs = reg.logs()
            reg.stop()
            if port is not None or "address already in use" not in logs:
                raise
            last_error = exc
    assert last_error is not None
    raise last_error

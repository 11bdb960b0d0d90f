"""Shared fixtures: a Docker client, real registry containers, and a Pusher.

Integration tests need the Docker engine and the test registry image (scripts/setup-env.sh). They
are skipped only when GC_DAEMON_SKIP_INTEGRATION=1; a missing engine or image otherwise FAILS them,
so a broken environment can never pass as a green run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.images import Pusher
from tests.support.registry import REGISTRY_IMAGE, RegistryContainer, start_registry

INTEGRATION_DIR = Path(__file__).parent / "integration"
SKIP_ENV = "GC_DAEMON_SKIP_INTEGRATION"
SETUP_HINT = "run scripts/setup-env.sh (or set GC_DAEMON_SKIP_INTEGRATION=1 to skip integration tests)"


def _skip_integration() -> bool:
    return os.environ.get(SKIP_ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `integration`; skip them all when asked to."""
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1: integration tests skipped on request")
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
        if _skip_integration() and item.get_closest_marker("integration") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    if _skip_integration():
        pytest.skip(f"{SKIP_ENV}=1: integration tests skipped on request")
    client: docker.DockerClient | None = None
    try:
        client = docker.DockerClient.from_env(version="auto")
        client.ping()
    except Exception as exc:
        if client is not None:
            client.close()
        pytest.fail(f"the Docker engine does not answer ({exc}); {SETUP_HINT}", pytrace=False)
    try:
        try:
            client.images.get(REGISTRY_IMAGE)
        except docker.errors.ImageNotFound:
            pytest.fail(f"the registry image {REGISTRY_IMAGE} is missing; {SETUP_HINT}", pytrace=False)
        yield client
    finally:
        client.close()


@pytest.fixture
def make_registry(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Callable[..., RegistryContainer]]:
    """Factory: make_registry(storage_dir=..., delete_enabled=..., extra_env=..., name=...).

    Without storage_dir each registry gets its own directory under tmp_path. All are removed at
    teardown.
    """
    started: list[RegistryContainer] = []

    def make(storage_dir: Path | None = None, **kwargs: Any) -> RegistryContainer:
        if storage_dir is None:
            storage_dir = tmp_path / f"storage-{len(started) + 1}"
        reg = start_registry(docker_client, storage_dir, **kwargs)
        started.append(reg)
        return reg

    try:
        yield make
    finally:
        for reg in started:
            reg.stop()


@pytest.fixture
def registry(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[RegistryContainer]:
    """One registry with deletes enabled, storage in tmp_path/"storage"."""
    reg = start_registry(docker_client, tmp_path / "storage", delete_enabled=True)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def pusher(registry: RegistryContainer) -> Iterator[Pusher]:
    with Pusher(registry.url) as p:
        yield p

"""`gc-daemon check`: a checklist of a deployment, one line per item, before the first Sunday."""

from __future__ import annotations

import contextlib
import errno
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gc_daemon.collect.executors import DockerExecutor, Executor
from gc_daemon.config import Settings
from gc_daemon.cycle import build_executor, build_registry_client
from gc_daemon.errors import GcDaemonError, RegistryAuthError, RegistryUnreachable
from gc_daemon.registry.client import RegistryClient


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool | None  # None: skipped (a previous item failed, or not applicable)
    detail: str


def run_checks(settings: Settings) -> list[Item]:
    items = [Item("config valid", True, "loaded and validated")]
    registry = build_registry_client(settings)
    executor: Executor | None = None
    try:
        items.extend(_registry_items(registry))
        try:
            executor = build_executor(settings)
        except GcDaemonError as exc:
            items.append(Item("registry container found", False, str(exc)))
        else:
            items.extend(_collect_items(settings, executor))
    finally:
        registry.close()
        if executor is not None:
            executor.close()
    items.append(_state_dir(settings))
    items.append(_metrics_port(settings))
    return items


def _attempt(name: str, action: Callable[[], str]) -> Item:
    try:
        return Item(name, True, action())
    except GcDaemonError as exc:
        return Item(name, False, str(exc))


def _registry_items(registry: RegistryClient) -> list[Item]:
    try:
        registry.probe(retry=False)
    except RegistryUnreachable as exc:
        return [Item("registry reachable", False, str(exc)), Item("credentials accepted", None, "skipped"),
                Item("deletes enabled", None, "skipped")]  # fmt: skip
    except RegistryAuthError as exc:
        return [Item("registry reachable", True, registry.base_url), Item("credentials accepted", False, str(exc)),
                Item("deletes enabled", None, "skipped")]  # fmt: skip
    except GcDaemonError as exc:
        return [Item("registry reachable", False, str(exc))]
    items = [Item("registry reachable", True, f"{registry.base_url}/v2/ answers"),
             Item("credentials accepted", True, "/v2/ accepted them")]  # fmt: skip

    def deletes() -> str:
        repositories = registry.catalog()
        if not repositories:
            raise GcDaemonError("no repository to probe yet: push one image, then check again")
        registry.check_deletes_enabled(repositories[0])
        return f"probed in {repositories[0]} with a digest no manifest has (nothing deleted)"

    items.append(_attempt("deletes enabled", deletes))
    return items


def _collect_items(settings: Settings, executor: Executor | None) -> list[Item]:
    if executor is None:
        return [Item("garbage-collect", None, "[gc] enabled = false")]
    where = f"container {settings.gc.container!r}" if settings.gc.executor == "docker" else "local executor"
    items = [_attempt("registry container found" if settings.gc.executor == "docker" else "registry binary found",
                      lambda: f"{where}: " + (executor.version() or "answers"))]  # fmt: skip
    if items[0].ok:

        def answers_help() -> str:
            result = executor.garbage_collect(["--help"])
            if result.exit_code != 0 or "garbage-collect" not in (result.stdout + result.stderr):
                raise GcDaemonError(f"`registry garbage-collect --help` exited {result.exit_code}")
            return "`registry garbage-collect --help` answers"

        items.append(_attempt("garbage-collect answers --help", answers_help))
        version = executor.version()
        items.append(Item("registry version", True, version or "unknown"))
        if isinstance(executor, DockerExecutor) and settings.gc.mode == "offline":
            items.append(_attempt("registry drains before a stop", lambda: _drain(executor)))
    return items


def _drain(executor: DockerExecutor) -> str:
    """An offline collect stops the registry: without a drain timeout 2.8 dies mid-write on SIGTERM."""
    drain = executor.environment().get("REGISTRY_HTTP_DRAINTIMEOUT")
    if drain:
        return f"REGISTRY_HTTP_DRAINTIMEOUT={drain}: a stop finishes the requests in flight"
    raise GcDaemonError(
        "REGISTRY_HTTP_DRAINTIMEOUT is not in the registry container's environment: an offline collect's stop can "
        "cut a push mid-write and leave an empty link that fails every later collect; set it to e.g. 25s (if its "
        "config.yml sets http.draintimeout instead, this line can be ignored)"
    )


def _state_dir(settings: Settings) -> Item:
    directory = settings.state.dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".check-"):
            pass
    except OSError as exc:
        return Item("state dir writable", False, f"{directory}: {exc.strerror or exc}")
    return Item("state dir writable", True, str(directory))


def _metrics_port(settings: Settings) -> Item:
    metrics = settings.metrics
    if not metrics.port:
        return Item("metrics port free", None, "[metrics] port = 0: endpoint off")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((metrics.address, metrics.port))
            return Item("metrics port free", True, f"{metrics.address}:{metrics.port}")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return Item("metrics port free", False, f"{metrics.address}:{metrics.port}: {exc.strerror}")
    host = "127.0.0.1" if metrics.address in ("0.0.0.0", "") else metrics.address
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"http://{host}:{metrics.port}/healthz", timeout=2).text == "ok\n":
            return Item("metrics port free", True, f"{metrics.address}:{metrics.port} is this gc-daemon's, running")
    return Item("metrics port free", False, f"{metrics.address}:{metrics.port} is taken by another program")

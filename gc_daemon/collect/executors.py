"""Where garbage-collect runs: in the registry container (docker) or as a local process.

Each executor answers three things: the registry version, a garbage-collect run with its
real exit code and full output, and a restart so the serving registry forgets the blobs
the sweep removed (its in-memory blob-descriptor cache would otherwise still claim them).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gc_daemon.errors import CollectError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class Executor(Protocol):
    name: str

    def version(self) -> str: ...
    def garbage_collect(self, args: Sequence[str], on_line: Callable[[str], None] | None = None) -> ExecResult: ...
    def restart(self) -> None: ...
    def close(self) -> None: ...


class OfflineExecutor(Executor, Protocol):
    """An executor that can stop the registry and collect in a one-off container of its image."""

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def is_running(self) -> bool: ...
    def collect_offline(self, args: Sequence[str]) -> ExecResult: ...
    def remove_leftovers(self) -> int: ...


ONEOFF_LABEL = "io.gc-daemon.collect-for"


class _Lines:
    """Reassembles streamed chunks into lines for progress output."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self._on_line = on_line
        self._buffer = ""
        self.text: list[str] = []

    def feed(self, chunk: bytes) -> None:
        piece = chunk.decode("utf-8", "replace")
        self.text.append(piece)
        if self._on_line is None:
            return
        self._buffer += piece
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._on_line(line)

    def value(self) -> str:
        if self._on_line is not None and self._buffer:
            self._on_line(self._buffer)
            self._buffer = ""
        return "".join(self.text)


class DockerExecutor:
    """Runs `registry ...` inside the registry container through the Docker Engine API."""

    def __init__(self, client: Any, container: str, binary: str = "registry") -> None:
        self._client = client
        self._name = container
        self.name = container
        self._binary = binary

    def _container(self) -> Any:
        import docker.errors

        try:
            return self._client.containers.get(self._name)
        except docker.errors.NotFound as exc:
            raise CollectError(f"registry container {self._name!r} not found (gc.container)") from exc
        except docker.errors.DockerException as exc:
            raise CollectError(f"Docker engine error looking up {self._name!r}: {exc}") from exc

    def _exec(self, argv: Sequence[str], on_line: Callable[[str], None] | None = None) -> ExecResult:
        import docker.errors

        container = self._container()
        if container.status != "running":
            raise CollectError(f"registry container {self._name!r} is {container.status}, not running")
        api = self._client.api
        out, err = _Lines(on_line), _Lines(on_line)
        try:
            exec_id = api.exec_create(container.id, list(argv))["Id"]
            # Not streamed: docker-py leaves the hijacked socket of a streamed exec open (ResourceWarning).
            stdout, stderr = api.exec_start(exec_id, stream=False, demux=True)
            out.feed(stdout or b"")
            err.feed(stderr or b"")
            info = api.exec_inspect(exec_id)
        except docker.errors.DockerException as exc:
            raise CollectError(f"exec {' '.join(argv)!r} in {self._name!r} failed: {exc}") from exc
        code = info.get("ExitCode")
        return ExecResult(exit_code=-1 if code is None else int(code), stdout=out.value(), stderr=err.value())

    def version(self) -> str:
        result = self._exec([self._binary, "--version"])
        return (result.stdout or result.stderr).strip()

    def garbage_collect(self, args: Sequence[str], on_line: Callable[[str], None] | None = None) -> ExecResult:
        return self._exec([self._binary, "garbage-collect", *args], on_line)

    def environment(self) -> dict[str, str]:
        """The registry container's environment (its REGISTRY_* settings among it)."""
        pairs = (self._container().attrs.get("Config") or {}).get("Env") or []
        return dict(str(pair).partition("=")[::2] for pair in pairs)

    def restart(self) -> None:
        import docker.errors

        container = self._container()
        try:
            container.restart(timeout=30)
        except docker.errors.DockerException as exc:
            raise CollectError(f"restarting registry container {self._name!r} failed: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def is_running(self) -> bool:
        return bool(self._container().status == "running")

    def stop(self) -> None:
        import docker.errors

        try:
            self._container().stop(timeout=30)
        except docker.errors.DockerException as exc:
            raise CollectError(f"stopping registry container {self._name!r} failed: {exc}") from exc

    def start(self) -> None:
        import docker.errors

        container = self._container()
        if container.status == "running":
            return
        try:
            container.start()
        except docker.errors.DockerException as exc:
            raise CollectError(f"starting registry container {self._name!r} failed: {exc}") from exc

    def collect_offline(self, args: Sequence[str]) -> ExecResult:
        """`registry garbage-collect` in a one-off container of the registry's own image, with its volumes
        (--volumes-from) and its REGISTRY_* environment (not copied by --volumes-from), then removed."""
        import docker.errors

        registry = self._container()
        config = registry.attrs.get("Config") or {}
        env = [e for e in config.get("Env") or [] if e.startswith("REGISTRY_")]
        try:
            oneoff = self._client.containers.run(
                registry.attrs["Image"],
                entrypoint=[self._binary],
                command=["garbage-collect", *args],
                environment=env,
                volumes_from=[registry.id],
                user=config.get("User") or None,
                network_mode="none",
                labels={ONEOFF_LABEL: self._name},
                detach=True,
            )
        except docker.errors.DockerException as exc:
            raise CollectError(f"cannot start the one-off garbage-collect container: {exc}") from exc
        try:
            status = oneoff.wait()
            stdout = oneoff.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = oneoff.logs(stdout=False, stderr=True).decode(errors="replace")
            return ExecResult(int(status.get("StatusCode", -1)), stdout, stderr)
        except docker.errors.DockerException as exc:
            raise CollectError(f"the one-off garbage-collect container failed: {exc}") from exc
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                oneoff.remove(force=True)

    def remove_leftovers(self) -> int:
        """Remove one-off collect containers a killed gc-daemon left behind."""
        import docker.errors

        removed = 0
        for leftover in self._client.containers.list(all=True, filters={"label": f"{ONEOFF_LABEL}={self._name}"}):
            with contextlib.suppress(docker.errors.DockerException):
                leftover.remove(force=True)
                removed += 1
        return removed


class LocalExecutor:
    """Runs the registry binary as a local process (a registry on this host, or tests)."""

    def __init__(self, argv: Sequence[str], restart_command: Sequence[str] | None = None) -> None:
        self.name = " ".join(argv)
        self._argv = list(argv)
        self._restart = list(restart_command) if restart_command else None

    def _run(self, args: Sequence[str]) -> ExecResult:
        try:
            done = subprocess.run([*self._argv, *args], capture_output=True, check=False, timeout=24 * 3600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise CollectError(f"cannot run {' '.join(self._argv)!r}: {exc}") from exc
        return ExecResult(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    def version(self) -> str:
        result = self._run(["--version"])
        return (result.stdout or result.stderr).strip()

    def garbage_collect(self, args: Sequence[str], on_line: Callable[[str], None] | None = None) -> ExecResult:
        result = self._run(["garbage-collect", *args])
        if on_line:
            for line in (result.stdout + result.stderr).splitlines():
                on_line(line)
        return result

    def restart(self) -> None:
        if self._restart is None:
            log.warning("local executor: no restart command; the registry's blob cache may be stale")
            return
        done = subprocess.run(self._restart, capture_output=True, check=False)
        if done.returncode != 0:
            raise CollectError(f"restart command failed ({done.returncode}): {done.stderr.decode(errors='replace')}")

    def close(self) -> None:
        pass

"""Start and stop a real `gc-daemon run` process for tests."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.integration.cli import GC_DAEMON
from tests.support.registry import free_port


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def readyz(self, expect: int, text: str = "", timeout: float = 15) -> httpx.Response:
        """/readyz once it answers `expect` with `text` in its body (the first registry probe runs right
        after start; until it has, /readyz answers 503 "not probed yet")."""
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.get(f"{self.url}/readyz", timeout=5)
            if (response.status_code == expect and text in response.text) or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{self.output()}"
            time.sleep(0.05)


def with_metrics_port(config: Path) -> int:
    """Give the config's [metrics] a free port on 127.0.0.1 (again, if it had one)."""
    port = free_port()
    text = re.sub(
        r"\[metrics\]\n(address = \S+\n)?port = \d+",
        f'[metrics]\naddress = "127.0.0.1"\nport = {port}',
        config.read_text(),
    )
    assert f"port = {port}" in text
    config.write_text(text)
    return port


@contextlib.contextmanager
def running_daemon(config: Path, tmp_path: Path, *, port: int | None = None) -> Iterator[DaemonProc]:
    port = port or with_metrics_port(config)
    log = tmp_path / f"daemon-{time.monotonic_ns()}.log"
    handle = log.open("w")
    proc = subprocess.Popen([GC_DAEMON, "--config", str(config), "run"], stdout=handle, stderr=handle)
    daemon = DaemonProc(proc, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{daemon.output()}"
            with contextlib.suppress(httpx.TransportError):
                if (
                    httpx.get(f"{daemon.url}/healthz", timeout=1).status_code == 200
                    and "control socket" in daemon.output()
                ):
                    break
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.05)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        handle.close()

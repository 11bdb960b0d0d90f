"""The control socket: `run-now` and `status` talk to a running daemon over a unix socket (mode 0600).

Protocol: the client sends one JSON line, the server answers with JSON lines.
  {"cmd": "status"}                    -> {"event": "status", ...}
  {"cmd": "run", "wait": true, "force": false}
      -> {"event": "busy", ...}          a run is in progress and wait is false
      -> {"event": "started"|"attached", "trigger": ...}, then {"event": "log", "line": ...}*,
         then {"event": "report", "report": {...}, "text": "..."}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gc_daemon.cycle import Phases
from gc_daemon.errors import GcDaemonError
from gc_daemon.progress import RunProgress

log = logging.getLogger(__name__)


class NoDaemon(GcDaemonError):
    """Nothing answers on the control socket."""


class RunRequest:
    def __init__(self, force: bool, phases: Phases = Phases()) -> None:  # noqa: B008
        self.force = force
        self.phases = phases
        self.started = threading.Event()
        self.progress: RunProgress | None = None


class Controller:
    """What the socket server needs from the daemon."""

    def __init__(
        self,
        current: Callable[[], RunProgress | None],
        request_run: Callable[[RunRequest], None],
        status: Callable[[], dict[str, Any]],
        stopping: threading.Event,
    ) -> None:
        self.current = current
        self.request_run = request_run
        self.status = status
        self.stopping = stopping


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _send(self, event: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()

    def handle(self) -> None:
        controller = self.server.controller
        try:
            request = json.loads(self.rfile.readline() or b"{}")
        except ValueError:
            self._send({"event": "error", "message": "request is not JSON"})
            return
        try:
            if request.get("cmd") == "status":
                self._send({"event": "status", **controller.status()})
            elif request.get("cmd") == "run":
                phases = Phases(bool(request.get("remove", True)), bool(request.get("collect", True)))
                self._run(controller, bool(request.get("wait", True)), bool(request.get("force", False)), phases)
            else:
                self._send({"event": "error", "message": f"unknown command {request.get('cmd')!r}"})
        except (BrokenPipeError, ConnectionResetError):
            log.info("control: the client went away; the run goes on")

    def _run(self, controller: Controller, wait: bool, force: bool, phases: Phases) -> None:
        progress = controller.current()
        if progress is not None and not progress.done:
            if not wait:
                self._send(
                    {"event": "busy", "trigger": progress.trigger, "started_at": progress.started_at.isoformat()}
                )
                return
            self._send({"event": "attached", "trigger": progress.trigger})
        else:
            run = RunRequest(force, phases)
            controller.request_run(run)
            while not run.started.wait(timeout=1.0):
                if controller.stopping.is_set():
                    self._send({"event": "error", "message": "the daemon is stopping; no run was started"})
                    return
            assert run.progress is not None
            progress = run.progress
            self._send({"event": "started", "trigger": progress.trigger})
        for line in progress.follow(controller.stopping):
            self._send({"event": "log", "line": line})
        if progress.report is None:
            self._send({"event": "error", "message": "the daemon stopped before the run finished"})
            return
        self._send({"event": "report", "report": progress.report, "text": progress.text})


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, controller: Controller) -> None:
        self.controller = controller
        super().__init__(path, _Handler)


class ControlServer:
    def __init__(self, path: Path, controller: Controller) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket() or path.exists():
            with contextlib.suppress(NoDaemon):
                probe_status(path, timeout=1.0)
                raise GcDaemonError(f"another gc-daemon already answers on {path}")
            path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: only the daemon's user may trigger runs
        try:
            self._server = _Server(str(path), controller)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("control socket on %s", self.path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- client -----------------------------------------------------------------------------------


def _connect(path: Path, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (TimeoutError, FileNotFoundError, ConnectionRefusedError, OSError) as exc:
        sock.close()
        raise NoDaemon(f"no gc-daemon answers on {path} ({type(exc).__name__})") from exc
    return sock


def request(path: Path, message: dict[str, Any], timeout: float | None = None) -> Iterator[dict[str, Any]]:
    sock = _connect(path, timeout)
    with sock, sock.makefile("rwb") as stream:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()
        for raw in stream:
            yield json.loads(raw)


def probe_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    for event in request(path, {"cmd": "status"}, timeout):
        return event
    raise NoDaemon(f"the daemon on {path} closed the connection without answering")

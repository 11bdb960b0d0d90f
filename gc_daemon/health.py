"""The daemon's HTTP endpoint: /metrics (Prometheus), /healthz (alive), /readyz (config loaded, last
registry probe ok). One threaded WSGI server, like prometheus_client's own, bound to [metrics] address:port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not events worth a log line."""


def app(registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok, why = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{'ready' if ok else 'not ready'}: {why}\n".encode()]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return route


class HttpServer:
    def __init__(self, address: str, port: int, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]):
        self._server = make_server(address, port, app(registry, ready), ThreadingWSGIServer, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

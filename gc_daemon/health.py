"""The daemon's HTTP endpoint: /metrics (Prometheus), /healthz (alive), /readyz (config loaded, last
registry probe ok), /events (registry notifications, when enabled). One threaded WSGI server, like
prometheus_client's own, bound to [metrics] address:port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from gc_daemon.events import MAX_BODY, BadEvents, EventSink, parse_envelope


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not events worth a log line."""


def _events(environ: dict[str, Any], start_response: Callable[..., Any], sink: EventSink | None) -> Iterable[bytes]:
    def answer(status: str, message: str) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps({"message": message}).encode() + b"\n"]

    if sink is None:
        return answer("404 Not Found", "events are not enabled ([events] enabled = false)")
    if environ.get("REQUEST_METHOD") != "POST":
        return answer("405 Method Not Allowed", "POST registry notification envelopes here")
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if not sink.authorized(headers):
        return answer("401 Unauthorized", "missing or wrong shared secret")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_BODY:
        return answer("400 Bad Request", f"body must be 1..{MAX_BODY} bytes")
    try:
        events = parse_envelope(environ["wsgi.input"].read(length))
    except BadEvents as exc:
        return answer("400 Bad Request", str(exc))
    accepted, dropped = sink.accept(events)
    return answer("200 OK", f"{accepted} events accepted, {dropped} dropped")


def app(
    registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]], events: EventSink | None = None
) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/events":
            return _events(environ, start_response, events)
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
    def __init__(
        self,
        address: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        events: EventSink | None = None,
    ):
        routes = app(registry, ready, events)
        self._server = make_server(address, port, routes, ThreadingWSGIServer, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""Registry notifications: push and pull history the V2 API does not keep.

The registry POSTs envelopes (`application/vnd.docker.distribution.events.v1+json`) to the daemon's
`/events`. A request is authenticated by a shared secret in a header, validated whole, then its events
go into a bounded queue and the answer is immediate: the registry is never blocked on our disk. A writer
thread records them in `events.sqlite` in the state dir:
- push time per (repository, tag, digest) — the first push of that tag at that digest;
- last pull time per (repository, digest).
Events that do not fit the queue are dropped and counted; a request that is unauthenticated (401) or
malformed (400) records nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gc_daemon.model import MANIFEST_MEDIA_TYPES
from gc_daemon.registry.scan import parse_created

log = logging.getLogger(__name__)

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
USER_AGENT = "gc-daemon"  # what RegistryClient sends
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Event:
    action: str  # push | pull
    repository: str
    digest: str
    tag: str | None
    at: datetime


class BadEvents(ValueError):
    """The envelope is not what a registry sends; nothing of it is recorded."""


def parse_envelope(body: bytes) -> list[Event]:
    """Manifest push/pull events of an envelope; blob events are ignored. Raises BadEvents."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadEvents("body is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise BadEvents('body has no "events" list')
    events = []
    for raw in data["events"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("target"), dict):
            raise BadEvents("an event has no target")
        target = raw["target"]
        action, repository, digest = raw.get("action"), target.get("repository"), target.get("digest")
        if not isinstance(action, str) or not isinstance(repository, str) or not isinstance(digest, str):
            raise BadEvents("an event lacks action, target.repository or target.digest")
        at = parse_created(raw.get("timestamp"))
        if at is None:
            raise BadEvents("an event has no valid timestamp")
        if action not in ("push", "pull") or target.get("mediaType") not in MANIFEST_MEDIA_TYPES:
            continue  # blob uploads, deletes, mounts: not history we keep
        request = raw.get("request")
        if isinstance(request, dict) and str(request.get("useragent", "")).startswith(USER_AGENT):
            continue  # our own scans read every manifest: that is no sign anyone uses an image
        tag = target.get("tag") if isinstance(target.get("tag"), str) and target.get("tag") else None
        events.append(Event(action, repository, digest, tag, at))
    return events


class EventStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pushes (repository TEXT, tag TEXT, digest TEXT, pushed_at TEXT,"
            " PRIMARY KEY (repository, tag, digest))"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pulls (repository TEXT, digest TEXT, pulled_at TEXT,"
            " PRIMARY KEY (repository, digest))"
        )
        return conn

    def record(self, events: Iterable[Event]) -> None:
        conn = self._connect()
        try:
            with conn:
                for e in events:
                    stamp = e.at.astimezone(UTC).isoformat()
                    if e.action == "push" and e.tag:
                        row = (e.repository, e.tag, e.digest, stamp)
                        conn.execute("INSERT OR IGNORE INTO pushes VALUES (?, ?, ?, ?)", row)
                    elif e.action == "pull":
                        conn.execute(
                            "INSERT INTO pulls VALUES (?, ?, ?) ON CONFLICT(repository, digest) DO UPDATE SET "
                            "pulled_at = max(pulled_at, excluded.pulled_at)",
                            (e.repository, e.digest, stamp),
                        )
        finally:
            conn.close()

    def pushes(self) -> dict[tuple[str, str, str], datetime]:
        if not self.path.exists():
            return {}
        conn = self._connect()
        try:
            rows = conn.execute("SELECT repository, tag, digest, pushed_at FROM pushes").fetchall()
        finally:
            conn.close()
        return {(r, t, d): datetime.fromisoformat(at) for r, t, d, at in rows}

    def pulls(self) -> dict[tuple[str, str], datetime]:
        if not self.path.exists():
            return {}
        conn = self._connect()
        try:
            rows = conn.execute("SELECT repository, digest, pulled_at FROM pulls").fetchall()
        finally:
            conn.close()
        return {(r, d): datetime.fromisoformat(at) for r, d, at in rows}


class EventSink:
    """Accepts envelopes from the HTTP handler; a thread writes them. Never blocks the registry."""

    def __init__(self, store: EventStore, secret: str, header: str, capacity: int,
                 on_count: Callable[[str, int], None] | None = None) -> None:  # fmt: skip
        self._store = store
        self._secret = secret
        self._header = header
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=capacity)
        self._on_count = on_count or (lambda _kind, _n: None)
        self._thread = threading.Thread(target=self._write, name="events", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get(self._header.lower(), "")
        for candidate in (self._secret, f"Bearer {self._secret}"):
            if hmac.compare_digest(given.encode(), candidate.encode()):
                return True
        return False

    def accept(self, events: list[Event]) -> tuple[int, int]:
        """Queue the events; returns (accepted, dropped)."""
        accepted = dropped = 0
        for event in events:
            try:
                self._queue.put_nowait(event)
                accepted += 1
            except queue.Full:
                dropped += 1
        self._on_count("received", accepted)
        if dropped:
            self._on_count("dropped", dropped)
            log.warning("events: queue full, %d events dropped", dropped)
        return accepted, dropped

    def _take(self, first: Event | None = None, limit: int | None = None) -> list[Event]:
        batch = [first] if first is not None else []
        while limit is None or len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _record(self, batch: list[Event]) -> None:
        if not batch:
            return
        try:
            self._store.record(batch)
        except sqlite3.Error as exc:
            log.error("events: cannot record %d events: %s", len(batch), exc)

    def drain(self) -> None:
        """Write everything queued so far (tests, shutdown)."""
        self._record(self._take())

    def _write(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._record(self._take(first, limit=1000))
        self.drain()

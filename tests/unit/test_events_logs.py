"""Registry notification parsing, the bounded event queue, and JSON logs."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gc_daemon.events import BadEvents, Event, EventSink, EventStore, parse_envelope
from gc_daemon.logs import JsonFormatter

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def envelope(*events: dict[str, object]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def event(action: str, tag: str | None = "t", media: str = MANIFEST, agent: str = "docker/24") -> dict[str, object]:
    target = {"mediaType": media, "repository": "team/app", "digest": "sha256:" + "a" * 64}
    if tag:
        target["tag"] = tag
    return {"id": "x", "timestamp": "2026-12-01T10:00:00.123456789Z", "action": action, "target": target,
            "request": {"useragent": agent}}  # fmt: skip


def test_parse_keeps_manifest_push_and_pull_and_skips_the_rest() -> None:
    events = parse_envelope(envelope(
        event("push"), event("pull", tag=None), event("push", media="application/octet-stream"),
        event("delete"), event("pull", agent="gc-daemon/0.1.0"),
    ))  # fmt: skip
    assert [(e.action, e.tag) for e in events] == [("push", "t"), ("pull", None)]
    assert events[0].at == datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"events": {}}', envelope({"action": "push"}), envelope(event("push") | {"timestamp": "x"})],
)
def test_malformed_envelopes_are_refused_whole(body: bytes) -> None:
    with pytest.raises(BadEvents):
        parse_envelope(body)


def test_a_burst_beyond_the_queue_is_dropped_and_counted_without_blocking(tmp_path: Path) -> None:
    counted: dict[str, int] = {}
    store = EventStore(tmp_path / "events.sqlite")
    sink = EventSink(store, "s3cret", "Authorization", capacity=3,
                     on_count=lambda kind, n: counted.__setitem__(kind, counted.get(kind, 0) + n))  # fmt: skip
    burst = [Event("push", "team/app", f"sha256:{i:064x}", f"t{i}", datetime.now(UTC)) for i in range(10)]
    assert sink.accept(burst) == (3, 7)  # the writer thread is not started: nothing drains
    assert counted == {"received": 3, "dropped": 7}
    sink.drain()
    assert len(store.pushes()) == 3
    assert sink.authorized({"authorization": "Bearer s3cret"}) and sink.authorized({"authorization": "s3cret"})
    assert not sink.authorized({"authorization": "Bearer nope"}) and not sink.authorized({})


def test_pulls_keep_the_latest_time_and_pushes_the_first(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.sqlite")
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    digest = "sha256:" + "b" * 64
    store.record([Event("pull", "r", digest, None, late), Event("pull", "r", digest, None, early)])
    store.record([Event("push", "r", digest, "t", early), Event("push", "r", digest, "t", late)])
    assert store.pulls() == {("r", digest): late}
    assert store.pushes() == {("r", "t", digest): early}


def test_json_log_lines() -> None:
    record = logging.LogRecord("gc_daemon.cycle", logging.INFO, __file__, 1, "run %s finished", ("abc",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["message"] == "run abc finished" and line["logger"] == "gc_daemon.cycle"
    assert line["time"].endswith("+00:00")

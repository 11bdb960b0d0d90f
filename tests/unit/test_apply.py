"""The removal phase: its request pool (the earliest repository's calls first) and how a failure stops it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gc_daemon.apply import _Requests, _Stopped, apply
from gc_daemon.errors import RegistryServerError
from gc_daemon.model import MEDIA_DOCKER_MANIFEST, Action, Decision, Deletion, Method, Plan, RunReport, TagClass
from gc_daemon.registry.client import RegistryClient, sha256_digest

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_calls_run_in_order_of_their_repository_turn_not_arrival() -> None:
    pool = _Requests(1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = threading.Thread(target=pool.map, args=(0, lambda _: gate.wait(5), [None]))
        blocker.start()
        later = threading.Thread(target=pool.map, args=(2, ran.append, ["late-1", "late-2"]))
        later.start()
        while pool._queue.qsize() < 2:
            threading.Event().wait(0.01)
        earlier = threading.Thread(target=pool.map, args=(1, ran.append, ["early-1", "early-2"]))
        earlier.start()
        while pool._queue.qsize() < 4:
            threading.Event().wait(0.01)
        gate.set()
        for thread in (blocker, later, earlier):
            thread.join(5)
    finally:
        pool.close()
    assert ran == ["early-1", "early-2", "late-1", "late-2"]


def test_results_come_back_in_item_order_and_errors_are_raised() -> None:
    pool = _Requests(3)
    try:
        assert pool.map(0, lambda n: n * n, list(range(20))) == [n * n for n in range(20)]

        def boom(n: int) -> int:
            if n == 3:
                raise ValueError("three")
            return n

        with pytest.raises(ValueError, match="three"):
            pool.map(0, boom, list(range(6)))
    finally:
        pool.close()


def test_after_a_failure_queued_calls_are_not_sent() -> None:
    pool = _Requests(1)
    sent: list[int] = []
    try:
        pool.failed.set()
        with pytest.raises(_Stopped):
            pool.map(0, sent.append, [1, 2, 3])
    finally:
        pool.close()
    assert sent == []


def _fake_registry(fail_digest: str, tags: dict[str, str], bodies: dict[str, bytes], sent: list[str]) -> Any:
    """A registry 2.8 as far as the removal phase sees it, answering 500 to the DELETE of ``fail_digest``."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        sent.append(f"{request.method} {path}")
        if path.endswith("/tags/list"):
            return httpx.Response(200, json={"name": "team/app", "tags": sorted(tags)})
        reference = path.rsplit("/", 1)[1]
        if request.method == "HEAD":
            digest = tags.get(reference)
            return httpx.Response(200, headers={"Docker-Content-Digest": digest}) if digest else httpx.Response(404)
        if request.method == "GET" and reference in bodies:
            return httpx.Response(200, content=bodies[reference], headers={"Content-Type": MEDIA_DOCKER_MANIFEST})
        if request.method == "DELETE":
            if reference == fail_digest:
                return httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "disk on fire"}]})
            if reference not in bodies:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})
            for tag in [t for t, d in tags.items() if d == reference]:
                del tags[tag]
            del bodies[reference]
            return httpx.Response(202)
        return httpx.Response(404)

    return handle


def test_a_failed_delete_stops_the_phase_and_what_went_before_it_is_counted() -> None:
    bodies = {sha256_digest(b'{"n": %d}' % n): b'{"n": %d}' % n for n in range(4)}
    digests = list(bodies)
    tags = {f"develop-{n}": digest for n, digest in enumerate(digests)}
    decisions = tuple(
        Decision("team/app", tag, digest, Action.DELETE, "test", TagClass.UNSTABLE, 0, Method.DIGEST)
        if n < 3
        else Decision("team/app", tag, digest, Action.KEEP, "test", TagClass.UNSTABLE, 0)
        for n, (tag, digest) in enumerate(tags.items())
    )
    deletions = tuple(Deletion("team/app", d.digest, (d.tag,)) for d in decisions if d.action is Action.DELETE)
    the_plan = Plan(decisions=decisions, deletions=deletions, skipped=(), now=NOW)
    sent: list[str] = []
    transport = httpx.MockTransport(_fake_registry(digests[1], tags, bodies, sent))
    report = RunReport(run_id="t", trigger="test", dry_run=False, started_at=NOW)
    client = RegistryClient("http://registry.test", transport=transport, retries=1, sleep=lambda _: None)
    with client, pytest.raises(RegistryServerError, match="disk on fire"):
        apply(the_plan, client, report, concurrency=1)

    assert [d.digest for d in report.deleted] == [digests[0]]
    assert report.manifests_deleted == 1 and report.tags_deleted == 1
    assert f"DELETE /v2/team/app/manifests/{digests[2]}" not in sent, "nothing is sent after a failure"
    assert sent[-1] == "GET /v2/team/app/tags/list", "what went is still counted against a fresh listing"
    assert sorted(tags) == ["develop-1", "develop-2", "develop-3"]

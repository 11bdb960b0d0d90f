"""Apply a plan: untag and delete through the V2 API, re-checking each repository right before it loses anything.

Every removal is written to the audit log with the removed manifest's bytes.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, TypeVar

from gc_daemon.accounting import Accounting
from gc_daemon.errors import GcDaemonError, RegistryNotFound, RegistryProtocolError
from gc_daemon.model import INDEX_MEDIA_TYPES, Action, Deletion, Plan, RunReport, Untag
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import ManifestResponse, RegistryClient
from gc_daemon.state import State

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_LOCK = threading.RLock()  # the report and the accounting are shared by the workers


def utcnow() -> datetime:
    return datetime.now(UTC)


def remove_manifest(
    registry: RegistryClient,
    report: RunReport,
    state: State | None,
    accounting: Accounting,
    repository: str,
    digest: str,
    tags: tuple[str, ...],
    method: str,
    reason: str,
    cache: DigestCache | None = None,
) -> bool:
    """Keep the manifest's bytes for the audit log, then DELETE it by digest. False when it is already gone."""
    try:
        manifest = manifest_bytes(registry, cache, repository, digest)
    except RegistryNotFound:
        return False
    with _LOCK:
        accounting.learn_manifest(digest, manifest.body)
    try:
        registry.delete_manifest(repository, digest)
    except RegistryNotFound:
        return False
    if state is not None:  # outside _LOCK: the state dir serializes its own appends
        state.audit(
            run_id=report.run_id, repository=repository, tags=tags, digest=digest, method=method,
            reason=reason, manifest=manifest.body, media_type=manifest.media_type, now=utcnow(),
        )  # fmt: skip
    return True


def manifest_bytes(
    registry: RegistryClient, cache: DigestCache | None, repository: str, digest: str
) -> ManifestResponse:
    """A manifest's exact bytes: manifests are immutable per digest, so the scan's digest cache (checked
    against the digest when read) spares the GET."""
    known = cache.manifest(digest) if cache is not None else None
    if known is not None:
        return ManifestResponse(digest=digest, media_type=known[0], body=known[1])
    return registry.manifest(repository, digest)


class _Requests:
    """``workers`` threads sending the removal phase's requests, the earliest repository's first.

    Each repository's re-check and its DELETEs should follow each other closely (the shorter that window,
    the less a push can slip in between), while many repositories still keep every worker busy: so calls
    are taken in order of their repository's turn, not in order of arrival.
    """

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self.failed = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"apply-{n}", daemon=True) for n in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            _, _, call, future = self._queue.get()
            if call is None or future is None:
                return
            if self.failed.is_set():
                future.cancel()
            if not future.set_running_or_notify_cancel():  # tells a waiting map() of the cancel too
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the waiting repository; nothing new is sent after it
                self.failed.set()
                future.set_exception(exc)

    def map(self, turn: int, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``work`` over ``items`` (at priority ``turn``), results in order.

        Returns once every call has finished or was dropped, so nothing of this map is in flight after it; then
        raises the first error, or :class:`_Stopped` when calls were dropped after another one failed.
        """
        futures: list[Future[R]] = []
        for item in items:
            future: Future[R] = Future()
            self._queue.put((turn, next(self._order), functools.partial(work, item), future))
            futures.append(future)
        wait(futures)
        for future in futures:
            if not future.cancelled() and (error := future.exception()) is not None:
                raise error
        if any(future.cancelled() for future in futures):
            raise _Stopped
        return [future.result() for future in futures]

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put((sys.maxsize, next(self._order), None, None))
        for thread in self._threads:
            thread.join()


class _Stopped(Exception):
    """Another repository's removal failed: this one sends nothing more."""


def apply(
    plan: Plan,
    registry: RegistryClient,
    report: RunReport,
    state: State | None = None,
    accounting: Accounting | None = None,
    concurrency: int = 8,
) -> None:
    """Remove what the plan says: untags first, then each repository's manifests.

    Right before a repository's DELETEs, its tags are listed again and every tag that is not planned to go
    with a doomed manifest is read (HEAD): a tag pushed or moved onto that manifest since the scan (a new
    tag, or a kept one like ``latest`` pointed at an old build), or an index pushed since then that contains
    it, would be taken along, so that manifest is skipped. Tags planned to go need no re-check: if one was
    pushed again since the scan it now points elsewhere and the DELETE leaves it alone; a second listing
    after the DELETEs tells which tags did go, so the report counts exactly those.
    """
    if not plan.deletions and not plan.untags:
        return
    accounting = Accounting() if accounting is None else accounting
    first = (plan.deletions or plan.untags)[0].repository
    registry.check_deletes_enabled(first)
    removals = {(d.repository, d.tag): d for d in plan.decisions if d.action is Action.DELETE}

    def reason(repository: str, tag: str) -> str:
        """Written out only for the tags that go (a plan keeps its reasons as parts)."""
        decision = removals.get((repository, tag))
        return decision.reason if decision is not None else ""

    scanned: dict[str, dict[str, str]] = {}
    for decision in plan.decisions:
        scanned.setdefault(decision.repository, {})[decision.tag] = decision.digest

    by_tag = bool(plan.untags) and registry.tag_delete_supported(plan.untags[0].repository)
    if plan.untags:
        log.info("untag: %s", "DELETE by tag" if by_tag else "placeholder manifest, then DELETE by digest (2.x)")

    def untag_one(untag: Untag) -> None:
        current = registry.manifest_digest(untag.repository, untag.tag)
        if current != untag.digest:
            what = "is gone" if current is None else f"now points to {current[:19]}"
            skip(report, Deletion(untag.repository, untag.digest, (untag.tag,)), f"tag {untag.tag!r} {what}")
            return
        manifest = manifest_bytes(registry, cache, untag.repository, untag.digest)
        placeholder: tuple[str, ...] = ()
        if by_tag:
            registry.delete_tag(untag.repository, untag.tag)
        else:
            placeholder = registry.untag_with_placeholder(untag.repository, untag.tag)
        with _LOCK:
            report.own_blobs.update(placeholder)
            report.untagged.append(untag)
            report.tags_deleted += 1
        if state is not None:
            state.audit(
                run_id=report.run_id, repository=untag.repository, tags=(untag.tag,), digest=untag.digest,
                method="untag", reason=reason(untag.repository, untag.tag),
                manifest=manifest.body, media_type=manifest.media_type, now=utcnow(),
            )  # fmt: skip
        log.info("untagged %s:%s (%s stays)", untag.repository, untag.tag, untag.digest[:19])

    def claimed(repository: str, deletions: Sequence[Deletion], turn: int) -> dict[str, str]:
        """Doomed digest -> a tag that now needs it and is not planned to go with it."""
        doomed = {d.digest for d in deletions}
        going = {t for d in deletions for t in d.tags}
        before = scanned.get(repository, {})
        others = [t for t in registry.tags(repository) if t not in going]
        now = requests.map(turn, lambda t: registry.manifest_digest(repository, t), others)
        needs: dict[str, str] = {}
        changed = [(t, d) for t, d in zip(others, now, strict=True) if d is not None and before.get(t) != d]
        for tag, digest in zip(others, now, strict=True):
            if digest in doomed:
                needs.setdefault(digest, tag)
        # A tag pushed since the scan may be an index over a doomed manifest: its children are needed too.
        for (tag, _), children in zip(changed, requests.map(turn, lambda c: children_of(repository, c[1]), changed),
                                      strict=True):  # fmt: skip
            for child in children:
                if child in doomed:
                    needs.setdefault(child, tag)
        return needs

    def children_of(repository: str, digest: str) -> tuple[str, ...]:
        manifest = manifest_bytes(registry, cache, repository, digest)
        if manifest.media_type not in INDEX_MEDIA_TYPES:
            return ()
        try:
            listed = json.loads(manifest.body).get("manifests") or []
            return tuple(str(m["digest"]) for m in listed)
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise RegistryProtocolError(f"{repository}@{digest}: index pushed since the scan is malformed") from exc

    def delete_one(deletion: Deletion) -> bool:
        why = "; ".join(dict.fromkeys(reason(deletion.repository, t) for t in deletion.tags))
        if not remove_manifest(
            registry, report, state, accounting, deletion.repository, deletion.digest, deletion.tags, "digest", why,
            cache,
        ):  # fmt: skip
            skip(report, deletion, "manifest already gone")
            return False
        with _LOCK:
            report.deleted.append(deletion)
            report.tags_deleted += len(deletion.tags)
            report.manifests_deleted += 1
        log.info("deleted %s@%s (tags: %s)", deletion.repository, deletion.digest, ", ".join(deletion.tags))
        return True

    def count_repushed(repository: str, deleted: Sequence[Deletion]) -> None:
        """A tag planned to go that is still listed was pushed again since the scan: it stayed. Count it out."""
        try:
            left = set(registry.tags(repository))
        except GcDaemonError as exc:
            report.warnings.append(f"{repository}: tags not listed again after the DELETEs ({exc}); "
                                   "counted as planned")  # fmt: skip
            return
        for deletion in deleted:
            stayed = tuple(t for t in deletion.tags if t in left)
            if not stayed:
                continue
            with _LOCK:
                at = report.deleted.index(deletion)
                report.deleted[at] = Deletion(
                    repository, deletion.digest, tuple(t for t in deletion.tags if t not in left)
                )
                report.tags_deleted -= len(stayed)
                report.repushed.extend((repository, tag, deletion.digest) for tag in stayed)
            for tag in stayed:
                log.warning("%s:%s was pushed again after the scan: it stays; its old manifest %s was deleted",
                            repository, tag, deletion.digest[:19])  # fmt: skip

    def remove_repository(turn: int, repository: str, deletions: Sequence[Deletion]) -> None:
        needs = claimed(repository, deletions, turn)
        for deletion in deletions:
            if deletion.digest in needs:
                skip(report, deletion, f"tag {needs[deletion.digest]!r} was pushed onto this digest after the scan")
        doomed = [d for d in deletions if d.digest not in needs]
        if not doomed:
            return
        deleted: list[Deletion] = []

        def one(deletion: Deletion) -> None:
            if delete_one(deletion):
                deleted.append(deletion)

        try:
            requests.map(turn, one, doomed)
        finally:
            if deleted:
                count_repushed(repository, deleted)

    cache = DigestCache.open(state.dir) if state is not None else None
    requests = _Requests(concurrency)
    try:
        if plan.untags:
            requests.map(0, untag_one, plan.untags)  # all untags before any DELETE, as before
        by_repository: dict[str, list[Deletion]] = {}
        for deletion in plan.deletions:
            by_repository.setdefault(deletion.repository, []).append(deletion)
        errors: list[BaseException] = []

        def guarded(turn: int, repository: str) -> None:
            if requests.failed.is_set():
                return
            try:
                remove_repository(turn, repository, by_repository[repository])
            except _Stopped:
                pass
            except GcDaemonError as exc:
                errors.append(exc)
                requests.failed.set()

        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="apply-repo") as repos:
            list(repos.map(guarded, itertools.count(), by_repository))
        if errors:
            raise errors[0]
    finally:
        requests.close()
        if cache is not None:
            cache.close()
        order = {(d.repository, d.digest): i for i, d in enumerate(plan.deletions)}
        report.deleted.sort(key=lambda d: order.get((d.repository, d.digest), 0))
        report.untagged.sort(key=lambda u: (u.repository, u.tag))


def skip(report: RunReport, deletion: Deletion, why: str) -> None:
    with _LOCK:
        report.skipped_deletions.append((deletion, why))
    log.warning("not removing %s:%s (%s): %s", deletion.repository, ",".join(deletion.tags), deletion.digest[:19], why)

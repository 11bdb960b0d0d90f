"""Apply a plan: untag and delete through the V2 API, re-checking each tag right before it goes.

Every removal is written to the audit log with the removed manifest's bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from gc_daemon.accounting import Accounting
from gc_daemon.errors import GcDaemonError, RegistryNotFound
from gc_daemon.model import Deletion, Plan, RunReport, Untag
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import ManifestResponse, RegistryClient
from gc_daemon.state import State

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOCK = threading.RLock()  # the report, the audit log and the accounting are shared by the workers


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
    if state is not None:
        with _LOCK:
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


def _in_parallel(items: Sequence[T], work: Callable[[T], None], concurrency: int) -> None:
    """Run `work` over items, `concurrency` at a time; the first registry error stops new work and is raised."""
    errors: list[GcDaemonError] = []
    failed = threading.Event()

    def guarded(item: T) -> None:
        if failed.is_set():
            return
        try:
            work(item)
        except GcDaemonError as exc:
            errors.append(exc)
            failed.set()

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="apply") as pool:
        list(pool.map(guarded, items))
    if errors:
        raise errors[0]


def apply(
    plan: Plan,
    registry: RegistryClient,
    report: RunReport,
    state: State | None = None,
    accounting: Accounting | None = None,
    concurrency: int = 8,
) -> None:
    """Remove what the plan says, re-checking each tag right before it goes.

    Removals run `concurrency` at a time: each is independent (its own re-check, DELETE and audit line).
    """
    if not plan.deletions and not plan.untags:
        return
    accounting = Accounting() if accounting is None else accounting
    first = (plan.deletions or plan.untags)[0].repository
    registry.check_deletes_enabled(first)
    reasons = {(d.repository, d.tag): d.reason for d in plan.decisions}
    scanned = {(d.repository, d.tag) for d in plan.decisions}
    planned = {(d.repository, d.digest) for d in plan.deletions}
    # Tags pushed since the scan that point at a planned digest would go with it: protect them.
    protected: dict[tuple[str, str], str] = {}
    for repository in sorted({d.repository for d in plan.deletions}):
        for tag in registry.tags(repository):
            if (repository, tag) not in scanned:
                digest = registry.manifest_digest(repository, tag)
                if digest and (repository, digest) in planned:
                    protected[(repository, digest)] = tag

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
                    method="untag", reason=reasons.get((untag.repository, untag.tag), ""),
                    manifest=manifest.body, media_type=manifest.media_type, now=utcnow(),
                )  # fmt: skip
        log.info("untagged %s:%s (%s stays)", untag.repository, untag.tag, untag.digest[:19])

    def delete_one(deletion: Deletion) -> None:
        key = (deletion.repository, deletion.digest)
        if key in protected:
            skip(report, deletion, f"tag {protected[key]!r} was pushed onto this digest after the scan")
            return
        moved = [t for t in deletion.tags if registry.manifest_digest(deletion.repository, t) != deletion.digest]
        if moved:
            skip(report, deletion, f"tag(s) {', '.join(moved)} no longer point to the planned digest")
            return
        reason = "; ".join(dict.fromkeys(reasons.get((deletion.repository, t), "") for t in deletion.tags))
        if not remove_manifest(
            registry, report, state, accounting, deletion.repository, deletion.digest, deletion.tags, "digest", reason,
            cache,
        ):  # fmt: skip
            skip(report, deletion, "manifest already gone")
            return
        with _LOCK:
            report.deleted.append(deletion)
            report.tags_deleted += len(deletion.tags)
            report.manifests_deleted += 1
        log.info("deleted %s@%s (tags: %s)", deletion.repository, deletion.digest, ", ".join(deletion.tags))

    cache = DigestCache.open(state.dir) if state is not None else None
    try:
        if plan.untags:
            _in_parallel(plan.untags, untag_one, concurrency)
        _in_parallel(plan.deletions, delete_one, concurrency)
    finally:
        if cache is not None:
            cache.close()
        order = {(d.repository, d.digest): i for i, d in enumerate(plan.deletions)}
        report.deleted.sort(key=lambda d: order.get((d.repository, d.digest), 0))
        report.untagged.sort(key=lambda u: (u.repository, u.tag))


def skip(report: RunReport, deletion: Deletion, why: str) -> None:
    with _LOCK:
        report.skipped_deletions.append((deletion, why))
    log.warning("not removing %s:%s (%s): %s", deletion.repository, ",".join(deletion.tags), deletion.digest[:19], why)

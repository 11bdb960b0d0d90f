"""Apply a plan: untag and delete through the V2 API, re-checking each tag right before it goes.

Every removal is written to the audit log with the removed manifest's bytes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from gc_daemon.accounting import Accounting
from gc_daemon.errors import RegistryNotFound
from gc_daemon.model import Deletion, Plan, RunReport
from gc_daemon.registry.client import RegistryClient
from gc_daemon.state import State

log = logging.getLogger(__name__)


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
) -> bool:
    """GET the manifest's bytes for the audit log, then DELETE it by digest. False when already gone."""
    try:
        manifest = registry.manifest(repository, digest)
    except RegistryNotFound:
        return False
    accounting.learn_manifest(digest, manifest.body)
    try:
        registry.delete_manifest(repository, digest)
    except RegistryNotFound:
        return False
    if state is not None:
        state.audit(
            run_id=report.run_id, repository=repository, tags=tags, digest=digest, method=method,
            reason=reason, manifest=manifest.body, media_type=manifest.media_type, now=utcnow(),
        )  # fmt: skip
    return True


def apply(
    plan: Plan,
    registry: RegistryClient,
    report: RunReport,
    state: State | None = None,
    accounting: Accounting | None = None,
) -> None:
    """Remove what the plan says, re-checking each tag right before it goes."""
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

    if plan.untags:
        by_tag = registry.tag_delete_supported(plan.untags[0].repository)
        log.info("untag: %s", "DELETE by tag" if by_tag else "placeholder manifest, then DELETE by digest (2.x)")
        for untag in plan.untags:
            current = registry.manifest_digest(untag.repository, untag.tag)
            if current != untag.digest:
                what = "is gone" if current is None else f"now points to {current[:19]}"
                skip(report, Deletion(untag.repository, untag.digest, (untag.tag,)), f"tag {untag.tag!r} {what}")
                continue
            manifest = registry.manifest(untag.repository, untag.digest)
            if by_tag:
                registry.delete_tag(untag.repository, untag.tag)
            else:
                report.own_blobs.update(registry.untag_with_placeholder(untag.repository, untag.tag))
            report.untagged.append(untag)
            report.tags_deleted += 1
            if state is not None:
                state.audit(
                    run_id=report.run_id, repository=untag.repository, tags=(untag.tag,), digest=untag.digest,
                    method="untag", reason=reasons.get((untag.repository, untag.tag), ""),
                    manifest=manifest.body, media_type=manifest.media_type, now=utcnow(),
                )  # fmt: skip
            log.info("untagged %s:%s (%s stays)", untag.repository, untag.tag, untag.digest[:19])

    for deletion in plan.deletions:
        key = (deletion.repository, deletion.digest)
        if key in protected:
            skip(report, deletion, f"tag {protected[key]!r} was pushed onto this digest after the scan")
            continue
        moved = [t for t in deletion.tags if registry.manifest_digest(deletion.repository, t) != deletion.digest]
        if moved:
            skip(report, deletion, f"tag(s) {', '.join(moved)} no longer point to the planned digest")
            continue
        reason = "; ".join(dict.fromkeys(reasons.get((deletion.repository, t), "") for t in deletion.tags))
        if not remove_manifest(
            registry, report, state, accounting, deletion.repository, deletion.digest, deletion.tags, "digest", reason
        ):
            skip(report, deletion, "manifest already gone")
            continue
        report.deleted.append(deletion)
        report.tags_deleted += len(deletion.tags)
        report.manifests_deleted += 1
        log.info("deleted %s@%s (tags: %s)", deletion.repository, deletion.digest, ", ".join(deletion.tags))


def skip(report: RunReport, deletion: Deletion, why: str) -> None:
    report.skipped_deletions.append((deletion, why))
    log.warning("not removing %s:%s (%s): %s", deletion.repository, ",".join(deletion.tags), deletion.digest[:19], why)

"""One run: inventory -> plan -> apply -> collect -> report. Shared by `run-now` and the daemon.

Dry-run is "compute the plan and stop": no flag travels into the functions that delete.
Nothing is removed unless the registry answered every question the plan depends on.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from gc_daemon.collect.executors import DockerExecutor, Executor, LocalExecutor
from gc_daemon.collect.output import parse as parse_gc_output
from gc_daemon.config import Settings
from gc_daemon.errors import (
    CollectError,
    GcDaemonError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryServerError,
    RegistryUnreachable,
    RunAborted,
)
from gc_daemon.model import BlobKind, Deletion, Inventory, Plan, RunReport
from gc_daemon.registry.client import RegistryClient
from gc_daemon.registry.scan import Scanner
from gc_daemon.retention import Guards, RuleSpec
from gc_daemon.retention import plan as make_plan
from gc_daemon.state import State

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def rules_from_settings(settings: Settings) -> list[RuleSpec]:
    return [
        RuleSpec(
            repositories=tuple(r.repositories),
            stable=tuple(r.stable),
            keep_unstable=r.keep_unstable,
            keep_within=r.keep_within_delta(),
        )
        for r in settings.retention.rules
    ]


def build_registry_client(settings: Settings) -> RegistryClient:
    reg = settings.registry
    verify: bool | str = str(reg.ca_file) if reg.ca_file and reg.verify_tls else reg.verify_tls
    return RegistryClient(
        reg.url,
        username=reg.username,
        password=reg.resolved_password(),
        verify=verify,
        timeout_s=reg.timeout_s,
        concurrency=reg.concurrency,
    )


def build_executor(settings: Settings) -> Executor | None:
    gc = settings.gc
    if not gc.enabled:
        return None
    if gc.executor == "local":
        return LocalExecutor(gc.command)
    import docker

    try:
        client = docker.DockerClient.from_env(version="auto")
    except docker.errors.DockerException as exc:
        raise CollectError(f"cannot reach the Docker engine (DOCKER_HOST): {exc}") from exc
    assert gc.container is not None  # checked by the config
    return DockerExecutor(client, gc.container)


def compute_plan(
    settings: Settings,
    registry: RegistryClient,
    now: datetime,
    should_stop: Callable[[], bool] = lambda: False,
    state: State | None = None,
) -> tuple[Inventory, Plan]:
    registry.probe()
    scanner = Scanner(registry, concurrency=settings.registry.concurrency, should_stop=should_stop)
    inventory = scanner.scan(now)
    first_seen = state.first_seen() if state is not None else {}
    guards = Guards(settings.retention.max_delete_ratio, settings.retention.max_deletions)
    return inventory, make_plan(inventory, rules_from_settings(settings), now, first_seen=first_seen, guards=guards)


class GuardTripped(RunAborted):
    def __init__(self, guard: str, message: str) -> None:
        super().__init__(message)
        self.guard = guard


def run_cycle(
    settings: Settings,
    registry: RegistryClient,
    executor: Executor | None,
    *,
    trigger: str,
    dry_run: bool = False,
    force: bool = False,
    state: State | None = None,
    now: Callable[[], datetime] = utcnow,
    should_stop: Callable[[], bool] = lambda: False,
    on_gc_line: Callable[[str], None] | None = None,
    before_apply: Callable[[Plan], None] | None = None,
) -> RunReport:
    """Run once; never raises a GcDaemonError: the report carries the result and the error.

    ``before_apply`` is called with the plan right before the first removal (tests use it to race a push).
    """
    started = time.monotonic()
    report = RunReport(
        run_id=uuid.uuid4().hex[:12],
        trigger=trigger,
        dry_run=dry_run or settings.retention.dry_run,
        started_at=now(),
    )
    log.info("run %s (%s) started%s", report.run_id, trigger, ", dry run" if report.dry_run else "")
    try:
        inventory, plan = compute_plan(settings, registry, report.started_at, should_stop, state)
        report.registry_up = True
        report.plan = plan
        for name, why in plan.skipped:
            report.warnings.append(f"repository {name} skipped: {why}")
        summary = plan.summary()
        log.info(
            "plan: %d tags in %d repositories: keep %d, remove %d (%d manifests deleted, %d tags untagged alone)",
            summary["tags"], summary["repositories"], summary["tags_kept"],
            summary["tags_to_delete"], summary["manifests_to_delete"], summary["tags_to_untag"],
        )  # fmt: skip
        if report.dry_run:
            report.result = "success"
            return report
        if state is not None:
            state.record_seen(
                ((r.name, t, d) for r in inventory.repositories for t, d in r.tags.items()), report.started_at
            )
        for guard, message in plan.violations:
            if not force:
                report.guard_tripped = guard
                raise GuardTripped(
                    guard, f"guard {guard} tripped: {message}; nothing was removed (run-now --force to proceed)"
                )
            report.warnings.append(f"guard {guard} overridden by --force: {message}")
        if should_stop():
            raise RunAborted("stop requested before removal; nothing was removed")
        if before_apply is not None:
            before_apply(plan)
        sizes = inventory.blob_sizes()
        apply(plan, registry, report, state, sizes)
        if executor is not None:
            if should_stop():
                raise RunAborted("stop requested before garbage-collect; tags were removed, nothing collected")
            collect(settings, executor, registry, inventory, plan, report, state, sizes, on_gc_line)
        report.result = "success" if not report.error else "failure"
    except GcDaemonError as exc:
        if isinstance(exc, (RegistryUnreachable, RegistryServerError)) and report.registry_up is None:
            report.registry_up = False
        report.result = "failure"
        report.error = str(exc)
        log.error("run %s failed: %s", report.run_id, exc)
    finally:
        report.duration_s = time.monotonic() - started
    return report


def _learn_sizes(body: bytes, sizes: dict[str, int], digest: str) -> None:
    """Add the descriptors of a manifest read during the run to the size map used for accounting."""
    sizes.setdefault(digest, len(body))
    try:
        manifest = json.loads(body)
        descriptors = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
        for d in descriptors:
            if isinstance(d, dict) and isinstance(d.get("digest"), str) and isinstance(d.get("size"), int):
                sizes.setdefault(d["digest"], d["size"])
    except (ValueError, AttributeError):
        pass


def _remove_manifest(
    registry: RegistryClient,
    report: RunReport,
    state: State | None,
    sizes: dict[str, int],
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
    _learn_sizes(manifest.body, sizes, digest)
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
    sizes: dict[str, int] | None = None,
) -> None:
    """Remove what the plan says, re-checking each tag right before it goes."""
    if not plan.deletions and not plan.untags:
        return
    sizes = {} if sizes is None else sizes
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
                _skip(report, Deletion(untag.repository, untag.digest, (untag.tag,)), f"tag {untag.tag!r} {what}")
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
            _skip(report, deletion, f"tag {protected[key]!r} was pushed onto this digest after the scan")
            continue
        moved = [t for t in deletion.tags if registry.manifest_digest(deletion.repository, t) != deletion.digest]
        if moved:
            _skip(report, deletion, f"tag(s) {', '.join(moved)} no longer point to the planned digest")
            continue
        reason = "; ".join(dict.fromkeys(reasons.get((deletion.repository, t), "") for t in deletion.tags))
        if not _remove_manifest(
            registry, report, state, sizes, deletion.repository, deletion.digest, deletion.tags, "digest", reason
        ):
            _skip(report, deletion, "manifest already gone")
            continue
        report.deleted.append(deletion)
        report.tags_deleted += len(deletion.tags)
        report.manifests_deleted += 1
        log.info("deleted %s@%s (tags: %s)", deletion.repository, deletion.digest, ", ".join(deletion.tags))


def _skip(report: RunReport, deletion: Deletion, why: str) -> None:
    report.skipped_deletions.append((deletion, why))
    log.warning("not removing %s:%s (%s): %s", deletion.repository, ",".join(deletion.tags), deletion.digest[:19], why)


def is_distribution_v2(version: str) -> bool:
    """`registry --version`: 2.x prints github.com/docker/distribution v2.8.x (or Debian's 2.8.2+ds1)."""
    return "docker/distribution" in version or " v2." in version


def _needed_now(registry: RegistryClient, repository: str, known: dict[str, tuple[str, ...]]) -> set[str]:
    """Every manifest the repository's tags need right now: tagged digests and their index children."""
    needed: set[str] = set()
    pending = [d for t in registry.tags(repository) if (d := registry.manifest_digest(repository, t))]
    while pending:
        digest = pending.pop()
        if digest in needed:
            continue
        needed.add(digest)
        if digest not in known:
            body = registry.manifest(repository, digest).body
            try:
                children = tuple(str(m["digest"]) for m in json.loads(body).get("manifests") or [])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RegistryProtocolError(f"{repository}@{digest}: unreadable manifest") from exc
            known[digest] = children
        pending.extend(known[digest])
    return needed


def collect_untagged_safely(
    executor: Executor,
    registry: RegistryClient,
    inventory: Inventory,
    report: RunReport,
    state: State | None,
    sizes: dict[str, int],
    config_path: str,
) -> None:
    """distribution 2.x: what `--delete-untagged` would take, minus what a tagged index still needs.

    2.8's `--delete-untagged` deletes the children of tagged indexes with their layers. So ask it for
    its list with `--dry-run`, drop every manifest a tag needs right now (re-read, not from the scan),
    and DELETE the rest through the API; the collect that follows runs without the flag.
    """
    result = executor.garbage_collect([config_path, "--dry-run", "--delete-untagged"])
    output = parse_gc_output(result.exit_code, result.stdout, result.stderr)
    if output.failure:
        if "failed to retrieve tags" in output.failure:
            culprit = output.failure.rsplit("name=", 1)[-1] if "name=" in output.failure else "a repository"
            report.warnings.append(
                f"untagged manifests not collected: distribution 2.x aborts --delete-untagged because {culprit} "
                "has manifests but was never tagged (push a tag to it or remove it)"
            )
            log.warning("%s", report.warnings[-1])
            return
        raise CollectError(f"garbage-collect --dry-run --delete-untagged failed: {output.failure}")
    readable = {r.name: r for r in inventory.repositories if r.error is None}
    by_repo: dict[str, list[str]] = {}
    for repository, digest in output.manifests_by_repository:
        by_repo.setdefault(repository, []).append(digest)
    for repository, digests in sorted(by_repo.items()):
        repo = readable.get(repository)
        if repo is None:
            report.warnings.append(f"untagged manifests in {repository} left alone: it was not read whole")
            continue
        known = {d: image.children for d, image in repo.images.items()}
        needed = _needed_now(registry, repository, known)
        kept = [d for d in digests if d in needed]
        if kept:
            log.info("%s: %d untagged manifests kept: a tagged index needs them", repository, len(kept))
        for digest in digests:
            if digest in needed:
                continue
            reason = "untagged manifest no tag or tagged index needs"
            if _remove_manifest(registry, report, state, sizes, repository, digest, (), "untagged", reason):
                report.manifests_deleted += 1
                report.untagged_manifests_deleted += 1
                log.info("deleted untagged %s@%s", repository, digest)


def collect(
    settings: Settings,
    executor: Executor,
    registry: RegistryClient,
    inventory: Inventory,
    plan: Plan,
    report: RunReport,
    state: State | None = None,
    sizes: dict[str, int] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    sizes = inventory.blob_sizes() if sizes is None else sizes
    version = executor.version()
    log.info("garbage-collect: registry %s", version or "(version unknown)")
    flags: list[str] = []
    report.collect_ran = True
    report.collect_mode = settings.gc.mode
    report.collect_result = "failure"
    gc_started = time.monotonic()
    try:
        if settings.gc.delete_untagged:
            if is_distribution_v2(version):
                collect_untagged_safely(executor, registry, inventory, report, state, sizes, settings.gc.config_path)
            else:
                flags.append("--delete-untagged")
        report.collect_flags = tuple(flags)
        result = executor.garbage_collect([settings.gc.config_path, *flags], on_line)
        output = parse_gc_output(result.exit_code, result.stdout, result.stderr)
    finally:
        report.gc_duration_s = time.monotonic() - gc_started
        # The sweep may have removed blobs even when it failed: always flush the blob cache.
        down = time.monotonic()
        try:
            executor.restart()
            _wait_ready(registry)
            report.registry_up = True
        except GcDaemonError:
            report.registry_up = False
            raise
        finally:
            report.downtime_s = time.monotonic() - down
    kinds = inventory.blob_kinds()
    # Placeholders written by this run's untags were never reclaimable space: leave them out.
    swept = [d for d in output.blobs if d not in report.own_blobs]
    report.blobs_deleted = len(swept)
    report.bytes_reclaimed = sum(sizes[d] for d in swept if d in sizes)
    report.blobs_unknown_size = sum(1 for d in swept if d not in sizes)
    report.layers_deleted = sum(1 for d in swept if kinds.get(d) is BlobKind.LAYER)
    report.manifests_deleted += len(output.manifests)
    if output.failure:
        raise CollectError(f"garbage-collect failed: {output.failure}")
    report.collect_result = "success"
    log.info(
        "garbage-collect: %d blobs removed, %d bytes reclaimed (%d of unknown size)",
        report.blobs_deleted, report.bytes_reclaimed, report.blobs_unknown_size,
    )  # fmt: skip


def _wait_ready(registry: RegistryClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            registry.probe(retry=False)
            return
        except (RegistryUnreachable, RegistryServerError) as exc:
            if time.monotonic() > deadline:
                raise CollectError(f"the registry did not answer within {timeout_s:.0f}s after restart") from exc
            time.sleep(0.5)

"""One run: inventory -> plan -> apply -> collect -> report. Shared by `run-now` and the daemon.

Dry-run is "compute the plan and stop": no flag travels into the functions that delete.
Nothing is removed unless the registry answered every question the plan depends on.
"""

from __future__ import annotations

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
    RegistryServerError,
    RegistryUnreachable,
    RunAborted,
)
from gc_daemon.model import Action, BlobKind, Deletion, Inventory, Plan, RunReport
from gc_daemon.registry.client import RegistryClient
from gc_daemon.registry.scan import Scanner
from gc_daemon.retention import RuleSpec
from gc_daemon.retention import plan as make_plan

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def rules_from_settings(settings: Settings) -> list[RuleSpec]:
    return [
        RuleSpec(repositories=tuple(r.repositories), stable=tuple(r.stable), keep_unstable=r.keep_unstable)
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
) -> tuple[Inventory, Plan]:
    registry.probe()
    scanner = Scanner(registry, concurrency=settings.registry.concurrency, should_stop=should_stop)
    inventory = scanner.scan(now)
    return inventory, make_plan(inventory, rules_from_settings(settings), now)


def run_cycle(
    settings: Settings,
    registry: RegistryClient,
    executor: Executor | None,
    *,
    trigger: str,
    dry_run: bool = False,
    now: Callable[[], datetime] = utcnow,
    should_stop: Callable[[], bool] = lambda: False,
    on_gc_line: Callable[[str], None] | None = None,
) -> RunReport:
    """Run once; never raises a GcDaemonError: the report carries the result and the error."""
    started = time.monotonic()
    report = RunReport(
        run_id=uuid.uuid4().hex[:12],
        trigger=trigger,
        dry_run=dry_run or settings.retention.dry_run,
        started_at=now(),
    )
    log.info("run %s (%s) started%s", report.run_id, trigger, ", dry run" if report.dry_run else "")
    try:
        inventory, plan = compute_plan(settings, registry, report.started_at, should_stop)
        report.registry_up = True
        report.plan = plan
        for name, why in plan.skipped:
            report.warnings.append(f"repository {name} skipped: {why}")
        summary = plan.summary()
        log.info(
            "plan: %d tags in %d repositories: keep %d, delete %d (%d manifests)",
            summary["tags"], summary["repositories"], summary["tags_kept"],
            summary["tags_to_delete"], summary["manifests_to_delete"],
        )  # fmt: skip
        if report.dry_run:
            report.result = "success"
            return report
        if should_stop():
            raise RunAborted("stop requested before removal; nothing was removed")
        apply(plan, registry, report)
        if executor is not None:
            if should_stop():
                raise RunAborted("stop requested before garbage-collect; tags were removed, nothing collected")
            collect(settings, executor, registry, inventory, plan, report, on_gc_line)
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


def apply(plan: Plan, registry: RegistryClient, report: RunReport) -> None:
    """Remove what the plan says, re-checking each tag right before its DELETE."""
    if not plan.deletions:
        return
    registry.check_deletes_enabled(plan.deletions[0].repository)
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
    for deletion in plan.deletions:
        key = (deletion.repository, deletion.digest)
        if key in protected:
            _skip(report, deletion, f"tag {protected[key]!r} was pushed onto this digest after the scan")
            continue
        moved = [t for t in deletion.tags if registry.manifest_digest(deletion.repository, t) != deletion.digest]
        if moved:
            _skip(report, deletion, f"tag(s) {', '.join(moved)} no longer point to the planned digest")
            continue
        try:
            registry.delete_manifest(deletion.repository, deletion.digest)
        except RegistryNotFound:
            _skip(report, deletion, "manifest already gone")
            continue
        report.deleted.append(deletion)
        report.tags_deleted += len(deletion.tags)
        report.manifests_deleted += 1
        log.info("deleted %s@%s (tags: %s)", deletion.repository, deletion.digest, ", ".join(deletion.tags))


def _skip(report: RunReport, deletion: Deletion, why: str) -> None:
    report.skipped_deletions.append((deletion, why))
    log.warning("not deleting %s@%s: %s", deletion.repository, deletion.digest, why)


def _is_distribution_v2(version: str) -> bool:
    return "docker/distribution" in version or " v2." in version


def _index_protection_needed(inventory: Inventory, plan: Plan) -> str | None:
    """On 2.8, --delete-untagged deletes the children of *tagged* indexes. Say why it is unsafe here."""
    if any(repo.error for repo in inventory.repositories):
        return "some repositories could not be read, they may hold multi-arch indexes"
    kept = {(d.repository, d.digest) for d in plan.decisions if d.action is Action.KEEP}
    for repo in inventory.repositories:
        for digest in set(repo.tags.values()):
            image = repo.images.get(digest)
            if image is not None and image.is_index and (repo.name, digest) in kept:
                return f"{repo.name} has a tagged multi-arch index ({digest[:19]})"
    return None


def collect(
    settings: Settings,
    executor: Executor,
    registry: RegistryClient,
    inventory: Inventory,
    plan: Plan,
    report: RunReport,
    on_line: Callable[[str], None] | None = None,
) -> None:
    version = executor.version()
    log.info("garbage-collect: registry %s", version or "(version unknown)")
    flags: list[str] = []
    if settings.gc.delete_untagged:
        unsafe = _index_protection_needed(inventory, plan) if _is_distribution_v2(version) else None
        if unsafe:
            report.warnings.append(
                f"--delete-untagged not passed: on distribution 2.x it deletes the children of tagged "
                f"multi-arch indexes, and {unsafe}"
            )
            log.warning("%s", report.warnings[-1])
        else:
            flags.append("--delete-untagged")
    report.collect_flags = tuple(flags)
    report.collect_ran = True
    report.collect_mode = settings.gc.mode
    report.collect_result = "failure"
    gc_started = time.monotonic()
    try:
        result = executor.garbage_collect([settings.gc.config_path, *flags], on_line)
        output = parse_gc_output(result.exit_code, result.stdout, result.stderr)
        if output.failure and flags and "failed to retrieve tags for digest" in output.failure:
            # 2.8 aborts -m on a repository with manifests but no tags directory; collect without it.
            report.warnings.append(f"--delete-untagged aborted ({output.failure}); collected without it")
            report.collect_flags = ()
            result = executor.garbage_collect([settings.gc.config_path], on_line)
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
    sizes = inventory.blob_sizes()
    kinds = inventory.blob_kinds()
    report.blobs_deleted = len(output.blobs)
    report.bytes_reclaimed = sum(sizes[d] for d in output.blobs if d in sizes)
    report.blobs_unknown_size = sum(1 for d in output.blobs if d not in sizes)
    report.layers_deleted = sum(1 for d in output.blobs if kinds.get(d) is BlobKind.LAYER)
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

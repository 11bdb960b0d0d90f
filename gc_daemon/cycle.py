"""One run: inventory -> plan -> apply -> collect -> report. Shared by `run-now` and the daemon.

Dry-run is "compute the plan and stop": no flag travels into the functions that delete.
Nothing is removed unless the registry answered every question the plan depends on.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gc_daemon.accounting import Accounting
from gc_daemon.apply import apply
from gc_daemon.collect.executors import DockerExecutor, Executor, LocalExecutor
from gc_daemon.collect.sweep import collect, recover_registry
from gc_daemon.config import Settings
from gc_daemon.errors import (
    CollectError,
    GcDaemonError,
    RegistryServerError,
    RegistryUnreachable,
    RunAborted,
)
from gc_daemon.events import EventStore
from gc_daemon.model import Inventory, Plan, RunReport
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import RegistryClient
from gc_daemon.registry.scan import Scanner
from gc_daemon.registry.storage import StorageInventory
from gc_daemon.retention import Guards, History, RuleSpec
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
            keep_pulled_within=r.delta("keep_pulled_within"),
            keep_pushed_within=r.delta("keep_pushed_within"),
        )
        for r in settings.retention.rules
    ]


def build_registry_client(settings: Settings) -> RegistryClient:
    reg = settings.registry
    verify: bool | ssl.SSLContext = reg.verify_tls
    if reg.ca_file and reg.verify_tls:
        verify = ssl.create_default_context(cafile=str(reg.ca_file))
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
        return LocalExecutor(gc.command, gc.restart_command)
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
    storage_path = settings.registry.storage_path
    cache = DigestCache.open(settings.state.dir) if state is not None else None
    try:
        scanner = Scanner(
            registry,
            concurrency=settings.registry.concurrency,
            should_stop=should_stop,
            cache=cache,
            storage=StorageInventory(storage_path) if storage_path is not None else None,
        )
        inventory = scanner.scan(now)
    finally:
        if cache is not None:
            cache.close()
    first_seen = state.first_seen() if state is not None else {}
    guards = Guards(settings.retention.max_delete_ratio, settings.retention.max_deletions)
    events = EventStore(settings.state.dir / "events.sqlite")
    history = History(events.pushes(), events.pulls()) if events.path.exists() else None
    rules = rules_from_settings(settings)
    return inventory, make_plan(inventory, rules, now, first_seen=first_seen, guards=guards, history=history)


@dataclass(frozen=True)
class Phases:
    """Which parts of a run happen. Splitting them opens an undo window: removals on one day, the collect
    on a later one; until the collect, `gc-daemon restore` can put removed tags back byte for byte."""

    remove: bool = True
    collect: bool = True


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
    phases: Phases = Phases(),
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
        with contextlib.ExitStack() as held:
            if not report.dry_run and state is not None:
                held.enter_context(state.run_lock(report.run_id, report.started_at))
                if executor is not None:
                    recovered = recover_registry(state, executor, registry)
                    if recovered:
                        report.warnings.append(recovered)
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
            report.phases = tuple(p for p, on in (("remove", phases.remove), ("collect", phases.collect)) if on)
            _execute(settings, registry, executor if phases.collect else None, inventory, plan, report, force,
                     state, should_stop, on_gc_line, before_apply, phases.remove)  # fmt: skip
        report.result = "success" if not report.error else "failure"
    except GcDaemonError as exc:
        if isinstance(exc, (RegistryUnreachable, RegistryServerError)) and report.registry_up is None:
            report.registry_up = False
        report.result = "failure"
        report.error = str(exc)
        log.error("run %s failed: %s", report.run_id, exc)
    finally:
        report.duration_s = time.monotonic() - started
        log.info(
            "run %s %s: result=%s tags_deleted=%d manifests_deleted=%d blobs_deleted=%d bytes_reclaimed=%d "
            "duration_s=%.1f%s",
            report.run_id, "dry run" if report.dry_run else "finished", report.result, report.tags_deleted,
            report.manifests_deleted, report.blobs_deleted, report.bytes_reclaimed, report.duration_s,
            f" error={report.error}" if report.error else "",
        )  # fmt: skip
    return report


def _execute(
    settings: Settings,
    registry: RegistryClient,
    executor: Executor | None,
    inventory: Inventory,
    plan: Plan,
    report: RunReport,
    force: bool,
    state: State | None,
    should_stop: Callable[[], bool],
    on_gc_line: Callable[[str], None] | None,
    before_apply: Callable[[Plan], None] | None,
    remove: bool = True,
) -> None:
    """Everything after the plan, under the run lock."""
    accounting = Accounting.from_inventory(inventory, state.blob_sizes() if state is not None else None)
    if state is not None:
        state.record_seen(
            ((r.name, t, d) for r in inventory.repositories for t, d in r.tags.items()), report.started_at
        )
        state.remember_sizes(accounting.to_cache())
    for guard, message in plan.violations if remove else ():
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
    if remove:
        apply(plan, registry, report, state, accounting, settings.registry.concurrency)
    if executor is not None:
        if should_stop():
            raise RunAborted("stop requested before garbage-collect; tags were removed, nothing collected")
        collect(
            mode=settings.gc.mode,
            config_path=settings.gc.config_path,
            delete_untagged=settings.gc.delete_untagged,
            executor=executor,
            registry=registry,
            inventory=inventory,
            report=report,
            state=state,
            accounting=accounting,
            on_line=on_gc_line,
        )
        if state is not None:
            state.remember_sizes(accounting.to_cache())

"""One collect: untagged manifests (safely on 2.x), a preview for exact accounting, then the sweep.

offline (default): the registry container is stopped, `registry garbage-collect` runs in a one-off
container of its image with its volumes and REGISTRY_* environment, and the registry is started again,
always. A marker in the state dir records the stop, so a gc-daemon killed mid-collect restarts the
registry when it comes back (``recover_registry``).

online: garbage-collect runs inside the serving registry (upstream calls this unsafe against concurrent
pushes), then the registry is restarted so its blob-descriptor cache forgets the swept blobs.

On 2.x a collect walks the registry three times: `--dry-run --delete-untagged` for the untagged list,
`--dry-run` for the blobs the sweep will take (after the untagged deletes changed that set), then the
sweep. The dry runs only read, and run while the registry still serves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from gc_daemon.accounting import Accounting, reclaimed
from gc_daemon.apply import remove_manifest, utcnow
from gc_daemon.collect.executors import ExecResult, Executor, OfflineExecutor
from gc_daemon.collect.output import GcOutput
from gc_daemon.collect.output import parse as parse_gc_output
from gc_daemon.errors import (
    CollectError,
    GcDaemonError,
    RegistryProtocolError,
    RegistryServerError,
    RegistryUnreachable,
)
from gc_daemon.model import Inventory, RunReport
from gc_daemon.registry.client import RegistryClient
from gc_daemon.state import State

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
HEAD_BUDGET = 5000  # blob HEADs spent finding sizes of blobs no descriptor described


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


def _hint(failure: str) -> str:
    """What a garbage-collect failure means, where the registry's own words leave an operator guessing."""
    if "invalid checksum digest format" in failure:
        return (
            " (a link file in the registry's storage is empty or cut short, typically by a push the registry was"
            " stopped in the middle of, without http.draintimeout; every collect fails until it is dealt with:"
            " find <storage>/docker/registry/v2/repositories -name link -size -71c lists them, README"
            ' "Running it beside a registry")'
        )
    return ""


def collect_untagged_safely(
    executor: Executor,
    registry: RegistryClient,
    inventory: Inventory,
    report: RunReport,
    state: State | None,
    accounting: Accounting,
    config_path: str,
) -> None:
    """distribution 2.x: what `--delete-untagged` would take, minus what a tagged index still needs.

    2.8's `--delete-untagged` deletes the children of tagged indexes with their layers. So ask it for
    its list with `--dry-run`, drop every manifest a tag needs right now (re-read, not from the scan),
    and DELETE the rest through the API; the collect that follows runs without the flag.
    """
    output = _parse(executor.garbage_collect([config_path, "--dry-run", "--delete-untagged"]))
    if output.failure:
        if "failed to retrieve tags" in output.failure:
            culprit = output.failure.rsplit("name=", 1)[-1] if "name=" in output.failure else "a repository"
            report.warnings.append(
                f"untagged manifests not collected: distribution 2.x aborts --delete-untagged because {culprit} "
                "has manifests but was never tagged (push a tag to it or remove it)"
            )
            log.warning("%s", report.warnings[-1])
            return
        raise CollectError(
            f"garbage-collect --dry-run --delete-untagged failed: {output.failure}{_hint(output.failure)}"
        )
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
            if remove_manifest(registry, report, state, accounting, repository, digest, (), "untagged", reason):
                report.manifests_deleted += 1
                report.untagged_manifests_deleted += 1
                log.info("deleted untagged %s@%s", repository, digest)


def size_unknown_blobs(
    registry: RegistryClient, inventory: Inventory, blobs: Sequence[str], accounting: Accounting
) -> None:
    """HEAD each blob the sweep will remove and no descriptor described, through a repository linking it."""
    budget = HEAD_BUDGET
    names = [r.name for r in inventory.repositories]
    for digest in blobs:
        if digest in accounting.sizes:
            continue
        for name in names:
            if budget <= 0:
                log.warning("size lookup budget spent: remaining unknown blobs are counted as unknown")
                return
            budget -= 1
            size = registry.blob_size(name, digest)
            if size is not None:
                accounting.learn(digest, size)
                break


def collect(
    *,
    mode: str,
    config_path: str,
    delete_untagged: bool,
    executor: Executor,
    registry: RegistryClient,
    inventory: Inventory,
    report: RunReport,
    state: State | None,
    accounting: Accounting,
    on_line: Callable[[str], None] | None = None,
) -> None:
    version = executor.version()
    log.info("garbage-collect (%s): registry %s", mode, version or "(version unknown)")
    flags: list[str] = []
    report.collect_ran = True
    report.collect_mode = mode
    report.collect_result = "failure"
    started = time.monotonic()
    try:
        if delete_untagged:
            if is_distribution_v2(version):
                collect_untagged_safely(executor, registry, inventory, report, state, accounting, config_path)
            else:
                flags.append("--delete-untagged")
        report.collect_flags = tuple(flags)
        args = [config_path, *flags]
        # Learn the size of every blob the sweep will remove while the registry still serves them.
        preview = _parse(executor.garbage_collect([config_path, "--dry-run", *flags]))
        if preview.failure:
            raise CollectError(f"garbage-collect --dry-run failed: {preview.failure}{_hint(preview.failure)}")
        size_unknown_blobs(registry, inventory, preview.blobs, accounting)
        if mode == "offline":
            output = _sweep_offline(executor, registry, state, report, args)
        else:
            output = _sweep_online(executor, registry, report, args, on_line)
    finally:
        report.gc_duration_s = time.monotonic() - started
    # Placeholders written by this run's untags were never reclaimable space: leave them out.
    result = reclaimed(accounting, (d for d in output.blobs if d not in report.own_blobs))
    report.blobs_deleted = result.blobs
    report.bytes_reclaimed = result.bytes
    report.blobs_unknown_size = result.unknown_size
    report.layers_deleted = result.by_kind.get("layer", 0)
    report.blobs_by_kind = result.by_kind
    report.bytes_by_kind = result.bytes_by_kind
    report.manifests_deleted += len(output.manifests)
    if output.failure:
        raise CollectError(f"garbage-collect failed: {output.failure}{_hint(output.failure)}")
    report.collect_result = "success"
    log.info(
        "garbage-collect: %d blobs removed, %d bytes reclaimed (%d of unknown size), registry down %.1fs",
        report.blobs_deleted, report.bytes_reclaimed, report.blobs_unknown_size, report.downtime_s,
    )  # fmt: skip


def _parse(result: ExecResult) -> GcOutput:
    return parse_gc_output(result.exit_code, result.stdout, result.stderr)


def _sweep_online(
    executor: Executor,
    registry: RegistryClient,
    report: RunReport,
    args: Sequence[str],
    on_line: Callable[[str], None] | None,
) -> GcOutput:
    try:
        return _parse(executor.garbage_collect(args, on_line))
    finally:
        # The sweep may have removed blobs even when it failed: always flush the blob cache.
        down = time.monotonic()
        try:
            executor.restart()
            wait_ready(registry)
            report.registry_up = True
        except GcDaemonError:
            report.registry_up = False
            raise
        finally:
            report.downtime_s = time.monotonic() - down


def _offline(executor: Executor) -> OfflineExecutor:
    if not all(hasattr(executor, m) for m in ("stop", "start", "collect_offline", "remove_leftovers")):
        raise CollectError("offline garbage-collect needs the docker executor")
    return executor  # type: ignore[return-value]


def _sweep_offline(
    executor: Executor,
    registry: RegistryClient,
    state: State | None,
    report: RunReport,
    args: Sequence[str],
) -> GcOutput:
    offline = _offline(executor)
    if state is not None:
        state.mark_registry_stopped(offline.name, report.run_id, utcnow())
    down = time.monotonic()
    try:
        offline.stop()
        log.info("registry %s stopped for the collect", offline.name)
        return _parse(offline.collect_offline(args))
    finally:
        # Always serve again, also when the collect failed or the run is being interrupted.
        try:
            offline.start()
            wait_ready(registry)
            report.registry_up = True
            if state is not None:
                state.clear_registry_stopped()
            log.info("registry %s started again", offline.name)
        except GcDaemonError:
            report.registry_up = False
            raise
        finally:
            report.downtime_s = time.monotonic() - down


def recover_registry(state: State, executor: Executor, registry: RegistryClient | None = None) -> str | None:
    """Start a registry that a killed gc-daemon left stopped. Call only while holding the run lock."""
    marker = state.registry_stopped()
    if marker is None:
        return None
    offline = _offline(executor)
    leftovers = offline.remove_leftovers()
    offline.start()
    if registry is not None:
        wait_ready(registry)
    state.clear_registry_stopped()
    message = (
        f"registry container {marker.get('container')} was left stopped by gc-daemon (run {marker.get('run_id')}, "
        f"{marker.get('stopped_at')}); started it again"
        + (f" and removed {leftovers} leftover collect container(s)" if leftovers else "")
    )
    log.warning("%s", message)
    return message


def wait_ready(registry: RegistryClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            registry.probe(retry=False)
            return
        except (RegistryUnreachable, RegistryServerError) as exc:
            if time.monotonic() > deadline:
                raise CollectError(f"the registry did not answer within {timeout_s:.0f}s after restart") from exc
            time.sleep(0.5)

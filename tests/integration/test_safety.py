"""Deletion safety against the real registry 2.8.2: nothing a kept tag needs is ever deleted or broken."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gc_daemon.cli import _run_once
from gc_daemon.config import load_settings
from gc_daemon.cycle import build_executor, build_registry_client, run_cycle
from gc_daemon.model import Plan, RunReport
from gc_daemon.state import State
from tests.integration.cli import run, run_json, write_config
from tests.support.images import Pushed, Pusher, pull_whole
from tests.support.registry import RegistryContainer

NO_RATIO = "[retention]\nmax_delete_ratio = 1.0"


def test_unstable_tag_sharing_a_stable_digest_is_untagged_alone(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    release = pusher.push_image("team/app", "1.0.0", created="2026-01-01T00:00:00Z")
    pusher.tag("team/app", "develop-001", release)
    pusher.push_image("team/app", "develop-002", created="2026-02-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    after = registry.blob_store()
    assert set(after) == set(before), "the placeholder's blobs were swept, nothing else"
    assert report["blobs_deleted"] == 0 and report["blobs_unknown_size"] == 0 and report["bytes_reclaimed"] == 0
    assert report["untagged"] == [{"repository": "team/app", "tag": "develop-001", "digest": release.digest}]
    assert sorted(pusher.tags("team/app")) == ["1.0.0", "develop-002"]
    assert pull_whole(registry.url, "team/app", "1.0.0") == release
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["tag"], a["method"], a["digest"]) for a in audit] == [("develop-001", "untag", release.digest)]
    saved = tmp_path / "state" / audit[0]["manifest"]
    assert saved.read_bytes() == release.manifest


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_tagged_index_survives_untagged_collection(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, media: str
) -> None:
    """2.8's --delete-untagged would delete the index's children and their layers: gc-daemon must not."""
    image_media = "oci" if media == "oci" else "docker"
    amd = pusher.push_image("team/multi", None, media=image_media, platform=("linux", "amd64"))  # type: ignore[arg-type]
    arm = pusher.push_image("team/multi", None, media=image_media, platform=("linux", "arm64"))  # type: ignore[arg-type]
    index = pusher.push_index("team/multi", "1.0.0", [amd, arm], media=media)  # type: ignore[arg-type]
    overwritten = pusher.push_image("team/multi", "develop", created="2026-01-01T00:00:00Z")
    pusher.push_image("team/multi", "develop", created="2026-02-01T00:00:00Z")  # leaves `overwritten` untagged
    config = write_config(tmp_path, registry, keep=5)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    assert report["collect"]["flags"] == [] and report["untagged_manifests_deleted"] == 1
    assert pull_whole(registry.url, "team/multi", "1.0.0") == index
    for child in (amd, arm):
        assert pull_whole(registry.url, "team/multi", child.digest) == child
    pull_whole(registry.url, "team/multi", "develop")
    gone = set(before) - set(registry.blob_store())
    unique_layer = next(d for d in overwritten.blobs if d != overwritten.config_digest)
    assert {overwritten.digest, overwritten.config_digest, unique_layer} <= gone
    assert not gone & ({index.digest} | set(index.blobs) | set(amd.manifest_digests) | set(arm.manifest_digests))
    assert report["bytes_reclaimed"] == sum(before.values()) - sum(registry.blob_store().values())
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["method"], a["digest"]) for a in audit] == [("untagged", overwritten.digest)]


def test_signatures_follow_their_image_and_are_not_builds(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    old = pusher.push_image("team/app", "develop-1", created="2026-01-01T00:00:00Z")
    new = pusher.push_image("team/app", "develop-2", created="2026-02-01T00:00:00Z")
    for subject in (old, new):
        pusher.push_image("team/app", f"sha256-{subject.digest[7:]}.sig", created=None)
    pusher.push_image("team/app", f"sha256-{new.digest[7:]}.att", created=None)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)

    code, plan, stderr = run_json(config, "plan")
    assert code == 0, stderr
    classes = {d["tag"]: (d["class"], d["action"]) for d in plan["decisions"]}
    assert classes[f"sha256-{new.digest[7:]}.sig"] == ("signature", "keep")
    assert classes[f"sha256-{new.digest[7:]}.att"] == ("signature", "keep")
    assert classes[f"sha256-{old.digest[7:]}.sig"] == ("signature", "delete")
    assert "1st newest of 2" in next(d["reason"] for d in plan["decisions"] if d["tag"] == "develop-2")

    code, report, stderr = run_json(config, "run-now")
    assert code == 0, stderr
    assert report["tags_deleted"] == 2  # develop-1 and its signature
    assert sorted(pusher.tags("team/app")) == sorted(
        ["develop-2", f"sha256-{new.digest[7:]}.sig", f"sha256-{new.digest[7:]}.att"]
    )
    pull_whole(registry.url, "team/app", "develop-2")


def test_epoch_build_times_fall_back_and_say_so(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    for n in (8, 9, 10, 11):
        pusher.push_image("team/app", f"develop-{n}", created="1970-01-01T00:00:00Z", layers=[Pusher.random_layer()])
    pusher.push_image("team/app", "develop-1", created="2026-11-30T00:00:00Z")
    config = write_config(tmp_path, registry, keep=3, extra=NO_RATIO)

    code, plan, stderr = run_json(config, "plan")

    assert code == 0, stderr
    reasons = {d["tag"]: d["reason"] for d in plan["decisions"]}
    kept = {d["tag"] for d in plan["decisions"] if d["action"] == "keep"}
    # a real build time first, then reproducible builds by natural tag order (develop-11 > develop-9)
    assert kept == {"develop-1", "develop-11", "develop-10"}
    assert "config created" in reasons["develop-1"]
    assert "build time unknown, ordered by tag name" in reasons["develop-9"]

    code, _, stderr = run_json(config, "run-now", "--dry-run")
    assert code == 0
    # After a real run has seen the tags, first-seen times are the fallback before tag names.
    run_json(config, "run-now")
    pusher.push_image("team/app", "develop-2", created="1970-01-01T00:00:00Z")
    code, plan, stderr = run_json(config, "plan")
    reasons = {d["tag"]: d["reason"] for d in plan["decisions"]}
    assert "first seen by gc-daemon" in reasons["develop-11"]
    assert "build time unknown, ordered by tag name" in reasons["develop-2"]


def _run_racing(settings_path: Path, tmp_path: Path, race: Callable[[Plan], None]) -> RunReport:
    """One run-now whose ``race`` pushes right after the plan, before the first removal."""
    settings = load_settings(str(settings_path))
    executor = build_executor(settings)
    assert executor is not None
    try:
        with build_registry_client(settings) as client:
            return run_cycle(settings, client, executor, trigger="manual", state=State(tmp_path / "state"),
                             before_apply=race)  # fmt: skip
    finally:
        executor.close()


def test_a_tag_pushed_again_between_plan_and_removal_stays_and_its_old_manifest_goes(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    old = {n: pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n}T00:00:00Z") for n in range(1, 5)}
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    moved: list[str] = []

    def ci_push(plan: Plan) -> None:
        assert any(d.tags == ("develop-1",) and d.digest == old[1].digest for d in plan.deletions)
        moved.append(pusher.push_image("team/app", "develop-1", created="2026-03-01T00:00:00Z").digest)

    report = _run_racing(config, tmp_path, ci_push)

    assert report.result == "success", report.error
    assert report.skipped_deletions == []
    # The re-pushed tag is a new build: it stays. Its old manifest had no tag left: it went as planned.
    assert report.repushed == [("team/app", "develop-1", old[1].digest)]
    assert report.tags_deleted == 2 and report.manifests_deleted == 3
    went = {d.digest: d.tags for d in report.deleted}
    assert went == {old[1].digest: (), old[2].digest: ("develop-2",), old[3].digest: ("develop-3",)}
    assert pusher.digest_of("team/app", old[1].digest) is None
    assert sorted(pusher.tags("team/app")) == ["develop-1", "develop-4"]
    assert pull_whole(registry.url, "team/app", "develop-1").digest == moved[0]
    pull_whole(registry.url, "team/app", "develop-4")


def test_a_kept_tag_moved_onto_a_doomed_manifest_keeps_it(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """A rollback: `latest` (kept) is pointed at an old build the plan deletes. DELETE by digest would take
    `latest` with it; the re-check before the repository's removals sees it and keeps that manifest."""
    old = {n: pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n}T00:00:00Z") for n in range(1, 5)}
    pusher.tag("team/app", "latest", old[4])
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)

    def rollback(plan: Plan) -> None:
        assert any(d.digest == old[2].digest for d in plan.deletions)
        pusher.tag("team/app", "latest", old[2])

    report = _run_racing(config, tmp_path, rollback)

    assert report.result == "success", report.error
    skipped = {d.digest: why for d, why in report.skipped_deletions}
    assert skipped == {old[2].digest: "tag 'latest' was pushed onto this digest after the scan"}
    assert sorted(pusher.tags("team/app")) == ["develop-2", "develop-4", "latest"]
    assert pull_whole(registry.url, "team/app", "latest") == old[2]
    assert report.tags_deleted == 2 and {d.digest for d in report.deleted} == {old[1].digest, old[3].digest}


def test_an_index_pushed_over_a_doomed_manifest_after_the_scan_keeps_it(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """A release job assembles a multi-arch index from builds already pushed, one of them planned to go."""
    old = {n: pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n}T00:00:00Z") for n in range(1, 4)}
    arm = pusher.push_image("team/app", None, platform=("linux", "arm64"))
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    index: list[Pushed] = []

    def release(plan: Plan) -> None:
        assert any(d.digest == old[1].digest for d in plan.deletions)
        index.append(pusher.push_index("team/app", "2.0.0", [old[1], arm]))

    report = _run_racing(config, tmp_path, release)

    assert report.result == "success", report.error
    skipped = {d.digest: why for d, why in report.skipped_deletions}
    assert skipped == {old[1].digest: "tag '2.0.0' was pushed onto this digest after the scan"}
    assert pull_whole(registry.url, "team/app", "2.0.0") == index[0]  # the index and both children, whole
    assert {d.digest for d in report.deleted} == {old[2].digest}


def test_guard_trips_then_force_proceeds(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    for n in range(1, 11):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-{n:02d}T00:00:00Z")
    config = write_config(tmp_path, registry, keep=2)
    snapshot = registry.snapshot()

    done = run(config, "run-now")
    assert done.returncode == 1
    assert "guard max_delete_ratio tripped: team/app would lose 8 of 10 tags" in done.stdout + done.stderr
    assert registry.snapshot() == snapshot

    code, report, stderr = run_json(config, "run-now", "--force")
    assert code == 0, stderr
    assert report["tags_deleted"] == 8 and any("overridden by --force" in w for w in report["warnings"])
    assert sorted(pusher.tags("team/app")) == ["develop-10", "develop-9"]

    config.write_text(config.read_text().replace("[state]", "[retention]\nmax_deletions = 0\n[state]"))
    pusher.push_image("team/app", "develop-11", created="2026-01-11T00:00:00Z")
    done = run(config, "run-now")
    assert done.returncode == 1 and "guard max_deletions tripped" in done.stderr


def test_guard_trip_is_counted_in_metrics(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    from gc_daemon.metrics import Metrics

    for n in range(1, 5):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n}T00:00:00Z")
    settings = load_settings(str(write_config(tmp_path, registry, keep=0)))
    report = _run_once(settings, "schedule", False, lambda: False)
    metrics = Metrics()
    metrics.record(report, 0.0)
    assert report.result == "failure" and report.guard_tripped == "max_delete_ratio"
    assert metrics.registry.get_sample_value("gc_daemon_guard_tripped_total", {"guard": "max_delete_ratio"}) == 1
    assert len(pusher.tags("team/app")) == 4


def test_digest_only_repository_does_not_abort_the_collect(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """2.8 aborts `--delete-untagged` on a repository that has manifests but was never tagged."""
    pinned = pusher.push_image("team/pinned", None)  # pushed by digest only
    old = pusher.push_image("team/app", "develop-1", created="2026-01-01T00:00:00Z")
    pusher.push_image("team/app", "develop-2", created="2026-02-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    assert any("team/pinned has manifests but was never tagged" in w for w in report["warnings"])
    assert old.digest in set(before) - set(registry.blob_store())
    pull_whole(registry.url, "team/app", "develop-2")
    assert pull_whole(registry.url, "team/pinned", pinned.digest) == pinned

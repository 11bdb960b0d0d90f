"""What the removal phase asks of the real registry 2.8, counted on the wire.

Per repository that loses manifests: one listing before (the re-check) and one after (which tags went), a HEAD
for each tag *not* planned to go (a kept or new tag moved onto a doomed manifest would be taken along), one
DELETE per manifest, and no GET for a manifest the digest cache holds (the audit log's bytes come from there).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gc_daemon.apply import apply
from gc_daemon.errors import RegistryServerError
from gc_daemon.model import Action, Plan, RunReport
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import PROBE_DIGEST, RegistryClient
from gc_daemon.registry.scan import Scanner
from gc_daemon.retention import RuleSpec, plan
from gc_daemon.state import State
from tests.integration.test_scan_requests import Recorder
from tests.support.images import Pusher, pull_whole
from tests.support.registry import RegistryContainer

NOW = datetime(2030, 1, 1, tzinfo=UTC)
RULES = [RuleSpec(("team/*",), (r"\d+\.\d+\.\d+", "latest"), keep_unstable=2)]


def scan_and_plan(registry: RegistryContainer, state: State) -> Plan:
    """Scan with the state dir's digest cache (as a run does, so removals take manifest bytes from it), then plan."""
    cache = DigestCache.open(state.dir)
    assert cache is not None
    with RegistryClient(registry.url) as client, cache:
        inventory = Scanner(client, concurrency=4, cache=cache).scan(NOW)
    return plan(inventory, RULES, NOW)


def test_removal_reads_only_what_could_be_taken_along(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    base = Pusher.random_layer(1024)
    for n in range(1, 7):
        pusher.push_image("team/app", f"develop-{n}", layers=[base], created=f"2026-01-0{n}T00:00:00Z")
    release = pusher.push_image("team/app", "1.0.0", layers=[base], created="2025-01-01T00:00:00Z")
    pusher.tag("team/app", "latest", release)
    for n in range(1, 5):
        pusher.push_image("team/other", f"build-{n}", created=f"2026-02-0{n}T00:00:00Z")
    state = State(tmp_path / "state")
    the_plan = scan_and_plan(registry, state)
    assert {(d.repository, len(d.tags)) for d in the_plan.deletions} == {("team/app", 1), ("team/other", 1)}
    assert len(the_plan.deletions) == 4 + 2

    recorder = Recorder()
    report = RunReport(run_id="count", trigger="test", dry_run=False, started_at=NOW)
    with RegistryClient(registry.url, transport=recorder) as client:
        apply(the_plan, client, report, state, concurrency=4)

    assert report.manifests_deleted == 6 and report.tags_deleted == 6 and report.skipped_deletions == []
    kept = {(d.repository, d.tag) for d in the_plan.decisions if d.action is Action.KEEP}
    heads = Counter(tuple(p.removeprefix("/v2/").split("/manifests/")) for p in recorder.count("HEAD", "/manifests/"))
    assert heads == Counter(kept), "one HEAD per kept tag, none for a tag planned to go"
    deletes = [p for p in recorder.count("DELETE", "/manifests/") if not p.endswith(PROBE_DIGEST)]
    doomed = {f"/v2/{d.repository}/manifests/{d.digest}" for d in the_plan.deletions}
    assert sorted(deletes) == sorted(doomed), "each doomed manifest DELETEd once"
    assert Counter(recorder.count("GET", "/tags/list")) == {"/v2/team/app/tags/list": 2, "/v2/team/other/tags/list": 2}
    assert recorder.count("GET", "/manifests/") == [], "the audit log's bytes came from the digest cache"
    assert len(recorder.seen) == len(heads) + len(deletes) + 1 + 4  # + the deletes-enabled probe, 4 listings
    assert sorted(pusher.tags("team/app")) == ["1.0.0", "develop-5", "develop-6", "latest"]
    for tag in ("1.0.0", "latest", "develop-5", "develop-6"):
        pull_whole(registry.url, "team/app", tag)


def test_a_delete_the_registry_fails_stops_the_phase_with_what_went_counted(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """The real registry answers 500 to one DELETE (its revision directory made immutable, so removing it fails):
    the phase stops, what went before it is counted, nothing more is sent."""
    for n in range(1, 6):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n}T00:00:00Z")
    state = State(tmp_path / "state")
    the_plan = scan_and_plan(registry, state)
    first, failing, *rest = the_plan.deletions
    assert rest, "three manifests planned to go, the second one fails"
    revisions = registry.storage_dir / "docker/registry/v2/repositories/team/app/_manifests/revisions/sha256"
    stuck = revisions / failing.digest.removeprefix("sha256:")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    recorder = Recorder()
    report = RunReport(run_id="fail", trigger="test", dry_run=False, started_at=NOW)
    try:
        client = RegistryClient(registry.url, transport=recorder, backoff_s=0.01)
        with client, pytest.raises(RegistryServerError, match=f"DELETE /v2/team/app/manifests/{failing.digest}"):
            apply(the_plan, client, report, state, concurrency=1)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)

    assert [d.digest for d in report.deleted] == [first.digest]
    assert report.manifests_deleted == 1 and report.tags_deleted == len(first.tags)
    deletes = [p.rsplit("/", 1)[1] for p in recorder.count("DELETE", "/manifests/")]
    assert all(d.digest not in deletes for d in rest), "nothing is sent after the failure"
    assert recorder.seen[-1] == ("GET", "/v2/team/app/tags/list"), "what went is counted against a fresh listing"
    left = set(pusher.tags("team/app"))
    assert not left & set(first.tags) and set(failing.tags) <= left
    for tag in sorted(left - set(failing.tags)):
        pull_whole(registry.url, "team/app", tag)

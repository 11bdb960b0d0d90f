"""Foundation acceptance: run-now, plan and dry-run against the real registry 2.8 in a real engine."""

from __future__ import annotations

from pathlib import Path

from tests.integration.cli import run, run_json, write_config
from tests.support.images import Pusher, pull_whole, sha256_digest
from tests.support.registry import RegistryContainer, free_port

# Build days of develop-000..007, pushed in this order: created order differs from push order.
DEVELOP_DAYS = [3, 7, 1, 8, 5, 2, 6, 4]


def seed(p: Pusher) -> tuple[dict[str, int], set[str]]:
    """3 stable + latest, 8 unstable builds. Returns the dropped builds' unique blobs and the expected tags."""
    base = Pusher.random_layer(64 * 1024)
    for i, version in enumerate(["1.0.0", "1.1.0", "1.2.0"]):
        img = p.push_image(
            "team/app", version, layers=[base, Pusher.random_layer(20_000 + i)], created=f"2026-0{i + 1}-01T00:00:00Z"
        )
    p.tag("team/app", "latest", img)
    dropped: dict[str, int] = {}
    newest = sorted(range(8), key=lambda n: DEVELOP_DAYS[n], reverse=True)[:3]
    for n, day in enumerate(DEVELOP_DAYS):
        img = p.push_image(
            "team/app",
            f"develop-{n:03d}",
            layers=[base, Pusher.random_layer(30_000 + n)],
            created=f"2026-11-{day:02d}T08:00:00.123456789Z",  # Go's nanoseconds, as real configs have
        )
        if n not in newest:
            dropped.update({d: size for d, size in img.blobs.items() if d != sha256_digest(base)})
            dropped[img.digest] = len(img.manifest)
    keep = {"1.0.0", "1.1.0", "1.2.0", "latest"} | {f"develop-{n:03d}" for n in newest}
    return dropped, keep


def test_run_now_keeps_stable_and_newest_unstable(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    dropped, expected = seed(pusher)
    config = write_config(tmp_path, registry)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    assert set(pusher.tags("team/app")) == expected
    for tag in sorted(expected):
        pull_whole(registry.url, "team/app", tag)
    after = registry.blob_store()
    gone = set(before) - set(after)
    assert set(dropped) <= gone, "every unique blob of a dropped image left the blob store"
    assert set(after) - set(before) == set()
    shrink = sum(before.values()) - sum(after.values())
    assert shrink >= sum(dropped.values())
    assert report["result"] == "success"
    assert report["tags_deleted"] == 5 and report["manifests_deleted"] == 5
    assert report["blobs_deleted"] == len(gone) > 0
    assert report["bytes_reclaimed"] == shrink > 0  # every swept blob was described in a scanned manifest
    assert report["blobs_unknown_size"] == 0
    collect = report["collect"]
    # distribution 2.8: untagged manifests go through the API, never through --delete-untagged
    assert collect["ran"] and collect["result"] == "success" and collect["flags"] == []
    assert report["untagged_manifests_deleted"] == 0
    assert collect["mode"] == "offline" and collect["downtime_s"] > 0 and report["registry_up"] is True
    assert {d["tag"] for d in report["decisions"] if d["action"] == "keep"} == expected


def test_plan_and_dry_run_change_nothing(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    _, expected = seed(pusher)
    config = write_config(tmp_path, registry)
    snapshot, started = registry.snapshot(), registry.started_at()

    code, plan, stderr = run_json(config, "plan")
    assert code == 0, stderr
    assert set(plan) == {"decisions", "deletions", "untags", "skipped", "violations", "summary"}
    assert {d["tag"] for d in plan["decisions"] if d["action"] == "keep"} == expected
    assert all(set(d) >= {"repository", "tag", "digest", "action", "reason"} for d in plan["decisions"])
    assert plan["summary"]["tags_to_delete"] == 5
    table = run(config, "plan")
    assert table.returncode == 0 and "develop-000" in table.stdout and "beyond keep_unstable=3" in table.stdout

    code, report, stderr = run_json(config, "run-now", "--dry-run")
    assert code == 0, stderr
    assert report["dry_run"] is True and report["tags_deleted"] == 0 and report["collect"]["ran"] is False
    assert report["plan"]["tags_to_delete"] == 5

    assert registry.snapshot() == snapshot
    assert registry.started_at() == started, "no garbage-collect (and so no restart) happened"


def test_deletes_disabled_stops_before_any_removal(make_registry: object, tmp_path: Path) -> None:
    reg: RegistryContainer = make_registry(delete_enabled=False)  # type: ignore[operator]
    with Pusher(reg.url) as p:
        seed(p)
    config = write_config(tmp_path, reg)
    snapshot, started = reg.snapshot(), reg.started_at()

    done = run(config, "run-now")

    assert done.returncode == 1
    assert "REGISTRY_STORAGE_DELETE_ENABLED" in done.stdout + done.stderr
    assert reg.snapshot() == snapshot
    assert reg.started_at() == started, "no garbage-collect ran"


def test_unreachable_registry_exits_1_and_collects_nothing(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, url=f"http://127.0.0.1:{free_port()}")
    snapshot, started = registry.snapshot(), registry.started_at()

    done = run(config, "run-now")

    assert done.returncode == 1
    assert "cannot reach the registry at http://127.0.0.1:" in done.stdout + done.stderr
    assert registry.snapshot() == snapshot and registry.started_at() == started


def test_invalid_config_exits_2_naming_the_key(registry: RegistryContainer, tmp_path: Path) -> None:
    config = write_config(tmp_path, registry, keep=-1)
    done = run(config, "run-now")
    assert done.returncode == 2
    assert "retention.rules[0].keep_unstable" in done.stderr


def test_local_executor_runs_the_registry_binary(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    """executor = "local": the same garbage-collect, run as a local process on the same storage."""
    dropped, expected = seed(pusher)
    registry_yml = tmp_path / "registry.yml"
    registry_yml.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {registry.storage_dir}\n"
        "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n"
    )
    config = write_config(
        tmp_path,
        registry,
        gc=f'executor = "local"\nmode = "online"\ncommand = ["/usr/bin/docker-registry"]\n'
        f'config_path = "{registry_yml}"\nrestart_command = ["/usr/bin/docker", "restart", "{registry.name}"]',
    )
    before = registry.blob_store()
    code, report, stderr = run_json(config, "run-now")
    assert code == 0, stderr
    assert set(before) - set(registry.blob_store()) >= set(dropped)
    assert report["bytes_reclaimed"] == sum(before.values()) - sum(registry.blob_store().values())
    assert report["collect"]["mode"] == "online" and report["registry_up"] is True
    for tag in sorted(expected):
        pull_whole(registry.url, "team/app", tag)

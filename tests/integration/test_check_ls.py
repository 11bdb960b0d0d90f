"""`gc-daemon check` and `gc-daemon ls` against the real registry and engine."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.cli import run, write_config
from tests.support.images import Pusher
from tests.support.registry import RegistryContainer


def test_check_passes_on_a_good_setup(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    pusher.push_image("team/app", "1.0.0")
    done = run(write_config(tmp_path, registry), "check")
    assert done.returncode == 0, done.stdout
    for item in ("config valid", "registry reachable", "credentials accepted", "deletes enabled",
                 "registry container found", "garbage-collect answers --help", "registry version",
                 "registry drains before a stop", "state dir writable"):  # fmt: skip
        assert f"[ok  ] {item}" in done.stdout, done.stdout
    assert "REGISTRY_HTTP_DRAINTIMEOUT=10s" in done.stdout
    assert "2.8.2" in done.stdout and "all checks passed" in done.stdout
    assert pusher.tags("team/app") == ["1.0.0"]


def test_check_names_the_failing_items(make_registry: object, tmp_path: Path) -> None:
    reg: RegistryContainer = make_registry(delete_enabled=False)  # type: ignore[operator]
    with Pusher(reg.url) as p:
        p.push_image("team/app", "1.0.0")
    config = write_config(tmp_path, reg)
    config.write_text(config.read_text().replace(f'container = "{reg.name}"', 'container = "no-such-registry"'))
    done = run(config, "check")
    assert done.returncode == 1
    assert "[FAIL] deletes enabled: the registry refuses deletes" in done.stdout
    assert "REGISTRY_STORAGE_DELETE_ENABLED=true" in done.stdout
    assert "[FAIL] registry container found: registry container 'no-such-registry' not found" in done.stdout
    assert "2 failed: deletes enabled, registry container found" in done.stdout


def test_check_flags_a_registry_that_dies_mid_write_on_a_stop(make_registry: object, tmp_path: Path) -> None:
    reg: RegistryContainer = make_registry(extra_env={"REGISTRY_HTTP_DRAINTIMEOUT": ""})  # type: ignore[operator]
    with Pusher(reg.url) as p:
        p.push_image("team/app", "1.0.0")
    done = run(write_config(tmp_path, reg), "check")
    assert done.returncode == 1
    assert "[FAIL] registry drains before a stop: REGISTRY_HTTP_DRAINTIMEOUT is not in the registry" in done.stdout
    assert "1 failed: registry drains before a stop" in done.stdout


def test_ls_lists_tags_with_class_rule_size_and_created(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    release = pusher.push_image("team/app", "1.0.0", created="2026-05-01T10:00:00Z", layers=[b"x" * 1000])
    pusher.push_image("team/app", "develop-7", created="1970-01-01T00:00:00Z")
    pusher.push_image("team/app", f"sha256-{release.digest[7:]}.sig", created=None)
    pusher.push_image("other/tool", "nightly")
    config = write_config(tmp_path, registry)

    done = run(config, "ls", "team/*", "--json")

    assert done.returncode == 0, done.stderr
    rows = {r["tag"]: r for r in json.loads(done.stdout)["tags"]}
    assert set(rows) == {"1.0.0", "develop-7", f"sha256-{release.digest[7:]}.sig"}
    assert rows["1.0.0"]["class"] == "stable" and rows["1.0.0"]["rule"] == 1
    assert rows["1.0.0"]["digest"] == release.digest and rows["1.0.0"]["created"].startswith("2026-05-01T10:00:00")
    assert rows["1.0.0"]["size"] == len(release.manifest) + sum(release.blobs.values())
    assert rows["develop-7"]["class"] == "unstable" and rows["develop-7"]["created"] is None
    assert rows[f"sha256-{release.digest[7:]}.sig"]["class"] == "signature"
    table = run(config, "ls")
    assert "other/tool" in table.stdout and "unmanaged" in table.stdout and "REPOSITORY" in table.stdout

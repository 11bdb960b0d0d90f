"""Multi-arch images on distribution 2.8: a kept index stays whole through run-now.

2.8's `garbage-collect --delete-untagged` deletes the untagged children of a *tagged* index
with their layers; until the safe 2.8 path exists, gc-daemon does not pass the flag there
when a kept index is in the registry, and says so in the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import run_json, write_config
from tests.support.images import Pusher, pull_whole
from tests.support.registry import RegistryContainer


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_kept_index_and_children_pull_whole_after_run_now(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, media: str
) -> None:
    image_media = "oci" if media == "oci" else "docker"
    amd = pusher.push_image("team/multi", None, media=image_media, platform=("linux", "amd64"))  # type: ignore[arg-type]
    arm = pusher.push_image("team/multi", None, media=image_media, platform=("linux", "arm64"))  # type: ignore[arg-type]
    index = pusher.push_index("team/multi", "1.0.0", [amd, arm], media=media)  # type: ignore[arg-type]
    old = pusher.push_image("team/multi", "develop-1", created="2026-01-01T00:00:00Z")
    pusher.push_image("team/multi", "develop-2", created="2026-02-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    assert report["collect"]["flags"] == []
    assert any("--delete-untagged not passed" in w for w in report["warnings"])
    assert pull_whole(registry.url, "team/multi", "1.0.0").digest == index.digest
    for child in (amd, arm):
        pull_whole(registry.url, "team/multi", child.digest)
    pull_whole(registry.url, "team/multi", "develop-2")
    assert sorted(pusher.tags("team/multi")) == ["1.0.0", "develop-2"]
    gone = set(before) - set(registry.blob_store())
    assert {old.digest, *old.blobs} <= gone

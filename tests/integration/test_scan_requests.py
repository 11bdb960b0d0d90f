"""What a scan asks of the real registry 2.8, counted on the wire: each digest once, nothing for a known one.

A counting transport under the RegistryClient records every request (method and path). The registry holds
images, an OCI index over two children, two manifests sharing one config, two tags on one digest and one
digest in two repositories.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gc_daemon.model import Inventory
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import RegistryClient
from gc_daemon.registry.scan import Scanner
from gc_daemon.registry.storage import StorageInventory
from tests.support.images import Pusher
from tests.support.registry import RegistryContainer

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Recorder(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.seen.append((request.method, request.url.path))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def count(self, method: str, part: str) -> list[str]:
        return [path for m, path in self.seen if m == method and part in path]


def scan(reg: RegistryContainer, cache_dir: Path | None, storage: Path | None = None) -> tuple[Inventory, Recorder]:
    recorder = Recorder()
    with RegistryClient(reg.url, transport=recorder) as client:
        cache = DigestCache.open(cache_dir) if cache_dir is not None else None
        try:
            scanner = Scanner(
                client,
                concurrency=4,
                cache=cache,
                storage=StorageInventory(storage) if storage is not None else None,
            )
            inventory = scanner.scan(NOW)
        finally:
            if cache is not None:
                cache.close()
    return inventory, recorder


def seed(p: Pusher) -> int:
    """Returns the number of tags pushed."""
    base = Pusher.random_layer(1024)
    for n in range(4):
        p.push_image("team/app", f"develop-{n}", layers=[base, Pusher.random_layer(512)])
    release = p.push_image("team/app", "1.0.0", layers=[base])
    p.tag("team/app", "latest", release)  # two tags, one digest
    amd = p.push_image("team/multi", None, layers=[base], platform=("linux", "amd64"))
    arm = p.push_image("team/multi", None, layers=[base], platform=("linux", "arm64"))
    p.push_index("team/multi", "2.0.0", [amd, arm])
    shared = [Pusher.random_layer(700)]
    for n in range(2):  # same config and layers, different annotations: two manifests, one config
        p.push_image(
            "team/multi", f"annotated-{n}", layers=shared, created="2026-05-01T00:00:00Z", media="oci",
            annotations={"n": str(n)},
        )  # fmt: skip
    copy = p.push_image("team/other", "develop-0", layers=[base], created="2026-04-01T00:00:00Z")
    p.tag("team/other", "1.0.0", copy)
    mirrored = p.push_image("team/mirror", "develop-0", layers=[base], created="2026-04-01T00:00:00Z")
    assert mirrored.digest == copy.digest  # one digest in two repositories
    return 6 + 3 + 2 + 1


def assert_same(a: Inventory, b: Inventory) -> None:
    left = {r.name: (r.error, dict(r.tags), dict(r.images)) for r in a.repositories}
    right = {r.name: (r.error, dict(r.tags), dict(r.images)) for r in b.repositories}
    assert left == right


def test_cold_scan_reads_each_digest_once(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    tags = seed(pusher)
    inventory, rec = scan(registry, tmp_path / "state")

    assert all(r.error is None for r in inventory.repositories)
    assert sum(len(r.tags) for r in inventory.repositories) == tags
    by_tag = [p for p in rec.count("GET", "/manifests/") if "/manifests/sha256:" not in p]
    by_digest = [p for p in rec.count("GET", "/manifests/sha256:")]
    configs = rec.count("GET", "/blobs/")
    assert len(by_tag) == len(set(by_tag)) == tags, "one GET per tag of a repository never read before"
    assert len(by_digest) == len(set(by_digest)) == 2, "the index's two children, each once"
    assert len({p.rsplit("/", 1)[1] for p in configs}) == len(configs), "one config read per distinct config"
    distinct_configs = {
        b.digest for r in inventory.repositories for i in r.images.values() for b in i.blobs if b.kind == "config"
    }
    assert len(configs) == len(distinct_configs)
    assert rec.count("HEAD", "/") == []


def test_warm_scan_issues_one_head_per_tag_and_no_get(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    tags = seed(pusher)
    cold, _ = scan(registry, tmp_path / "state")
    warm, rec = scan(registry, tmp_path / "state")

    assert_same(cold, warm)
    assert rec.count("GET", "/manifests/") == [] and rec.count("GET", "/blobs/") == []
    heads = rec.count("HEAD", "/manifests/")
    assert len(heads) == len(set(heads)) == tags
    assert len(rec.count("GET", "/tags/list")) == len(warm.repositories)
    assert len(rec.seen) == tags + len(warm.repositories) + 1  # + the catalog


def test_changed_tags_cost_one_get_per_new_digest(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    seed(pusher)
    scan(registry, tmp_path / "state")
    moved = pusher.push_image("team/app", "develop-0", layers=[Pusher.random_layer(300)])
    pusher.tag("team/app", "develop-new", moved)  # a new tag on the new digest
    old = pusher.digest_of("team/app", "1.0.0")
    assert old is not None
    pusher.push_manifest(
        "team/app",
        "promoted",
        pusher.client.get(
            "/v2/team/app/manifests/1.0.0", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        ).content,
        "application/vnd.docker.distribution.manifest.v2+json",
    )  # fmt: skip  (a retag of a known digest)

    inventory, rec = scan(registry, tmp_path / "state")

    app = next(r for r in inventory.repositories if r.name == "team/app")
    assert app.tags["develop-0"] == app.tags["develop-new"] == moved.digest and app.tags["promoted"] == old
    assert rec.count("GET", "/manifests/") == [f"/v2/team/app/manifests/{moved.digest}"]
    assert rec.count("GET", "/blobs/") == [f"/v2/team/app/blobs/{moved.config_digest}"]
    assert len(rec.count("HEAD", "/manifests/")) == sum(len(r.tags) for r in inventory.repositories)


def test_without_a_cache_each_digest_is_still_read_once_per_run(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    with_cache, _ = scan(registry, tmp_path / "state")
    inventory, rec = scan(registry, None)
    assert_same(with_cache, inventory)
    by_digest = rec.count("GET", "/manifests/sha256:")
    configs = rec.count("GET", "/blobs/")
    assert len(by_digest) == len(set(by_digest)) and len(configs) == len(set(configs))
    assert not (tmp_path / "none").exists()


def test_storage_inventory_needs_no_request_per_tag(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    api, _ = scan(registry, None)
    inventory, rec = scan(registry, tmp_path / "state", storage=registry.storage_dir)

    assert_same(api, inventory)
    assert rec.seen == [("GET", "/v2/_catalog")]
    for repo in inventory.repositories:
        assert set(repo.pushed) == set(repo.tags)
        for when in repo.pushed.values():
            assert abs(datetime.now(UTC) - when) < timedelta(minutes=10)


def test_damaged_storage_falls_back_to_the_api(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    """A broken tag link or a damaged blob on disk: that tag or digest is asked of the API instead."""
    seed(pusher)
    api, _ = scan(registry, None)
    copy = tmp_path / "storage-copy"
    shutil.copytree(registry.storage_dir, copy, symlinks=True)
    v2 = copy / "docker/registry/v2"
    (v2 / "repositories/team/app/_manifests/tags/develop-1/current/link").write_text("garbage")
    release = next(r for r in api.repositories if r.name == "team/app").tags["1.0.0"]
    data = v2 / "blobs/sha256" / release[7:9] / release[7:] / "data"
    data.write_bytes(data.read_bytes() + b" ")

    inventory, rec = scan(registry, None, storage=copy)

    assert_same(api, inventory)
    assert rec.count("HEAD", "/manifests/") == ["/v2/team/app/manifests/develop-1"]
    assert f"/v2/team/app/manifests/{release}" in rec.count("GET", "/manifests/")


@pytest.mark.parametrize("cached", [False, True])
def test_a_repository_with_a_tag_that_cannot_be_read_is_skipped_whole(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, cached: bool
) -> None:
    seed(pusher)
    if cached:
        scan(registry, tmp_path / "state")
    (registry.storage_dir / "docker/registry/v2/repositories/team/app/_manifests/tags/ghost/current").mkdir(
        parents=True
    )  # a tag directory without a link: listed, but HEAD/GET answer 404

    inventory, _ = scan(registry, tmp_path / "state")

    app = next(r for r in inventory.repositories if r.name == "team/app")
    assert app.error is not None and app.tags == {} and app.images == {}
    assert all(r.error is None for r in inventory.repositories if r.name != "team/app")

"""The concurrent scan over httpx.MockTransport: the error contract, the digest cache, the storage inventory."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gc_daemon.errors import RegistryAuthError, RegistryProtocolError, RegistryServerError, RunAborted
from gc_daemon.model import MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_MANIFEST, Image, Repository
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import RegistryClient, sha256_digest
from gc_daemon.registry.scan import Scanner
from gc_daemon.registry.storage import StorageInventory
from gc_daemon.retention import newest_first

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def config(n: int) -> bytes:
    return json.dumps({"created": f"2026-01-{n + 1:02d}T00:00:00Z"}).encode()


def manifest(n: int) -> bytes:
    cfg = config(n)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": MEDIA_DOCKER_CONFIG, "size": len(cfg), "digest": sha256_digest(cfg)},
            "layers": [{"mediaType": "x", "size": 10, "digest": "sha256:" + "a" * 64}],
        }
    ).encode()


class FakeRegistry:
    """repos: name -> tag -> image number. ``fail``: path substring -> status."""

    def __init__(self, repos: dict[str, dict[str, int]], fail: dict[str, int] | None = None) -> None:
        self.repos = repos
        self.fail = fail or {}
        self.seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.blobs = {sha256_digest(config(n)): config(n) for tags in repos.values() for n in tags.values()}
        self.manifests = {sha256_digest(manifest(n)): manifest(n) for tags in repos.values() for n in tags.values()}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self._lock:
            self.seen[(request.method, path)] += 1
        for part, status in self.fail.items():
            if part in path:
                return httpx.Response(status, json={"errors": [{"code": "X", "message": "injected"}]})
        if path == "/v2/_catalog":
            return httpx.Response(200, json={"repositories": sorted(self.repos)})
        repo, _, rest = path.removeprefix("/v2/").partition("/")
        repo = next(r for r in self.repos if path.startswith(f"/v2/{r}/"))
        rest = path.removeprefix(f"/v2/{repo}/")
        if rest == "tags/list":
            return httpx.Response(200, json={"name": repo, "tags": list(self.repos[repo])})
        kind, _, ref = rest.partition("/")
        if kind == "blobs":
            return httpx.Response(200, content=self.blobs[ref])
        body = self.manifests.get(ref) or manifest(self.repos[repo][ref])
        headers = {"Docker-Content-Digest": sha256_digest(body), "Content-Type": MEDIA_DOCKER_MANIFEST}
        return httpx.Response(200, content=b"" if request.method == "HEAD" else body, headers=headers)

    def count(self, method: str, part: str = "") -> int:
        return sum(n for (m, p), n in self.seen.items() if m == method and part in p)


def scanner(fake: FakeRegistry, **kw: object) -> Scanner:
    client = RegistryClient("http://reg.test", transport=httpx.MockTransport(fake), retries=0, sleep=lambda s: None)
    return Scanner(client, concurrency=4, **kw)  # type: ignore[arg-type]


REPOS = {f"team/r{r}": {f"t{t}": r * 10 + t for t in range(5)} | {"same": r * 10} for r in range(6)}


def test_a_repository_error_marks_that_repository_only() -> None:
    fake = FakeRegistry(REPOS, fail={"/team/r2/manifests/t3": 404})
    inventory = scanner(fake).scan(NOW)
    errors = {r.name: r.error for r in inventory.repositories}
    assert errors.pop("team/r2") is not None
    assert set(errors.values()) == {None}
    assert [r.name for r in inventory.repositories] == sorted(REPOS)


@pytest.mark.parametrize("status", [500, 401])
def test_a_registry_error_stops_the_scan(status: int) -> None:
    fake = FakeRegistry(REPOS, fail={"/team/r4/manifests/t1": status})
    with pytest.raises(RegistryServerError if status == 500 else RegistryAuthError):
        scanner(fake).scan(NOW)


def test_a_catalog_error_stops_the_scan() -> None:
    with pytest.raises(RegistryProtocolError):
        scanner(FakeRegistry(REPOS, fail={"_catalog": 400})).scan(NOW)


def test_a_stop_request_aborts_the_scan() -> None:
    with pytest.raises(RunAborted):
        scanner(FakeRegistry(REPOS), should_stop=lambda: True).scan(NOW)


def test_each_digest_and_config_is_read_once_and_warm_runs_only_head(tmp_path: Path) -> None:
    fake = FakeRegistry(REPOS)
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        cold = scanner(fake, cache=cache).scan(NOW)
    assert fake.count("GET", "/blobs/") == len(fake.blobs) == 30
    assert fake.count("GET", "/manifests/sha256:") == 0 and fake.count("HEAD") == 0
    image = cold.repositories[0].images[cold.repositories[0].tags["t1"]]
    assert image.created == datetime(2026, 1, 2, tzinfo=UTC) and image.created_source == "config created"

    fake.seen.clear()
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        warm = scanner(fake, cache=cache).scan(NOW)
    assert warm == cold
    assert fake.count("GET", "/manifests/") == 0 and fake.count("GET", "/blobs/") == 0
    assert fake.count("HEAD", "/manifests/") == 36


def test_a_damaged_cache_entry_is_read_again(tmp_path: Path) -> None:
    fake = FakeRegistry({"a": {"t": 1}})
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        scanner(fake, cache=cache).scan(NOW)
    import sqlite3

    with sqlite3.connect(tmp_path / "digests.sqlite") as conn:
        conn.execute("UPDATE manifests SET body = ?", (b"{}",))
    fake.seen.clear()
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        inventory = scanner(fake, cache=cache).scan(NOW)
    assert inventory.repositories[0].error is None
    assert fake.count("GET", "/manifests/sha256:") == 1


def test_an_unwritable_state_dir_means_no_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        assert DigestCache.open(blocker / "state") is None
    assert len(caplog.records) == 1 and "scanning without it" in caplog.text


def test_cache_forgets_what_no_repository_references(tmp_path: Path) -> None:
    fake = FakeRegistry({"a": {"t": 1, "u": 2}})
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        scanner(fake, cache=cache).scan(NOW)
    del fake.repos["a"]["u"]
    with DigestCache.open(tmp_path) as cache:  # type: ignore[union-attr]
        scanner(fake, cache=cache).scan(NOW)
        assert cache.tags("a") == {"t": sha256_digest(manifest(1))}
        assert cache.manifest(sha256_digest(manifest(2))) is None
        assert cache.config(sha256_digest(config(2))) is None
        assert cache.manifest(sha256_digest(manifest(1))) is not None


def write_storage(root: Path, repo: str, tags: dict[str, bytes], pushed: dict[str, float]) -> None:
    v2 = root / "docker/registry/v2"
    for tag, body in tags.items():
        digest = sha256_digest(body)
        link = v2 / "repositories" / repo / "_manifests/tags" / tag / "current/link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
        os.utime(link, (pushed[tag], pushed[tag]))
    for n in range(3):
        for data in (manifest(n), config(n)):
            hexdigest = sha256_digest(data)[7:]
            blob = v2 / "blobs/sha256" / hexdigest[:2] / hexdigest / "data"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)


def test_storage_inventory_reads_links_push_times_and_verified_blobs(tmp_path: Path) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    write_storage(tmp_path, "team/a", {"x": manifest(0), "y": manifest(1)}, {"x": t0 + 60, "y": t0})
    (tmp_path / "docker/registry/v2/repositories/team/a/_manifests/tags/bad/current").mkdir(parents=True)
    storage = StorageInventory(tmp_path)
    assert storage.available() and storage.has_repository("team/a") and not storage.has_repository("team/b")
    tags = storage.tags("team/a")
    assert tags["x"].digest == sha256_digest(manifest(0))
    assert tags["x"].pushed == datetime(2026, 3, 1, 0, 1, tzinfo=UTC)
    assert tags["bad"].digest is None
    assert storage.blob(sha256_digest(config(1)), 1000) == config(1)
    assert storage.blob(sha256_digest(b"absent"), 1000) is None
    hexdigest = sha256_digest(config(2))[7:]
    (tmp_path / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data").write_bytes(b"tampered")
    assert storage.blob(sha256_digest(config(2)), 1000) is None


def test_scan_with_storage_asks_the_api_only_for_what_disk_cannot_tell(tmp_path: Path) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    write_storage(tmp_path, "team/a", {"x": manifest(0), "y": manifest(1)}, {"x": t0, "y": t0 + 1})
    (tmp_path / "docker/registry/v2/repositories/team/a/_manifests/tags/z/current/link").parent.mkdir(parents=True)
    (tmp_path / "docker/registry/v2/repositories/team/a/_manifests/tags/z/current/link").write_text("junk")
    fake = FakeRegistry({"team/a": {"x": 0, "y": 1, "z": 5}})
    inventory = scanner(fake, storage=StorageInventory(tmp_path)).scan(NOW)
    repo = inventory.repositories[0]
    assert repo.error is None and set(repo.tags) == {"x", "y", "z"}
    assert fake.count("HEAD") == 1 and fake.count("GET", "/tags/list") == 0
    assert fake.count("GET", "/manifests/") == 1 and fake.count("GET", "/blobs/") == 1  # z's, absent on disk
    assert repo.pushed["y"] - repo.pushed["x"] == timedelta(seconds=1)


def test_push_time_orders_unstable_tags_first() -> None:
    built = {"old": datetime(2026, 1, 2, tzinfo=UTC), "new": datetime(2026, 1, 1, tzinfo=UTC)}
    images = {f"sha256:{t}": Image(f"sha256:{t}", MEDIA_DOCKER_MANIFEST, 1, created=c) for t, c in built.items()}
    repo = Repository("a", {t: f"sha256:{t}" for t in built}, images)
    assert newest_first(repo, list(built)) == ["old", "new"]
    pushed = {"old": datetime(2026, 2, 1, tzinfo=UTC), "new": datetime(2026, 2, 2, tzinfo=UTC)}
    repo = Repository("a", repo.tags, images, pushed=pushed)
    assert newest_first(repo, list(built)) == ["new", "old"]

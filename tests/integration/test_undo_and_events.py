"""Push/pull history from the registry's notifications, and the undo window between removal and collect."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.cli import run, run_json, write_config
from tests.integration.daemon_proc import running_daemon, with_metrics_port
from tests.support.images import MANIFEST_ACCEPT, Pusher, pull_whole
from tests.support.registry import RegistryContainer

SECRET = "events-shared-secret-42"
NO_RATIO = "[retention]\nmax_delete_ratio = 1.0"
Factory = Callable[..., RegistryContainer]

REGISTRY_YML = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:5000
notifications:
  endpoints:
    - name: gc-daemon
      url: http://127.0.0.1:{port}/events
      headers:
        Authorization: [Bearer {secret}]
      timeout: 2s
      threshold: 3
      backoff: 1s
"""


def notifying_registry(
    make_registry: Factory, tmp_path: Path, *, keep: int, rule: str = ""
) -> tuple[RegistryContainer, Path, int]:
    """A registry whose config.yml sends notifications to the daemon's /events, and the daemon's config."""
    storage = tmp_path / "storage"
    storage.mkdir()
    placeholder = RegistryContainer("x", "x", 0, "http://127.0.0.1:1", storage, None)  # type: ignore[arg-type]
    config = write_config(tmp_path, placeholder, keep=keep)
    port = with_metrics_port(config)
    (storage / "config.yml").write_text(REGISTRY_YML.format(port=port, secret=SECRET))
    registry = make_registry(storage_dir=storage, config_in_storage="config.yml")
    config.write_text(
        config.read_text()
        .replace("http://127.0.0.1:1", registry.url)
        .replace('container = "x"', f'container = "{registry.name}"\nconfig_path = "/var/lib/registry/config.yml"')
        .replace(f"keep_unstable = {keep}", f"keep_unstable = {keep}\n{rule}")
        + f'\n[events]\nenabled = true\nsecret = "{SECRET}"\n[retention]\nmax_delete_ratio = 1.0\n'
    )
    return registry, config, port


def rows(db: Path, table: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_pushes_and_pulls_are_recorded_and_bad_posts_refused(make_registry: Factory, tmp_path: Path) -> None:
    registry, config, port = notifying_registry(make_registry, tmp_path, keep=3)
    db = tmp_path / "state" / "events.sqlite"
    with running_daemon(config, tmp_path, port=port) as daemon:
        url = f"{daemon.url}/events"
        target = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "repository": "evil/x",
                  "digest": "sha256:" + "e" * 64, "tag": "t"}  # fmt: skip
        envelope = {"events": [{"id": "1", "timestamp": "2026-12-01T10:00:00Z", "action": "push", "target": target}]}
        body = json.dumps(envelope)
        ctype = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
        assert httpx.post(url, content=body, headers=ctype).status_code == 401
        assert httpx.post(url, content=body, headers={**ctype, "Authorization": "Bearer wrong"}).status_code == 401
        auth = {**ctype, "Authorization": f"Bearer {SECRET}"}
        assert httpx.post(url, content=b"{not json", headers=auth).status_code == 400
        assert httpx.post(url, content=b'{"events": [{"action": "push"}]}', headers=auth).status_code == 400
        time.sleep(1)
        assert rows(db, "pushes") == [] and rows(db, "pulls") == []

        with Pusher(registry.url) as p:
            old = p.push_image("team/app", "develop-1", created="2026-01-01T00:00:00Z")
            new = p.push_image("team/app", "develop-2", created="2026-02-01T00:00:00Z")
        httpx.get(f"{registry.url}/v2/team/app/manifests/develop-1", headers={"Accept": MANIFEST_ACCEPT})
        deadline = time.monotonic() + 20
        while len(rows(db, "pushes")) < 2 or len(rows(db, "pulls")) < 1:
            assert time.monotonic() < deadline, (rows(db, "pushes"), rows(db, "pulls"), daemon.output())
            time.sleep(0.2)
        metrics = daemon.metrics()
    pushes = {(r[0], r[1]): (r[2], r[3]) for r in rows(db, "pushes")}
    assert pushes[("team/app", "develop-1")][0] == old.digest and pushes[("team/app", "develop-2")][0] == new.digest
    assert ("evil/x", "t") not in pushes
    pulls = {(r[0], r[1]): r[2] for r in rows(db, "pulls")}
    assert ("team/app", old.digest) in pulls and ("team/app", new.digest) not in pulls
    assert metrics["gc_daemon_events_received_total"] >= 3
    assert metrics["gc_daemon_events_dropped_total"] == 0


def test_restore_before_the_collect_puts_tags_back_whole(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    old = "2026-01-01T00:00:00Z"
    amd = pusher.push_image("team/app", None, platform=("linux", "amd64"), created=old)
    arm = pusher.push_image("team/app", None, platform=("linux", "arm64"), created=old)
    index = pusher.push_index("team/app", "develop-1", [amd, arm])
    single = pusher.push_image("team/app", "develop-2", created="2026-01-02T00:00:00Z")
    pusher.tag("team/app", "develop-2b", single)
    pusher.push_image("team/app", "develop-3", created="2026-12-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now", "--no-collect")
    assert code == 0, stderr
    assert report["collect"]["ran"] is False and report["phases"] == ["remove"]
    assert pusher.tags("team/app") == ["develop-3"]
    assert registry.blob_store() == before, "nothing swept yet: the undo window is open"
    history = run(config, "history", "--json")
    assert json.loads(history.stdout)[-1]["run_id"] == report["run_id"]

    done = run(config, "restore", report["run_id"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 restored, 0 already in place, 0 not restored" in done.stdout
    assert sorted(pusher.tags("team/app")) == ["develop-1", "develop-2", "develop-2b", "develop-3"]
    assert pull_whole(registry.url, "team/app", "develop-1") == index
    assert pull_whole(registry.url, "team/app", "develop-2") == single
    assert pull_whole(registry.url, "team/app", "develop-2b").digest == single.digest
    again = run(config, "restore", report["run_id"], "--tag", "team/app:develop-2")
    assert again.returncode == 0 and "already in place team/app:develop-2" in again.stdout


def test_restore_after_the_collect_is_refused_per_tag(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    shared = Pusher.random_layer(5000)
    gone = pusher.push_image(
        "team/app", "develop-1", layers=[shared, Pusher.random_layer()], created="2026-01-01T00:00:00Z"
    )
    pusher.push_image("team/app", "develop-2", layers=[shared], created="2026-12-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    code, removal, stderr = run_json(config, "run-now", "--no-collect")
    assert code == 0, stderr
    code, collect, stderr = run_json(config, "run-now", "--collect-only")
    assert code == 0, stderr
    assert collect["phases"] == ["collect"] and collect["tags_deleted"] == 0 and collect["blobs_deleted"] > 0
    snapshot = registry.snapshot()

    done = run(config, "restore", removal["run_id"])

    assert done.returncode == 1
    assert "NOT restored team/app:develop-1" in done.stdout and "swept by garbage-collect" in done.stdout
    assert pusher.tags("team/app") == ["develop-2"]
    assert registry.snapshot() == snapshot, "nothing partial written"
    assert gone.digest not in registry.blob_store()


def test_keep_pulled_within_keeps_an_old_build_pulled_today(make_registry: Factory, tmp_path: Path) -> None:
    registry, config, port = notifying_registry(make_registry, tmp_path, keep=1, rule='keep_pulled_within = "7d"')
    db = tmp_path / "state" / "events.sqlite"
    with running_daemon(config, tmp_path, port=port):
        with Pusher(registry.url) as p:
            p.push_image("team/app", "develop-1", created="2026-01-01T00:00:00Z")
            pulled = p.push_image("team/app", "develop-2", created="2026-02-01T00:00:00Z")
            p.push_image("team/app", "develop-3", created="2026-03-01T00:00:00Z")
        pull_whole(registry.url, "team/app", "develop-2")  # someone still uses this old build
        deadline = time.monotonic() + 20
        while not any(r[1] == pulled.digest for r in rows(db, "pulls")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        _, plan, _ = run_json(config, "plan")
        done = run(config, "run-now")
    reasons = {d["tag"]: d["reason"] for d in plan["decisions"]}
    assert "pulled 20" in reasons["develop-2"] and "within keep_pulled_within=7d" in reasons["develop-2"]
    assert "pushed, registry event" in reasons["develop-3"]
    assert done.returncode == 0, done.stderr
    with Pusher(registry.url) as p:
        assert p.tags("team/app") == ["develop-2", "develop-3"], done.stdout + done.stderr
    assert "Removed team/app:develop-1" in done.stdout
    pull_whole(registry.url, "team/app", "develop-2")

"""Garbage collection that cannot corrupt, reports exactly, and always leaves the registry serving.

All against the real registry 2.8.2 and its real garbage-collect, in a real Docker engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import docker
import httpx
import pytest

from tests.integration.cli import GC_DAEMON, run, run_json, write_config
from tests.support.images import Pusher, pull_whole
from tests.support.registry import RegistryContainer, free_port

NO_RATIO = "[retention]\nmax_delete_ratio = 1.0"


def serving(reg: RegistryContainer) -> bool:
    try:
        return httpx.get(f"{reg.url}/v2/", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def seed_mixed(p: Pusher) -> tuple[bytes, list[object]]:
    """Shared base layers, unique layers, an index, untagged garbage and an orphan blob."""
    base = Pusher.random_layer(40_000)
    kept = [
        p.push_image("team/app", "1.0.0", layers=[base, Pusher.random_layer(10_000)], created="2026-01-01T00:00:00Z")
    ]
    for n in range(6):
        p.push_image(
            "team/app",
            f"develop-{n}",
            layers=[base, Pusher.random_layer(20_000 + n)],
            created=f"2026-02-0{n + 1}T00:00:00Z",
        )
    amd = p.push_image("team/multi", None, layers=[base, Pusher.random_layer(5_000)], platform=("linux", "amd64"))
    arm = p.push_image("team/multi", None, layers=[Pusher.random_layer(6_000)], platform=("linux", "arm64"))
    kept.append(p.push_index("team/multi", "2.0.0", [amd, arm]))
    old_amd = p.push_image("team/multi", None, layers=[Pusher.random_layer(7_000)], platform=("linux", "amd64"))
    p.push_index("team/multi", "develop-1", [old_amd], media="oci")
    p.push_image("team/multi", "develop-2", created="2026-03-01T00:00:00Z")
    p.push_image("team/app", "moving", created="2026-01-01T00:00:00Z", layers=[Pusher.random_layer(9_000)])
    p.push_image("team/app", "moving", created="2026-03-01T00:00:00Z")  # the first `moving` is now untagged
    p.push_blob("team/app", Pusher.random_layer(11_111))  # uploaded, never referenced by any manifest
    return base, kept


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_reported_bytes_equal_the_measured_shrink(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, mode: str
) -> None:
    _, kept = seed_mixed(pusher)
    config = write_config(tmp_path, registry, keep=2, gc=f'mode = "{mode}"', extra=NO_RATIO)
    before = registry.blob_store()

    code, report, stderr = run_json(config, "run-now")

    assert code == 0, stderr
    after = registry.blob_store()
    left = set(before) - set(after)
    shrink = sum(before.values()) - sum(after.values())
    print(
        f"\n{mode}: {len(left)} blobs left the store, {shrink} bytes; reported {report['blobs_deleted']} blobs, "
        f"{report['bytes_reclaimed']} bytes, {report['blobs_unknown_size']} unknown, {report['blobs_by_kind']}"
    )
    assert report["blobs_deleted"] == len(left)
    assert abs(report["bytes_reclaimed"] - shrink) <= shrink * 0.01
    assert report["blobs_unknown_size"] == 0
    assert report["blobs_by_kind"]["layer"] == report["layers_deleted"] > 0
    assert {"config", "manifest"} <= set(report["blobs_by_kind"])
    assert report["collect"]["mode"] == mode and report["registry_up"] is True
    for image in kept:
        pull_whole(registry.url, image.repository, image.digest)  # type: ignore[attr-defined]
    pull_whole(registry.url, "team/multi", "2.0.0")


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_repush_of_a_collected_image_by_a_layer_skipping_client_pulls_whole(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, mode: str
) -> None:
    """After the collect the registry must not claim swept blobs exist (stale blob-descriptor cache)."""
    layers = [Pusher.random_layer(30_000), Pusher.random_layer(31_000)]
    dropped = pusher.push_image("team/app", "develop-1", layers=layers, created="2026-01-01T00:00:00Z")
    pusher.push_image("team/app", "develop-2", created="2026-02-01T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, gc=f'mode = "{mode}"', extra=NO_RATIO)
    code, _, stderr = run_json(config, "run-now")
    assert code == 0, stderr
    assert not set(dropped.blobs) & set(registry.blob_store()), "the dropped image's blobs were swept"

    again = pusher.push_image(
        "team/app", "develop-1", layers=layers, created="2026-01-01T00:00:00Z", skip_existing=True
    )

    assert again.digest == dropped.digest
    assert pull_whole(registry.url, "team/app", "develop-1") == again


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_failed_collect_exits_1_counts_a_failure_and_leaves_the_registry_serving(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, mode: str
) -> None:
    pusher.push_image("team/app", "1.0.0")
    config = write_config(tmp_path, registry, gc=f'mode = "{mode}"\nconfig_path = "/etc/docker/registry/nope.yml"')
    metrics = tmp_path / "metrics.prom"

    done = run(config, "run-now", "--textfile", str(metrics))

    assert done.returncode == 1
    assert "garbage-collect" in done.stdout and "failed" in done.stdout
    text = metrics.read_text()
    assert f'gc_daemon_gc_runs_total{{mode="{mode}",result="failure"}} 1.0' in text
    assert 'gc_daemon_runs_total{result="failure",trigger="manual"} 1.0' in text
    assert serving(registry) and registry.container().status == "running"
    pull_whole(registry.url, "team/app", "1.0.0")


def test_a_collect_failing_on_an_empty_link_says_what_it_is(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """What a push cut mid-write by a registry stopped without http.draintimeout leaves: a revision whose link
    file is empty. 2.8's garbage-collect then fails in its mark phase; the error must tell the operator why."""
    for n in range(4):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-0{n + 1}T00:00:00Z")
    revisions = registry.storage_dir / "docker/registry/v2/repositories/team/app/_manifests/revisions/sha256"
    cut = revisions / ("ab" * 32)
    cut.mkdir()
    (cut / "link").write_bytes(b"")
    config = write_config(tmp_path, registry, keep=2, extra=NO_RATIO)
    before = registry.blob_store()

    done = run(config, "run-now")

    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "invalid checksum digest format" in out
    assert "-name link -size -71c" in out and "http.draintimeout" in out
    assert registry.blob_store() == before, "the mark failed: nothing swept"
    assert serving(registry) and sorted(pusher.tags("team/app")) == ["develop-2", "develop-3"]
    pull_whole(registry.url, "team/app", "develop-3")


def test_offline_collect_with_a_pusher_racing_it_loses_no_image(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    """A CI pusher keeps pushing (new layers, and layers shared with images being dropped) during the run."""
    shared = [Pusher.random_layer(20_000) for _ in range(4)]
    for n in range(12):
        pusher.push_image("team/app", f"develop-{n}", layers=[shared[n % 4], Pusher.random_layer(8_000)],
                          created=f"2026-01-{n + 1:02d}T00:00:00Z")  # fmt: skip
    config = write_config(tmp_path, registry, keep=2, extra=NO_RATIO)
    accepted: list[tuple[str, str]] = []
    refused: list[str] = []
    stop = threading.Event()

    def ci() -> None:
        n = 0
        with Pusher(registry.url) as p:
            while not stop.is_set():
                n += 1
                tag = f"race-{n}"
                try:
                    image = p.push_image("ci/race", tag, layers=[shared[n % 4], Pusher.random_layer(4_000)],
                                         skip_existing=True)  # fmt: skip
                    accepted.append((tag, image.digest))
                except (httpx.TransportError, AssertionError) as exc:
                    refused.append(f"{tag}: {type(exc).__name__}")
                    time.sleep(0.05)

    # The pusher's repository (no rule matches it: nothing in it is planned) links the shared layers, so
    # its client skips uploading them when the registry says they exist.
    pusher.push_image("ci/race", "seed", layers=shared)
    worker = threading.Thread(target=ci)
    worker.start()
    try:
        time.sleep(0.5)
        code, report, stderr = run_json(config, "run-now")
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert code == 0, stderr
    print(f"\npushes accepted: {len(accepted)}, refused while the registry was down: {len(refused)}; "
          f"registry down {report['collect']['downtime_s']}s")  # fmt: skip
    assert report["collect"]["mode"] == "offline" and report["blobs_deleted"] > 0
    assert len(accepted) > 0
    for tag, digest in accepted:
        assert pull_whole(registry.url, "ci/race", tag).digest == digest


def test_registry_left_stopped_by_a_killed_gc_daemon_is_started_again(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    for n in range(40):  # enough garbage that the one-off collect takes a moment
        pusher.push_image("team/app", f"develop-{n}", layers=[Pusher.random_layer(2_000) for _ in range(5)],
                          created=f"2026-01-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")  # fmt: skip
    port = free_port()
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    config.write_text(
        config.read_text().replace("[metrics]\nport = 0", f'[metrics]\naddress = "127.0.0.1"\nport = {port}')
    )
    proc = subprocess.Popen([GC_DAEMON, "--config", str(config), "run-now"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    container = registry.container()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            break
        assert proc.poll() is None, "the run ended before the registry was stopped"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    container.reload()
    assert container.status != "running", "killed while the registry was stopped"
    marker = json.loads((tmp_path / "state" / "registry-stopped.json").read_text())
    assert marker["container"] == registry.name

    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([GC_DAEMON, "--config", str(config), "run"], stderr=log)
    try:
        started = time.monotonic()
        while not serving(registry):
            assert time.monotonic() - started < 10, "registry not back within 10 s"
            time.sleep(0.1)
        print(f"\nregistry serving again {time.monotonic() - started:.1f}s after the daemon started")
        while "started it again" not in (tmp_path / "daemon.log").read_text():
            assert time.monotonic() - started < 10
            time.sleep(0.1)
        assert not (tmp_path / "state" / "registry-stopped.json").exists()
        leftovers = docker_client.containers.list(
            all=True, filters={"label": f"io.gc-daemon.collect-for={registry.name}"}
        )
        assert leftovers == []
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
        log.close()
    for tag in pusher.tags("team/app"):
        pull_whole(registry.url, "team/app", tag)


def test_two_runs_at_once_never_sweep_twice(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    for n in range(60):
        pusher.push_image("team/app", f"develop-{n}", created=f"2026-01-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")
    config = write_config(tmp_path, registry, keep=30, extra=NO_RATIO)
    lock = tmp_path / "state" / "run.lock"
    first = subprocess.Popen([GC_DAEMON, "--config", str(config), "run-now", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while f"pid {first.pid}" not in (lock.read_text() if lock.exists() else ""):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    second = run(config, "run-now", "--json")
    out, _ = first.communicate(timeout=120)

    assert first.returncode == 0 and json.loads(out)["collect"]["ran"] is True
    assert second.returncode == 1
    assert "another gc-daemon run is in progress" in second.stdout
    assert json.loads(second.stdout)["collect"]["ran"] is False

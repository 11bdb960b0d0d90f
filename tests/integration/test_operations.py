"""Operating the daemon: run-now through it, attach / --no-wait, schedule, catch-up, status, signals, health."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.integration.cli import GC_DAEMON, run, run_json, write_config
from tests.integration.daemon_proc import running_daemon
from tests.support.images import Pusher, pull_whole
from tests.support.registry import RegistryContainer

NO_RATIO = "[retention]\nmax_delete_ratio = 1.0"


def seed(p: Pusher, repos: int = 1, tags: int = 4) -> None:
    for r in range(repos):
        for n in range(tags):
            p.push_image(f"team/app{r}", f"develop-{n}", created=f"2026-01-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z")


def test_run_now_goes_through_the_running_daemon(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    with running_daemon(config, tmp_path) as daemon:
        assert daemon.readyz(200).status_code == 200
        done = run(config, "run-now")
        metrics = daemon.metrics()
        status = run(config, "status")
    assert done.returncode == 0, done.stderr
    assert "run started in the daemon" in done.stderr
    assert "scan: 1 repositories in the catalog" in done.stderr  # progress lines streamed from the daemon
    assert "success. tags_deleted=3" in done.stdout
    assert metrics['gc_daemon_runs_total{result="success",trigger="manual"}'] == 1
    assert metrics['gc_daemon_runs_total{result="success",trigger="schedule"}'] == 0
    assert metrics["gc_daemon_bytes_reclaimed_total"] > 0
    assert "running:      no" in status.stdout and "last run:" in status.stdout and "manual success" in status.stdout
    assert "next run:     20" in status.stdout


def test_run_now_without_a_daemon_runs_in_process_and_says_so(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, keep=3)
    done = run(config, "run-now")
    assert done.returncode == 0, done.stderr
    assert "no gc-daemon answers on" in done.stderr and "running in-process" in done.stderr


def test_run_now_attaches_to_a_run_in_progress_and_no_wait_exits_3(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher, repos=30, tags=3)  # a catch-up run long enough to meet it in progress
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    config.write_text(config.read_text() + '\n[schedule]\ncatch_up = true\nweekday = "monday"\n')
    with running_daemon(config, tmp_path) as daemon:
        daemon.wait_for("catch-up: the last success is older than one period")
        busy = run(config, "run-now", "--no-wait")
        attached = run(config, "run-now", "--json")
        metrics = daemon.metrics()
    assert busy.returncode == 3, busy.stderr
    assert "a schedule run is in progress since" in busy.stderr
    assert attached.returncode == 0, attached.stderr
    assert "attached to the schedule run in progress" in attached.stderr
    attached_report = json.loads(attached.stdout)
    assert attached_report["trigger"] == "schedule" and attached_report["decisions"]
    assert metrics['gc_daemon_runs_total{result="success",trigger="schedule"}'] == 1
    assert metrics['gc_daemon_runs_total{result="success",trigger="manual"}'] == 0  # attached, not a new run


def test_a_schedule_a_few_seconds_ahead_fires_once(registry: RegistryContainer, pusher: Pusher, tmp_path: Path) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    at = (datetime.now(UTC) + timedelta(seconds=4)).strftime("%H:%M:%S")
    config.write_text(config.read_text() + f'\n[schedule]\nevery = "day"\ntime = "{at}"\ntimezone = "UTC"\n')
    with running_daemon(config, tmp_path) as daemon:
        before = daemon.metrics()
        assert before['gc_daemon_runs_total{result="success",trigger="schedule"}'] == 0
        daemon.wait_for("run ", timeout=20)
        daemon.wait_for("garbage-collect: ", timeout=30)
        deadline = time.monotonic() + 30
        while daemon.metrics()['gc_daemon_runs_total{result="success",trigger="schedule"}'] < 1:
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.2)
        time.sleep(2)
        after = daemon.metrics()
    assert after['gc_daemon_runs_total{result="success",trigger="schedule"}'] == 1
    next_run = after["gc_daemon_next_run_timestamp_seconds"]
    assert 86400 - 60 < next_run - time.time() < 86400 + 60  # tomorrow, same time


def test_catch_up_only_when_the_last_success_is_old(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, keep=3)
    config.write_text(config.read_text() + '\n[schedule]\ncatch_up = true\nweekday = "monday"\n')
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat()
    recent = {"run_id": "x", "trigger": "schedule", "result": "success", "error": None, "started_at": now,
              "finished_at": now, "duration_s": 1, "tags_deleted": 0, "manifests_deleted": 0, "blobs_deleted": 0,
              "bytes_reclaimed": 0}  # fmt: skip
    (state / "last-run.json").write_text(json.dumps({"last": recent, "last_success": recent}))
    with running_daemon(config, tmp_path) as daemon:
        time.sleep(1.5)
        assert daemon.metrics()['gc_daemon_runs_total{result="success",trigger="schedule"}'] == 0
        assert daemon.metrics()["gc_daemon_last_success_timestamp_seconds"] > 0  # restored from the state dir
    old = dict(recent, finished_at=(datetime.now(UTC) - timedelta(days=8)).isoformat())
    (state / "last-run.json").write_text(json.dumps({"last": old, "last_success": old}))
    with running_daemon(config, tmp_path) as daemon:
        daemon.wait_for("catch-up")
        deadline = time.monotonic() + 30
        while daemon.metrics()['gc_daemon_runs_total{result="success",trigger="schedule"}'] < 1:
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.2)


def test_sigterm_during_the_scan_stops_before_any_removal(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher, repos=40, tags=3)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    config.write_text(config.read_text() + '\n[schedule]\ncatch_up = true\nweekday = "monday"\n')
    snapshot = registry.snapshot()
    with running_daemon(config, tmp_path) as daemon:
        daemon.wait_for("scan: 40 repositories in the catalog")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
        output = daemon.output()
    assert "stop requested during the scan; nothing was removed" in output
    assert registry.snapshot() == snapshot


def test_sigterm_during_an_offline_collect_lets_it_finish(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher, tags=6)
    config = write_config(tmp_path, registry, keep=1, extra=NO_RATIO)
    config.write_text(config.read_text() + '\n[schedule]\ncatch_up = true\nweekday = "monday"\n')
    with running_daemon(config, tmp_path) as daemon:
        container = registry.container()
        deadline = time.monotonic() + 60
        while True:
            container.reload()
            if container.status != "running":
                break
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.01)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0
    container.reload()
    assert container.status == "running"
    last = json.loads((tmp_path / "state" / "last-run.json").read_text())["last"]
    assert last["result"] == "success" and last["blobs_deleted"] > 0
    assert pusher.tags("team/app0") == ["develop-5"]
    pull_whole(registry.url, "team/app0", "develop-5")


def test_health_endpoints(registry: RegistryContainer, tmp_path: Path) -> None:
    config = write_config(tmp_path, registry)
    with running_daemon(config, tmp_path) as daemon:
        assert httpx.get(f"{daemon.url}/healthz", timeout=5).text == "ok\n"
        ready = daemon.readyz(200, "registry answered")
        assert ready.status_code == 200 and "registry answered" in ready.text
    broken = write_config(tmp_path, registry, url="http://127.0.0.1:9")
    with running_daemon(broken, tmp_path) as daemon:
        ready = daemon.readyz(503, "registry probe failed")
        assert ready.status_code == 503 and "registry probe failed" in ready.text
        assert httpx.get(f"{daemon.url}/healthz", timeout=5).status_code == 200


def test_status_without_a_daemon_reads_the_state_dir(
    registry: RegistryContainer, pusher: Pusher, tmp_path: Path
) -> None:
    seed(pusher)
    config = write_config(tmp_path, registry, keep=3)
    assert run_json(config, "run-now")[0] == 0
    status = subprocess.run([GC_DAEMON, "--config", str(config), "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 0
    assert "no daemon answers" in status.stdout and "running:      unknown" in status.stdout

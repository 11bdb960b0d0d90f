"""`gc-daemon run`: the metrics endpoint and a clean, prompt stop on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.cli import GC_DAEMON, write_config
from tests.support.registry import RegistryContainer, free_port

METRICS = [
    'gc_daemon_runs_total{result="success",trigger="schedule"}',
    'gc_daemon_runs_total{result="failure",trigger="manual"}',
    "gc_daemon_last_run_timestamp_seconds",
    "gc_daemon_last_success_timestamp_seconds",
    "gc_daemon_run_duration_seconds",
    "gc_daemon_tags_deleted_total",
    "gc_daemon_manifests_deleted_total",
    "gc_daemon_blobs_deleted_total",
    "gc_daemon_bytes_reclaimed_total",
    "gc_daemon_next_run_timestamp_seconds",
    "gc_daemon_last_run_bytes_reclaimed",
    "gc_daemon_last_run_blobs_deleted",
    "gc_daemon_layers_deleted_total",
    'gc_daemon_gc_runs_total{mode="online",result="failure"}',
    "gc_daemon_gc_duration_seconds",
    "gc_daemon_registry_downtime_seconds",
    "gc_daemon_registry_up",
    'gc_daemon_guard_tripped_total{guard="max_delete_ratio"}',
]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_metrics_and_stops_on_signal(registry: RegistryContainer, tmp_path: Path, sig: int) -> None:
    port = free_port()
    config = write_config(tmp_path, registry)
    config.write_text(
        config.read_text().replace(
            "[metrics]\nport = 0", f'[metrics]\naddress = "127.0.0.1"\nport = {port}\n[schedule]\nweekday = "monday"'
        )
    )
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([GC_DAEMON, "--config", str(config), "run"], stderr=log)
    try:
        body = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if "gc_daemon_next_run_timestamp_seconds " in body and (
                    "gc_daemon_next_run_timestamp_seconds 0.0" not in body
                ):
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        lines = body.splitlines()
        for name in METRICS:
            assert any(line.startswith(name + " ") for line in lines), f"{name} missing from /metrics"
        next_run = float(next(ln for ln in lines if ln.startswith("gc_daemon_next_run_timestamp_seconds ")).split()[1])
        assert time.time() < next_run <= time.time() + 7 * 86400
        assert time.gmtime(next_run).tm_wday == 0 and time.gmtime(next_run).tm_hour == 3  # Monday 03:00 UTC

        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
        assert code == 0, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() - sent < 5
        assert "daemon stopped" in (tmp_path / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_scheduled_job_runs_the_cycle_and_records_metrics(
    registry: RegistryContainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job the schedule fires is the full cycle, counted as trigger="schedule"."""
    from gc_daemon.cli import _run_once
    from gc_daemon.config import load_settings
    from gc_daemon.daemon import Daemon
    from gc_daemon.metrics import Metrics
    from tests.support.images import Pusher

    with Pusher(registry.url) as p:
        for n in range(4):
            p.push_image("team/app", f"develop-{n}", created=f"2026-11-0{n + 1}T00:00:00Z")
    config = write_config(tmp_path, registry, keep=1, extra="[retention]\nmax_delete_ratio = 1.0")
    settings = load_settings(str(config))
    metrics = Metrics()
    daemon = Daemon(
        settings, metrics, lambda trigger, stop, force, phases: _run_once(settings, trigger, False, stop, force, phases)
    )
    daemon.configure_schedule()
    daemon.scheduler.run_all()

    value = metrics.registry.get_sample_value
    assert value("gc_daemon_runs_total", {"trigger": "schedule", "result": "success"}) == 1
    assert value("gc_daemon_runs_total", {"trigger": "manual", "result": "success"}) == 0
    assert value("gc_daemon_tags_deleted_total") == 3
    assert (value("gc_daemon_blobs_deleted_total") or 0) > 0
    assert (value("gc_daemon_bytes_reclaimed_total") or 0) > 0
    assert value("gc_daemon_last_success_timestamp_seconds") == value("gc_daemon_last_run_timestamp_seconds")
    assert value("gc_daemon_gc_runs_total", {"mode": "offline", "result": "success"}) == 1
    assert value("gc_daemon_last_run_bytes_reclaimed") == value("gc_daemon_bytes_reclaimed_total")
    assert value("gc_daemon_layers_deleted_total") == 3 and value("gc_daemon_registry_up") == 1
    assert (value("gc_daemon_registry_downtime_seconds") or 0) > 0
    with Pusher(registry.url) as p:
        assert p.tags("team/app") == ["develop-3"]

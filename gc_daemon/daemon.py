"""The daemon: metrics and health endpoint, control socket, schedule, clean stop on SIGTERM/SIGINT.

Runs happen one at a time in the main loop, whether the schedule or a `run-now` client asked for them.
The loop sleeps in exactly one place, ``wake.wait(...)``: a signal or a run request wakes it at once.
A signal during a run stops it at its next safe point (before removal, or once a collect in progress
finished and the registry serves again); then the daemon exits 0.
"""

from __future__ import annotations

import io
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import schedule

from gc_daemon.config import Settings
from gc_daemon.control import Controller, ControlServer, RunRequest
from gc_daemon.cycle import Phases
from gc_daemon.errors import GcDaemonError
from gc_daemon.events import EventSink, EventStore
from gc_daemon.health import HttpServer
from gc_daemon.metrics import Metrics
from gc_daemon.model import RunReport
from gc_daemon.progress import CaptureHandler, RunProgress
from gc_daemon.report import print_report, report_json
from gc_daemon.state import State

log = logging.getLogger(__name__)

MAX_SLEEP_S = 60.0  # wake at least once a minute, so a wall-clock jump cannot delay a run long
PROBE_EVERY_S = 60.0

RunOnce = Callable[[str, Callable[[], bool], bool, Phases], RunReport]


class Daemon:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        run_once: RunOnce,
        state: State | None = None,
        probe: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._run_once = run_once
        self._state = state
        self._probe = probe
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.scheduler = schedule.Scheduler()
        self._requests: queue.Queue[RunRequest] = queue.Queue()
        self._lock = threading.Lock()
        self._current: RunProgress | None = None
        self._ready: tuple[bool, str] = (False, "registry not probed yet")
        self._last_probe = 0.0

    # -- signals and requests ----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s: stopping%s",
            signal.Signals(signum).name,
            " after the run's safe point" if self._current else "",
        )
        self.stop.set()
        self.wake.set()

    def request_run(self, run: RunRequest) -> None:
        self._requests.put(run)
        self.wake.set()

    def current(self) -> RunProgress | None:
        with self._lock:
            return self._current

    def status(self) -> dict[str, Any]:
        current = self.current()
        next_run = self.scheduler.get_next_run()
        record = (self._state.last_run() if self._state else None) or {}
        return {
            "running": current is not None and not current.done,
            "current": {"trigger": current.trigger, "started_at": current.started_at.isoformat()}
            if current is not None and not current.done
            else None,
            "last": record.get("last"),
            "last_success": record.get("last_success"),
            "next_run": next_run.astimezone(UTC).isoformat() if next_run else None,
        }

    def ready(self) -> tuple[bool, str]:
        return self._ready

    # -- runs ----------------------------------------------------------------------------------------

    def run(
        self,
        trigger: str,
        force: bool = False,
        request: RunRequest | None = None,
        phases: Phases = Phases(),  # noqa: B008
    ) -> RunReport:
        progress = RunProgress(trigger)
        with self._lock:
            self._current = progress
        if request is not None:
            request.progress = progress
            request.started.set()
        capture = CaptureHandler(progress)
        logging.getLogger().addHandler(capture)
        try:
            report = self._run_once(trigger, self.stop.is_set, force, phases)
        finally:
            logging.getLogger().removeHandler(capture)
        finished = datetime.now(UTC)
        self._metrics.record(report, finished.timestamp())
        if report.registry_up is not None:
            self._ready = (report.registry_up, "registry served at the end of the last run")
        text = io.StringIO()
        print_report(report, text)
        progress.finish(report_json(report), text.getvalue())
        return report

    def _scheduled(self, phases: Phases) -> None:
        self.run("schedule", phases=phases)

    def configure_schedule(self) -> schedule.Job:
        """The weekly (or daily) run; with `collect_time`, removals then, and the collect at its own time."""
        sched = self._settings.schedule

        def every(weekday: str) -> schedule.Job:
            start = self.scheduler.every()
            return start.day if sched.every == "day" else getattr(start, weekday)  # type: ignore[no-any-return]

        split = sched.collect_time is not None
        job = every(sched.weekday).at(sched.time, sched.timezone).do(self._scheduled, Phases(collect=not split))
        if split:
            assert sched.collect_time is not None
            every(sched.collect_weekday or sched.weekday).at(sched.collect_time, sched.timezone).do(
                self._scheduled, Phases(remove=False)
            )
        return job  # type: ignore[no-any-return]

    def period(self) -> timedelta:
        return timedelta(days=1 if self._settings.schedule.every == "day" else 7)

    def catch_up_due(self, now: datetime) -> bool:
        """The last success is older than one period, or unknown."""
        last = (self._state.last_run() or {}).get("last_success") if self._state else None
        if not last:
            return True
        return now - datetime.fromisoformat(last["finished_at"]) > self.period()

    def _probe_registry(self) -> None:
        if self._probe is None:
            self._ready = (True, "no registry probe configured")
            return
        try:
            self._probe()
            self._ready = (True, "registry answered /v2/")
        except GcDaemonError as exc:
            self._ready = (False, f"registry probe failed: {exc}")
        self._last_probe = time.monotonic()

    def _seed_metrics(self) -> None:
        """After a restart, the last run's timestamps come from the state dir, not from zero."""
        record = self._state.last_run() if self._state else None
        if not record:
            return
        if record.get("last"):
            self._metrics.last_run.set(datetime.fromisoformat(record["last"]["finished_at"]).timestamp())
        if record.get("last_success"):
            self._metrics.last_success.set(datetime.fromisoformat(record["last_success"]["finished_at"]).timestamp())

    # -- the loop -----------------------------------------------------------------------------------

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        http = control = sink = None
        metrics = self._settings.metrics
        try:
            events = self._settings.events
            if events.enabled:
                secret = events.resolved_secret()
                assert secret is not None  # checked by the config
                store = EventStore(self._settings.state.dir / "events.sqlite")
                sink = EventSink(store, secret, events.header, events.queue_size, self._metrics.count_events)
                sink.start()
                log.info("registry notifications accepted on POST /events")
            if metrics.port:
                http = HttpServer(metrics.address, metrics.port, self._metrics.registry, self.ready, sink)
                http.start()
                log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", metrics.address, metrics.port)
            control = ControlServer(
                self._settings.control.socket, Controller(self.current, self.request_run, self.status, self.stop)
            )
            control.start()
            job = self.configure_schedule()
            log.info("daemon started: %s", job)
            self._seed_metrics()
            self._probe_registry()
            if self._settings.schedule.catch_up and self.catch_up_due(datetime.now(UTC)):
                log.info("catch-up: the last success is older than one period; running now")
                self.run("schedule")
            while not self.stop.is_set():
                self.scheduler.run_pending()
                while not self.stop.is_set():
                    try:
                        request = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    self.run("manual", request.force, request, request.phases)
                next_run = self.scheduler.get_next_run()
                if next_run is not None:
                    self._metrics.next_run.set(next_run.timestamp())
                if time.monotonic() - self._last_probe > PROBE_EVERY_S:
                    self._probe_registry()
                idle = self.scheduler.idle_seconds
                self.wake.wait(min(MAX_SLEEP_S, max(0.0, idle if idle is not None else MAX_SLEEP_S)))
                self.wake.clear()
        except GcDaemonError as exc:
            log.error("%s", exc)
            return 1
        finally:
            if control is not None:
                control.close()
            if http is not None:
                http.close()
            if sink is not None:
                sink.close()
            log.info("daemon stopped")
        return 0

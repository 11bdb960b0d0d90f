"""The daemon: metrics endpoint, weekly schedule, clean stop on SIGTERM/SIGINT.

It sleeps in exactly one place, ``stop.wait(...)``, so a signal wakes it at once.
A signal during a run stops it before any removal (the cycle checks ``should_stop``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import schedule

from gc_daemon.config import Settings
from gc_daemon.metrics import Metrics
from gc_daemon.model import RunReport

log = logging.getLogger(__name__)

MAX_SLEEP_S = 60.0  # wake at least once a minute, so a wall-clock jump cannot delay a run long


class Daemon:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        run_once: Callable[[str, Callable[[], bool]], RunReport],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._run_once = run_once
        self.stop = threading.Event()
        self.scheduler = schedule.Scheduler()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop.set()

    def _scheduled(self) -> None:
        report = self._run_once("schedule", self.stop.is_set)
        self._metrics.record(report, time.time())

    def configure_schedule(self) -> schedule.Job:
        sched = self._settings.schedule
        every = getattr(self.scheduler.every(), sched.weekday)
        return every.at(sched.time, sched.timezone).do(self._scheduled)  # type: ignore[no-any-return]

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        server = None
        metrics = self._settings.metrics
        if metrics.port:
            from prometheus_client import start_http_server

            server, _thread = start_http_server(metrics.port, metrics.address, registry=self._metrics.registry)
            log.info("metrics on http://%s:%d/metrics", metrics.address, metrics.port)
        job = self.configure_schedule()
        log.info("daemon started: %s", job)
        try:
            while not self.stop.is_set():
                self.scheduler.run_pending()
                next_run = self.scheduler.get_next_run()
                if next_run is not None:
                    self._metrics.next_run.set(next_run.timestamp())
                idle = self.scheduler.idle_seconds
                self.stop.wait(min(MAX_SLEEP_S, max(0.0, idle if idle is not None else MAX_SLEEP_S)))
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            log.info("daemon stopped")
        return 0

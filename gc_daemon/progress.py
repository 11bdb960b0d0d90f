"""A run's progress as it happens: log lines and the final report, for `run-now` clients to follow."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from gc_daemon.logs import TEXT_FORMAT


class RunProgress:
    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        self.started_at = datetime.now(UTC)
        self._lines: list[str] = []
        self._done = False
        self.report: dict[str, Any] | None = None
        self.text = ""
        self._cond = threading.Condition()

    def add(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def finish(self, report: dict[str, Any], text: str) -> None:
        with self._cond:
            self.report, self.text, self._done = report, text, True
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self._done

    def follow(self, should_stop: threading.Event | None = None) -> Iterator[str]:
        """Every line from the start, then new ones as they come, until the run is done."""
        index = 0
        while True:
            with self._cond:
                while index >= len(self._lines) and not self._done:
                    self._cond.wait(timeout=1.0)
                    if should_stop is not None and should_stop.is_set() and not self._done:
                        return
                lines = self._lines[index:]
                index += len(lines)
                finished = self._done and index >= len(self._lines)
            yield from lines
            if finished:
                return


class CaptureHandler(logging.Handler):
    """Copies every log record of a run into its RunProgress."""

    def __init__(self, progress: RunProgress) -> None:
        super().__init__()
        self.progress = progress
        self.setFormatter(logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.add(self.format(record))
        except Exception:  # pragma: no cover - logging must never break a run
            self.handleError(record)

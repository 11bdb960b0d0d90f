"""The daemon's schedule wiring: one job, or removal and collect split for an undo window."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from gc_daemon.config import Settings
from gc_daemon.cycle import Phases
from gc_daemon.daemon import Daemon
from gc_daemon.metrics import Metrics
from gc_daemon.model import RunReport


def daemon(schedule: dict[str, object]) -> tuple[Daemon, list[tuple[str, Phases]]]:
    settings = Settings(gc={"container": "registry"}, schedule=schedule, metrics={"port": 0})
    calls: list[tuple[str, Phases]] = []

    def run_once(trigger: str, stop: Callable[[], bool], force: bool, phases: Phases) -> RunReport:
        calls.append((trigger, phases))
        return RunReport(run_id="r", trigger=trigger, dry_run=False, started_at=datetime.now(UTC), result="success")

    return Daemon(settings, Metrics(), run_once), calls


def test_one_weekly_job_runs_removal_and_collect() -> None:
    d, calls = daemon({"weekday": "tuesday", "time": "04:30", "timezone": "Europe/Paris"})
    d.configure_schedule()
    (job,) = d.scheduler.get_jobs()
    assert job.start_day == "tuesday" and str(job.at_time) == "04:30:00" and str(job.at_time_zone) == "Europe/Paris"
    d.scheduler.run_all()
    assert calls == [("schedule", Phases(remove=True, collect=True))]


def test_split_schedule_removes_then_collects_later() -> None:
    d, calls = daemon({"weekday": "sunday", "time": "03:00", "collect_weekday": "wednesday", "collect_time": "05:00"})
    d.configure_schedule()
    removal, collect = d.scheduler.get_jobs()
    assert (removal.start_day, str(removal.at_time)) == ("sunday", "03:00:00")
    assert (collect.start_day, str(collect.at_time)) == ("wednesday", "05:00:00")
    d.scheduler.run_all()
    assert calls == [("schedule", Phases(remove=True, collect=False)), ("schedule", Phases(remove=False, collect=True))]


def test_daily_schedule_and_catch_up_period() -> None:
    d, _ = daemon({"every": "day", "time": "02:15:30"})
    d.configure_schedule()
    (job,) = d.scheduler.get_jobs()
    assert job.unit == "days" and str(job.at_time) == "02:15:30"
    assert d.period().days == 1 and d.catch_up_due(datetime.now(UTC))  # no state: no recorded success

"""Command line: parse arguments, load settings, call one function, map errors to exit codes.

Exit codes: 0 success, 1 failure (registry, collect, run), 2 configuration error.
With --json, stdout carries only the JSON document; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from gc_daemon import __version__
from gc_daemon.collect.sweep import recover_registry
from gc_daemon.config import Settings, load_settings, redacted
from gc_daemon.cycle import build_executor, build_registry_client, compute_plan, run_cycle, utcnow
from gc_daemon.errors import ConfigError, GcDaemonError
from gc_daemon.metrics import Metrics
from gc_daemon.model import RunReport
from gc_daemon.report import dump_json, plan_json, print_plan, print_report
from gc_daemon.state import RunInProgress, State

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("gc_daemon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gc-daemon", description="Keep a Docker Registry V2 lean: retention, safe removal, garbage-collect."
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: $GC_DAEMON_CONFIG, ./retention.toml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"gc-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("validate", help="load the config and print the effective settings, secrets redacted")
    p_plan = sub.add_parser("plan", help="print what a run would keep and delete; changes nothing")
    p_plan.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p_now = sub.add_parser("run-now", help="one full cycle now: plan, delete, garbage-collect, report")
    p_now.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p_now.add_argument("--dry-run", action="store_true", help="plan only: remove nothing, collect nothing")
    p_now.add_argument("--force", action="store_true", help="proceed although a deletion guard trips")
    p_now.add_argument(
        "--textfile",
        metavar="PATH",
        help="also write this run's metrics in Prometheus text format (node_exporter textfile collector)",
    )
    sub.add_parser("run", help="the daemon: metrics endpoint and the weekly schedule")
    return parser


def _logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only clutter dashboards
    _logging(args.log_level)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gc-daemon: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        command: Callable[[Settings, argparse.Namespace], int] = {
            "validate": cmd_validate,
            "plan": cmd_plan,
            "run-now": cmd_run_now,
            "run": cmd_run,
        }[args.command]
        return command(settings, args)
    except ConfigError as exc:
        print(f"gc-daemon: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GcDaemonError as exc:
        print(f"gc-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    dump_json(redacted(settings), sys.stdout)
    return EXIT_OK


def cmd_plan(settings: Settings, args: argparse.Namespace) -> int:
    with build_registry_client(settings) as registry:
        _inventory, plan = compute_plan(settings, registry, utcnow(), state=State(settings.state.dir))
    if args.json:
        dump_json(plan_json(plan), sys.stdout)
    else:
        print_plan(plan, sys.stdout)
    return EXIT_OK


def _run_once(
    settings: Settings, trigger: str, dry_run: bool, should_stop: Callable[[], bool], force: bool = False
) -> RunReport:
    with build_registry_client(settings) as registry:
        executor = None
        if not (dry_run or settings.retention.dry_run):
            try:
                executor = build_executor(settings)
            except GcDaemonError as exc:
                # No engine means no collect: refuse before removing anything.
                report = RunReport(run_id="-", trigger=trigger, dry_run=dry_run, started_at=utcnow(), error=str(exc))
                return report
        try:
            return run_cycle(
                settings,
                registry,
                executor,
                trigger=trigger,
                dry_run=dry_run,
                force=force,
                state=State(settings.state.dir),
                should_stop=should_stop,
                on_gc_line=lambda line: log.debug("garbage-collect: %s", line),
            )
        finally:
            if executor is not None:
                executor.close()


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT ask the run to stop at its next safe point: before removing, before collecting.
    A collect in progress finishes (offline: the registry is started again) before the process exits."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.warning("received %s: stopping at the next safe point", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_run_now(settings: Settings, args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    report = _run_once(settings, "manual", args.dry_run, stop.is_set, force=args.force)
    if args.textfile:
        from prometheus_client import write_to_textfile

        metrics = Metrics()
        metrics.record(report, time.time())
        write_to_textfile(args.textfile, metrics.registry)
    if args.json:
        data = report.to_dict()
        if report.plan is not None:
            data["decisions"] = plan_json(report.plan)["decisions"]
        dump_json(data, sys.stdout)
    else:
        print_report(report, sys.stdout)
    return EXIT_OK if report.result == "success" else EXIT_FAILURE


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gc_daemon.daemon import Daemon

    recover_at_start(settings)
    metrics = Metrics()
    daemon = Daemon(settings, metrics, lambda trigger, stop: _run_once(settings, trigger, False, stop))
    return daemon.serve()


def recover_at_start(settings: Settings) -> None:
    """A registry left stopped by a killed gc-daemon is started again before anything else."""
    state = State(settings.state.dir)
    try:
        if state.registry_stopped() is None:
            return
        executor = build_executor(settings)
        if executor is None:
            return
        try:
            with state.run_lock("recovery", utcnow()), build_registry_client(settings) as registry:
                recover_registry(state, executor, registry)
        finally:
            executor.close()
    except RunInProgress as exc:
        log.info("not recovering the registry: %s", exc)
    except GcDaemonError as exc:
        log.error("could not start the registry gc-daemon left stopped: %s", exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
from typing import Any

from gc_daemon import __version__, control, logs
from gc_daemon.collect.sweep import recover_registry
from gc_daemon.config import Settings, load_settings, redacted
from gc_daemon.control import NoDaemon
from gc_daemon.cycle import Phases, build_executor, build_registry_client, compute_plan, run_cycle, utcnow
from gc_daemon.errors import ConfigError, GcDaemonError
from gc_daemon.metrics import Metrics
from gc_daemon.model import RunReport
from gc_daemon.report import dump_json, plan_json, print_plan, print_report, report_json
from gc_daemon.state import RunInProgress, State

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("gc_daemon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gc-daemon", description="Keep a Docker Registry V2 lean: retention, safe removal, garbage-collect."
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: $GC_DAEMON_CONFIG, ./retention.toml)")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides [log] level (default INFO)"
    )
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
        "--no-wait", action="store_true", help="when the daemon is already running a run, say so and exit 3"
    )
    only = p_now.add_mutually_exclusive_group()
    only.add_argument("--no-collect", action="store_true", help="remove tags, leave the collect for later")
    only.add_argument("--collect-only", action="store_true", help="collect only: remove no tag")
    p_hist = sub.add_parser("history", help="past runs: id, time, tags removed, bytes reclaimed")
    p_hist.add_argument("--json", action="store_true", help="print JSON on stdout")
    p_restore = sub.add_parser("restore", help="put back the tags a run removed, while their blobs are not swept")
    p_restore.add_argument("run_id", metavar="RUN_ID")
    p_restore.add_argument("--tag", metavar="REPO:TAG", help="only this tag")
    sub.add_parser("status", help="the last run, the next run, and whether one is running")
    p_ls = sub.add_parser("ls", help="repositories and tags: digest, created, size, class and the rule that applies")
    p_ls.add_argument("glob", nargs="?", metavar="REPOSITORY_GLOB", help="only repositories matching this glob")
    p_ls.add_argument("--json", action="store_true", help="print JSON on stdout")
    sub.add_parser("check", help="check a deployment: config, registry, credentials, deletes, container, state")
    p_now.add_argument(
        "--textfile",
        metavar="PATH",
        help="also write this run's metrics in Prometheus text format (node_exporter textfile collector)",
    )
    sub.add_parser("run", help="the daemon: metrics endpoint and the weekly schedule")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only clutter dashboards
    logs.configure(args.log_level or "INFO")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gc-daemon: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(args.log_level or settings.log.level, settings.log.format)
    try:
        command: Callable[[Settings, argparse.Namespace], int] = {
            "validate": cmd_validate,
            "plan": cmd_plan,
            "run-now": cmd_run_now,
            "run": cmd_run,
            "status": cmd_status,
            "ls": cmd_ls,
            "history": cmd_history,
            "restore": cmd_restore,
            "check": cmd_check,
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
    settings: Settings,
    trigger: str,
    dry_run: bool,
    should_stop: Callable[[], bool],
    force: bool = False,
    phases: Phases = Phases(),  # noqa: B008
) -> RunReport:
    """One run; its summary is kept in the state dir (last run, history) whoever triggered it."""
    report = _cycle(settings, trigger, dry_run, should_stop, force, phases)
    if not report.dry_run:
        state = State(settings.state.dir)
        try:
            summary = report.summary(utcnow())
            state.save_last_run(summary)
            state.append_history(summary)
        except GcDaemonError as exc:
            log.error("%s", exc)
    return report


def _cycle(
    settings: Settings, trigger: str, dry_run: bool, should_stop: Callable[[], bool], force: bool, phases: Phases
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
                phases=phases,
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


EXIT_BUSY = 3


def cmd_run_now(settings: Settings, args: argparse.Namespace) -> int:
    """Through the running daemon when one answers on the control socket (so the run shows in its metrics
    and never collides with a scheduled one); else in-process, and says so."""
    if not args.dry_run and not args.textfile:
        try:
            return _run_now_via_daemon(settings, args)
        except NoDaemon as exc:
            print(f"gc-daemon: {exc}: running in-process", file=sys.stderr)
    stop = _stop_on_signals()
    report = _run_once(settings, "manual", args.dry_run, stop.is_set, force=args.force, phases=_phases(args))
    if args.textfile:
        from prometheus_client import write_to_textfile

        metrics = Metrics()
        metrics.record(report, time.time())
        write_to_textfile(args.textfile, metrics.registry)
    if args.json:
        dump_json(report_json(report), sys.stdout)
    else:
        print_report(report, sys.stdout)
    return EXIT_OK if report.result == "success" else EXIT_FAILURE


def _phases(args: argparse.Namespace) -> Phases:
    return Phases(remove=not args.collect_only, collect=not args.no_collect)


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    runs = State(settings.state.dir).history()
    if args.json:
        dump_json(runs, sys.stdout)
        return EXIT_OK
    print(f"{'RUN':<13} {'FINISHED':<26} {'TRIGGER':<9} {'PHASES':<15} {'RESULT':<8} {'TAGS':>5} {'BYTES':>12}")
    for run in runs:
        print(f"{run['run_id']:<13} {run['finished_at'][:25]:<26} {run['trigger']:<9} "
              f"{'+'.join(run.get('phases') or []):<15} {run['result']:<8} {run['tags_deleted']:>5} "
              f"{run['bytes_reclaimed']:>12}")  # fmt: skip
    return EXIT_OK


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from gc_daemon.restore import restore

    only = None
    if args.tag:
        repository, sep, tag = args.tag.rpartition(":")
        if not sep or not repository or not tag:
            print("gc-daemon: --tag takes REPOSITORY:TAG", file=sys.stderr)
            return EXIT_CONFIG
        only = (repository, tag)
    with build_registry_client(settings) as registry:
        outcome = restore(registry, State(settings.state.dir), args.run_id, only)
    for line in outcome.lines():
        print(line)
    return EXIT_OK if outcome.complete else EXIT_FAILURE


def _run_now_via_daemon(settings: Settings, args: argparse.Namespace) -> int:
    phases = _phases(args)
    message = {"cmd": "run", "wait": not args.no_wait, "force": args.force, "remove": phases.remove,
               "collect": phases.collect}  # fmt: skip
    for event in control.request(settings.control.socket, message):
        kind = event.get("event")
        if kind == "busy":
            print(f"gc-daemon: a {event['trigger']} run is in progress since {event['started_at']}", file=sys.stderr)
            return EXIT_BUSY
        if kind in ("started", "attached"):
            how = "started" if kind == "started" else f"attached to the {event['trigger']} run in progress"
            print(f"gc-daemon: run {how} in the daemon ({settings.control.socket})", file=sys.stderr)
        elif kind == "log":
            print(event["line"], file=sys.stderr, flush=True)
        elif kind == "report":
            if args.json:
                dump_json(event["report"], sys.stdout)
            else:
                sys.stdout.write(event["text"])
            return EXIT_OK if event["report"].get("result") == "success" else EXIT_FAILURE
        elif kind == "error":
            print(f"gc-daemon: {event['message']}", file=sys.stderr)
            return EXIT_FAILURE
    print("gc-daemon: the daemon closed the connection before the run's report", file=sys.stderr)
    return EXIT_FAILURE


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    try:
        status = control.probe_status(settings.control.socket)
        source = f"daemon on {settings.control.socket}"
    except NoDaemon:
        record = State(settings.state.dir).last_run() or {}
        status = {"running": None, "current": None, "last": record.get("last"),
                  "last_success": record.get("last_success"), "next_run": None}  # fmt: skip
        source = f"no daemon answers on {settings.control.socket}; from the state dir {settings.state.dir}"
    status.pop("event", None)
    if getattr(args, "json", False):
        dump_json(status, sys.stdout)
        return EXIT_OK
    print(f"status ({source})")
    running, current = status.get("running"), status.get("current")
    if running is None:
        now_running = "unknown (no daemon)"
    elif running and current:
        now_running = f"yes, a {current['trigger']} run since {current['started_at']}"
    else:
        now_running = "no"
    print(f"  running:      {now_running}")
    for key, label in (("last", "last run"), ("last_success", "last success")):
        run = status.get(key)
        text = (f"{run['finished_at']} {run['trigger']} {run['result']}: tags_deleted={run['tags_deleted']} "
                f"bytes_reclaimed={run['bytes_reclaimed']}" + (f" error={run['error']}" if run.get("error") else "")
                ) if run else "none recorded"  # fmt: skip
        print(f"  {label + ':':<13} {text}")
    print(f"  next run:     {status.get('next_run') or 'unknown (no daemon)'}")
    return EXIT_OK


def cmd_ls(settings: Settings, args: argparse.Namespace) -> int:
    from gc_daemon.report import human_bytes, short
    from gc_daemon.retention import glob_to_regex

    with build_registry_client(settings) as registry:
        inventory, plan = compute_plan(settings, registry, utcnow(), state=State(settings.state.dir))
    wanted = glob_to_regex(args.glob) if args.glob else None
    images = {(r.name, d): image for r in inventory.repositories for d, image in r.images.items()}
    rows: list[dict[str, Any]] = []
    for d in plan.decisions:
        if wanted is not None and not wanted.fullmatch(d.repository):
            continue
        image = images.get((d.repository, d.digest))
        created = image.created.isoformat() if image is not None and image.created else None
        rows.append({"repository": d.repository, "tag": d.tag, "digest": d.digest, "created": created,
                     "size": d.size, "class": d.tag_class.value,
                     "rule": d.rule + 1 if d.rule is not None else None})  # fmt: skip
    skipped = [{"repository": r, "reason": why} for r, why in plan.skipped if not wanted or wanted.fullmatch(r)]
    if args.json:
        dump_json({"tags": rows, "skipped": skipped}, sys.stdout)
        return EXIT_OK
    table = [("REPOSITORY", "TAG", "DIGEST", "CREATED", "SIZE", "CLASS", "RULE")]
    table += [(r["repository"], r["tag"], short(r["digest"]), (r["created"] or "unknown")[:19],
               human_bytes(r["size"]), r["class"], str(r["rule"] or "-")) for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for item in skipped:
        print(f"SKIPPED {item['repository']}: {item['reason']}")
    return EXIT_OK


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from gc_daemon.check import run_checks

    items = run_checks(settings)
    for item in items:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[item.ok]
        print(f"[{mark}] {item.name}: {item.detail}")
    failed = [item.name for item in items if item.ok is False]
    print(f"\n{len(failed)} failed: {', '.join(failed)}" if failed else "\nall checks passed")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gc_daemon.daemon import Daemon

    recover_at_start(settings)
    metrics = Metrics()

    def run_once(trigger: str, should_stop: Callable[[], bool], force: bool, phases: Phases) -> RunReport:
        return _run_once(settings, trigger, False, should_stop, force=force, phases=phases)

    def probe() -> None:
        with build_registry_client(settings) as registry:
            registry.probe(retry=False)

    daemon = Daemon(settings, metrics, run_once, State(settings.state.dir), probe)
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

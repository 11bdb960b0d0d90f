"""Every Prometheus metric gc-daemon exports, on an injected CollectorRegistry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gc_daemon.model import RunReport

TRIGGERS = ("schedule", "manual")
RESULTS = ("success", "failure")
MODES = ("online", "offline")
GUARDS = ("max_delete_ratio", "max_deletions")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter("gc_daemon_runs_total", "Runs by trigger and result.", ["trigger", "result"], registry=r)
        for trigger in TRIGGERS:
            for result in RESULTS:
                self.runs.labels(trigger=trigger, result=result)
        self.last_run = Gauge("gc_daemon_last_run_timestamp_seconds", "End of the last run (unix time).", registry=r)
        self.last_success = Gauge(
            "gc_daemon_last_success_timestamp_seconds", "End of the last successful run (unix time).", registry=r
        )
        self.run_duration = Gauge("gc_daemon_run_duration_seconds", "Duration of the last run.", registry=r)
        self.tags_deleted = Counter("gc_daemon_tags_deleted_total", "Tags removed.", registry=r)
        self.manifests_deleted = Counter("gc_daemon_manifests_deleted_total", "Manifests deleted.", registry=r)
        self.blobs_deleted = Counter("gc_daemon_blobs_deleted_total", "Blobs garbage-collect removed.", registry=r)
        self.bytes_reclaimed = Counter(
            "gc_daemon_bytes_reclaimed_total", "Bytes of the blobs garbage-collect removed (known sizes).", registry=r
        )
        self.next_run = Gauge("gc_daemon_next_run_timestamp_seconds", "Next scheduled run (unix time).", registry=r)
        self.last_run_bytes = Gauge(
            "gc_daemon_last_run_bytes_reclaimed", "Bytes reclaimed by the last run's collect.", registry=r
        )
        self.last_run_blobs = Gauge(
            "gc_daemon_last_run_blobs_deleted", "Blobs removed by the last run's collect.", registry=r
        )
        self.layers_deleted = Counter(
            "gc_daemon_layers_deleted_total", "Layer blobs garbage-collect removed.", registry=r
        )
        self.gc_runs = Counter(
            "gc_daemon_gc_runs_total", "garbage-collect runs by mode and result.", ["mode", "result"], registry=r
        )
        for mode in MODES:
            for result in RESULTS:
                self.gc_runs.labels(mode=mode, result=result)
        self.gc_duration = Gauge("gc_daemon_gc_duration_seconds", "Duration of the last garbage-collect.", registry=r)
        self.downtime = Gauge(
            "gc_daemon_registry_downtime_seconds",
            "Time the registry did not serve during the last collect (stop or restart until it answered).",
            registry=r,
        )
        self.registry_up = Gauge(
            "gc_daemon_registry_up", "1 when the registry answered /v2/ at the end of the last run, else 0.", registry=r
        )
        self.guard_tripped = Counter(
            "gc_daemon_guard_tripped_total", "Runs stopped by a deletion guard, by guard.", ["guard"], registry=r
        )
        for guard in GUARDS:
            self.guard_tripped.labels(guard=guard)
        self.events_received = Counter(
            "gc_daemon_events_received_total", "Registry notification events accepted on /events.", registry=r
        )
        self.events_dropped = Counter(
            "gc_daemon_events_dropped_total", "Registry notification events dropped: the queue was full.", registry=r
        )

    def count_events(self, kind: str, n: int) -> None:
        (self.events_received if kind == "received" else self.events_dropped).inc(n)

    def record(self, report: RunReport, finished_at: float) -> None:
        if report.dry_run:
            return  # a dry run changes nothing; it is not a run of the job
        self.runs.labels(trigger=report.trigger, result=report.result).inc()
        self.last_run.set(finished_at)
        if report.result == "success":
            self.last_success.set(finished_at)
        self.run_duration.set(report.duration_s)
        self.tags_deleted.inc(report.tags_deleted)
        self.manifests_deleted.inc(report.manifests_deleted)
        self.blobs_deleted.inc(report.blobs_deleted)
        self.bytes_reclaimed.inc(report.bytes_reclaimed)
        self.layers_deleted.inc(report.layers_deleted)
        if report.registry_up is not None:
            self.registry_up.set(1 if report.registry_up else 0)
        if report.guard_tripped:
            self.guard_tripped.labels(guard=report.guard_tripped).inc()
        if report.collect_result is not None:
            self.gc_runs.labels(mode=report.collect_mode, result=report.collect_result).inc()
            self.gc_duration.set(report.gc_duration_s)
            self.downtime.set(report.downtime_s)
            self.last_run_bytes.set(report.bytes_reclaimed)
            self.last_run_blobs.set(report.blobs_deleted)

"""Every Prometheus metric gc-daemon exports, on an injected CollectorRegistry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gc_daemon.model import RunReport

TRIGGERS = ("schedule", "manual")
RESULTS = ("success", "failure")


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

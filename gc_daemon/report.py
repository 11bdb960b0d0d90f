"""Human-readable output: the plan table and the run report."""

from __future__ import annotations

import json
from typing import TextIO

from gc_daemon.model import Action, Plan, RunReport


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plan_json(plan: Plan) -> dict[str, object]:
    return {
        "decisions": [
            {
                "repository": d.repository,
                "tag": d.tag,
                "digest": d.digest,
                "action": d.action.value,
                "reason": d.reason,
                "class": d.tag_class.value,
                "method": d.method.value if d.method else None,
                "size": d.size,
            }
            for d in plan.decisions
        ],
        "deletions": [{"repository": d.repository, "digest": d.digest, "tags": list(d.tags)} for d in plan.deletions],
        "untags": [{"repository": u.repository, "tag": u.tag, "digest": u.digest} for u in plan.untags],
        "skipped": [{"repository": r, "reason": why} for r, why in plan.skipped],
        "violations": [{"guard": g, "message": m} for g, m in plan.violations],
        "summary": plan.summary(),
    }


def report_json(report: RunReport) -> dict[str, object]:
    """The `run-now --json` document: the report and, when a plan was made, its decisions."""
    data = report.to_dict()
    if report.plan is not None:
        data["decisions"] = plan_json(report.plan)["decisions"]
    return data


def print_plan(plan: Plan, out: TextIO) -> None:
    rows = [("REPOSITORY", "TAG", "DIGEST", "ACTION", "REASON")]
    rows += [(d.repository, d.tag, short(d.digest), d.action.value, d.reason) for d in plan.decisions]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4] + "\n")
    for repository, why in plan.skipped:
        out.write(f"SKIPPED {repository}: {why}\n")
    if plan.deletions:
        out.write("\nManifests to delete (the tags on one line go together):\n")
        for d in plan.deletions:
            out.write(f"  {d.repository}@{d.digest}  tags: {', '.join(d.tags)}\n")
    if plan.untags:
        out.write("\nTags to untag alone (their manifest stays: a kept tag needs it):\n")
        for u in plan.untags:
            out.write(f"  {u.repository}:{u.tag}  ({short(u.digest)})\n")
    for guard, message in plan.violations:
        out.write(f"\nGUARD {guard}: {message}: a run would remove nothing (run-now --force to proceed)\n")
    s = plan.summary()
    out.write(
        f"\n{s['tags']} tags in {s['repositories']} repositories: keep {s['tags_kept']}, "
        f"remove {s['tags_to_delete']} ({s['manifests_to_delete']} manifests deleted, {s['tags_to_untag']} tags "
        "untagged alone), "
        f"{s['repositories_skipped']} repositories skipped\n"
    )


def print_report(report: RunReport, out: TextIO) -> None:
    if report.plan is not None:
        kept = [d for d in report.plan.decisions if d.action is Action.KEEP]
        out.write(f"Kept {len(kept)} tags.\n")
    for d in report.deleted:
        out.write(f"Removed {d.repository}:{', '.join(d.tags) or '(no tag left)'} ({short(d.digest)})\n")
    for u in report.untagged:
        out.write(f"Untagged {u.repository}:{u.tag} ({short(u.digest)} stays)\n")
    if report.untagged_manifests_deleted:
        out.write(f"Deleted {report.untagged_manifests_deleted} untagged manifests no tag needs.\n")
    for d, why in report.skipped_deletions:
        out.write(f"Not removed {d.repository}:{', '.join(d.tags)}: {why}\n")
    for repository, tag, digest in report.repushed:
        out.write(
            f"Kept {repository}:{tag}: pushed again after the scan (its old manifest {short(digest)} was deleted)\n"
        )
    for warning in report.warnings:
        out.write(f"Warning: {warning}\n")
    what = "Dry run (nothing removed)" if report.dry_run else f"Run {report.run_id}"
    out.write(
        f"{what}: {report.result}. tags_deleted={report.tags_deleted} manifests_deleted={report.manifests_deleted} "
        f"blobs_deleted={report.blobs_deleted} bytes_reclaimed={report.bytes_reclaimed} "
        f"({human_bytes(report.bytes_reclaimed)}) duration_s={report.duration_s:.1f}\n"
    )
    if report.blobs_unknown_size:
        out.write(f"{report.blobs_unknown_size} removed blobs had no size in any descriptor read; not counted.\n")
    if report.error:
        out.write(f"Error: {report.error}\n")


def dump_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, sort_keys=False)
    out.write("\n")

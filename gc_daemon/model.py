"""Frozen values that flow through one run: inventory -> plan -> report. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_MEDIA_TYPES = frozenset({MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX})
MANIFEST_MEDIA_TYPES = (MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX)


class BlobKind(StrEnum):
    MANIFEST = "manifest"
    CONFIG = "config"
    LAYER = "layer"


class TagClass(StrEnum):
    STABLE = "stable"
    UNSTABLE = "unstable"
    SIGNATURE = "signature"  # cosign-style sha256-<hex>.sig/.att/.sbom tag, or a manifest with a subject
    UNMANAGED = "unmanaged"  # no rule matches the repository


class Action(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


class Method(StrEnum):
    """How a tag is removed: with its manifest (DELETE by digest), or alone (untag)."""

    DIGEST = "digest"
    UNTAG = "untag"


@dataclass(frozen=True, slots=True)
class Blob:
    """A descriptor seen in a manifest: what the blob store holds under that digest."""

    digest: str
    size: int
    kind: BlobKind


@dataclass(frozen=True, slots=True)
class Image:
    """One manifest (image manifest, or index / manifest list) at a digest in a repository.

    ``blobs`` are the config and layers an image manifest references; an index has none
    of its own and lists its ``children`` (manifest digests) instead. ``created`` is the
    build time (an index takes its newest child's); ``None`` when unknown.
    """

    digest: str
    media_type: str
    size: int
    created: datetime | None = None
    created_source: str | None = None
    blobs: tuple[Blob, ...] = ()
    children: tuple[str, ...] = ()
    subject: str | None = None  # OCI `subject`: the manifest this one is attached to

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES


@dataclass(frozen=True, slots=True)
class Repository:
    """Everything read from one repository. ``error`` set means it could not be read whole."""

    name: str
    tags: Mapping[str, str] = field(default_factory=dict)  # tag -> digest
    images: Mapping[str, Image] = field(default_factory=dict)  # digest -> image, children included
    error: str | None = None
    pushed: Mapping[str, datetime] = field(default_factory=dict)  # tag -> push time, when storage tells it

    def closure(self, digest: str) -> set[str]:
        """The manifest digests an image needs: itself and, for an index, its children."""
        needed = {digest}
        image = self.images.get(digest)
        if image is not None:
            for child in image.children:
                if child not in needed:
                    needed |= self.closure(child)
        return needed

    def image_size(self, digest: str) -> int:
        """Bytes of an image as a whole: its manifests, configs and layers (an index's over its children)."""
        sizes: dict[str, int] = {}
        for manifest in self.closure(digest):
            image = self.images.get(manifest)
            if image is None:
                continue
            sizes[image.digest] = image.size
            for blob in image.blobs:
                sizes[blob.digest] = blob.size
        return sum(sizes.values())


@dataclass(frozen=True)
class Inventory:
    repositories: tuple[Repository, ...]
    scanned_at: datetime

    def blob_sizes(self) -> dict[str, int]:
        """Size of every blob (manifests included) seen in any descriptor, by digest."""
        sizes: dict[str, int] = {}
        for repo in self.repositories:
            for image in repo.images.values():
                sizes[image.digest] = image.size
                for blob in image.blobs:
                    sizes[blob.digest] = blob.size
        return sizes

    def blob_kinds(self) -> dict[str, BlobKind]:
        kinds: dict[str, BlobKind] = {}
        for repo in self.repositories:
            for image in repo.images.values():
                kinds[image.digest] = BlobKind.MANIFEST
                for blob in image.blobs:
                    kinds.setdefault(blob.digest, blob.kind)
        return kinds


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one tag, and why in words an operator can check.

    An unstable tag's reason names its rank among the repository's builds: that sentence is different for
    every tag, so it is kept as its parts (rank, count, time and its source, and the verdict the tags of
    a rule share) and written out when asked for; 100,000 tags would otherwise hold 100,000 sentences.
    """

    repository: str
    tag: str
    digest: str
    action: Action
    note: str  # the reason; for a ranked unstable tag, what follows its rank
    tag_class: TagClass
    rule: int | None = None  # index into [[retention.rules]], None when no rule matches
    method: Method | None = None  # set when action is DELETE
    size: int = 0  # bytes of the image as a whole (not what removing it frees: layers may be shared)
    rank: int = 0  # unstable tags: 1 is the newest build; 0 when not ranked
    of: int = 0  # how many unstable tags were ranked
    when: datetime | None = None  # the time the rank is ordered by, when known
    when_source: str = ""  # where that time comes from (or why there is none)

    @property
    def reason(self) -> str:
        if not self.rank:
            return self.note
        when = self.when_source if self.when is None else f"{self.when:%Y-%m-%dT%H:%M:%SZ} ({self.when_source})"
        return f"unstable: {ordinal(self.rank)} newest of {self.of}, {when}; {self.note}"


@dataclass(frozen=True, slots=True)
class Deletion:
    """One DELETE by digest: it removes the manifest and every tag listed (they go together)."""

    repository: str
    digest: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Untag:
    """Remove one tag and leave its manifest: another kept tag or a kept index still needs it."""

    repository: str
    tag: str
    digest: str


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    deletions: tuple[Deletion, ...]
    skipped: tuple[tuple[str, str], ...]  # (repository, why it was not planned)
    now: datetime
    untags: tuple[Untag, ...] = ()
    violations: tuple[tuple[str, str], ...] = ()  # (guard, message): the run must not remove anything

    def summary(self) -> dict[str, int]:
        return {
            "repositories": len({d.repository for d in self.decisions}) + len(self.skipped),
            "repositories_skipped": len(self.skipped),
            "tags": len(self.decisions),
            "tags_kept": sum(1 for d in self.decisions if d.action is Action.KEEP),
            "tags_to_delete": sum(1 for d in self.decisions if d.action is Action.DELETE),
            "manifests_to_delete": len(self.deletions),
            "tags_to_untag": len(self.untags),
        }


@dataclass
class RunReport:
    """What one run did. Filled in as the run goes; printed and exported at the end."""

    run_id: str
    trigger: str
    dry_run: bool
    started_at: datetime
    result: str = "failure"
    error: str | None = None
    plan: Plan | None = None
    tags_deleted: int = 0
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    layers_deleted: int = 0
    bytes_reclaimed: int = 0
    blobs_unknown_size: int = 0
    duration_s: float = 0.0
    collect_ran: bool = False
    collect_flags: tuple[str, ...] = ()
    collect_result: str | None = None  # "success" | "failure" once garbage-collect was attempted
    collect_mode: str = "online"
    gc_duration_s: float = 0.0
    downtime_s: float = 0.0  # the registry did not serve (restart after the collect)
    registry_up: bool | None = None  # did the registry serve at the end of the run
    guard_tripped: str | None = None
    phases: tuple[str, ...] = ("remove", "collect")
    deleted: list[Deletion] = field(default_factory=list)
    untagged: list[Untag] = field(default_factory=list)
    untagged_manifests_deleted: int = 0
    blobs_by_kind: dict[str, int] = field(default_factory=dict)  # layer, config, manifest, other
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    own_blobs: set[str] = field(default_factory=set)  # placeholder blobs this run wrote: not reclaimed space
    skipped_deletions: list[tuple[Deletion, str]] = field(default_factory=list)
    # (repository, tag, deleted digest): planned to go, pushed again after the scan, so it stayed
    repushed: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self, finished_at: datetime) -> dict[str, Any]:
        """The line kept per run in the state dir (history, status, catch-up)."""
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "result": self.result,
            "error": self.error,
            "phases": list(self.phases),
            "started_at": self.started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "tags_deleted": self.tags_deleted,
            "manifests_deleted": self.manifests_deleted,
            "blobs_deleted": self.blobs_deleted,
            "bytes_reclaimed": self.bytes_reclaimed,
            "collected": self.collect_result == "success",
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "result": self.result,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "tags_deleted": self.tags_deleted,
            "manifests_deleted": self.manifests_deleted,
            "blobs_deleted": self.blobs_deleted,
            "layers_deleted": self.layers_deleted,
            "bytes_reclaimed": self.bytes_reclaimed,
            "blobs_unknown_size": self.blobs_unknown_size,
            "blobs_by_kind": dict(self.blobs_by_kind),
            "bytes_by_kind": dict(self.bytes_by_kind),
            "collect": {
                "ran": self.collect_ran,
                "mode": self.collect_mode,
                "flags": list(self.collect_flags),
                "result": self.collect_result,
                "duration_s": round(self.gc_duration_s, 3),
                "downtime_s": round(self.downtime_s, 3),
            },
            "registry_up": self.registry_up,
            "phases": list(self.phases),
            "guard_tripped": self.guard_tripped,
            "plan": self.plan.summary() if self.plan else None,
            "deleted": [{"repository": d.repository, "digest": d.digest, "tags": list(d.tags)} for d in self.deleted],
            "untagged": [{"repository": u.repository, "tag": u.tag, "digest": u.digest} for u in self.untagged],
            "untagged_manifests_deleted": self.untagged_manifests_deleted,
            "skipped_deletions": [
                {"repository": d.repository, "digest": d.digest, "tags": list(d.tags), "why": why}
                for d, why in self.skipped_deletions
            ],
            "repushed": [{"repository": r, "tag": t, "deleted_digest": d} for r, t, d in self.repushed],
            "warnings": list(self.warnings),
        }

"""`gc-daemon restore RUN_ID`: put back the tags a run removed, byte for byte, from the audit log.

Between a removal and the collect that sweeps its blobs, a removed manifest's config and layers are still
in the blob store: PUT of the saved manifest bytes makes the very same digest whole again. Before writing
anything for a tag, every blob (and every child manifest of an index) it needs is checked; a tag whose
image lost a blob to a collect is refused, with the missing digests named, and nothing is written for it.
A tag that now points somewhere else is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gc_daemon.errors import RegistryError, RegistryNotFound
from gc_daemon.registry.client import RegistryClient
from gc_daemon.state import State

RESTORABLE = ("digest", "untag")


@dataclass
class Outcome:
    run_id: str
    restored: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.refused

    def lines(self) -> list[str]:
        out = [f"restored {line}" for line in self.restored]
        out += [f"already in place {line}" for line in self.unchanged]
        out += [f"NOT restored {line}" for line in self.refused]
        out.append(
            f"run {self.run_id}: {len(self.restored)} restored, {len(self.unchanged)} already in place, "
            f"{len(self.refused)} not restored"
        )
        return out


@dataclass(frozen=True)
class _Saved:
    repository: str
    digest: str
    media_type: str
    body: bytes


def _load(state: State, line: dict[str, Any]) -> _Saved | None:
    if not line.get("manifest"):
        return None
    body = (state.dir / line["manifest"]).read_bytes()
    if "sha256:" + hashlib.sha256(body).hexdigest() != line["digest"]:
        return None
    return _Saved(line["repository"], line["digest"], line.get("media_type") or "", body)


def _needs(saved: _Saved) -> tuple[list[str], list[str]]:
    """(blobs, child manifests) a manifest references."""
    manifest = json.loads(saved.body)
    blobs = [d["digest"] for d in [manifest.get("config") or {}, *(manifest.get("layers") or [])] if d.get("digest")]
    children = [m["digest"] for m in manifest.get("manifests") or []]
    return blobs, children


def restore(registry: RegistryClient, state: State, run_id: str, only: tuple[str, str] | None = None) -> Outcome:
    outcome = Outcome(run_id)
    lines = [line for line in state.audit_lines() if line.get("run_id") == run_id]
    if not lines:
        outcome.refused.append(f"run {run_id}: no removal of this run is in the audit log")
        return outcome
    removed_untagged = {(e["repository"], e["digest"]): e for e in lines if e.get("method") == "untagged"}
    wanted = [e for e in lines if e.get("method") in RESTORABLE and e.get("tag")]
    if only is not None:
        wanted = [e for e in wanted if (e["repository"], e["tag"]) == only]
        if not wanted:
            outcome.refused.append(f"{only[0]}:{only[1]}: run {run_id} did not remove this tag")
            return outcome
    for line in wanted:
        name = f"{line['repository']}:{line['tag']} ({line['digest'][:19]})"
        try:
            _restore_tag(registry, state, line, removed_untagged, outcome, name)
        except RegistryError as exc:
            outcome.refused.append(f"{name}: {exc}")
    return outcome


def _restore_tag(
    registry: RegistryClient,
    state: State,
    line: dict[str, Any],
    removed_untagged: dict[tuple[str, str], dict[str, Any]],
    outcome: Outcome,
    name: str,
) -> None:
    repository, tag, digest = line["repository"], line["tag"], line["digest"]
    current = registry.manifest_digest(repository, tag)
    if current == digest:
        outcome.unchanged.append(name)
        return
    if current is not None:
        outcome.refused.append(f"{name}: the tag now points to {current[:19]}; not overwritten")
        return
    saved = _load(state, line)
    if saved is None:
        outcome.refused.append(f"{name}: the saved manifest is missing or does not match its digest")
        return
    # Everything the image needs, checked before anything is written.
    to_put: list[_Saved] = []
    missing: list[str] = []
    pending = [saved]
    while pending:
        manifest = pending.pop()
        blobs, children = _needs(manifest)
        missing += [b for b in blobs if registry.blob_size(manifest.repository, b) is None]
        for child in children:
            try:
                registry.manifest(manifest.repository, child)
                continue
            except RegistryNotFound:
                pass
            child_line = removed_untagged.get((manifest.repository, child))
            child_saved = _load(state, child_line) if child_line else None
            if child_saved is None:
                missing.append(f"{child} (child manifest)")
            else:
                pending.append(child_saved)
                to_put.append(child_saved)
    if missing:
        outcome.refused.append(
            f"{name}: {len(missing)} blob(s) are gone (swept by garbage-collect): {', '.join(m[:19] for m in missing)}"
        )
        return
    for dependency in reversed(to_put):
        registry.put_manifest(dependency.repository, dependency.digest, dependency.body, dependency.media_type)
    registry.put_manifest(repository, tag, saved.body, saved.media_type)
    outcome.restored.append(name)

"""Parse what `registry garbage-collect` prints, for 2.8 and 3.x alike.

stdout carries `blob eligible for deletion: <digest>` per swept blob and
`manifest eligible for deletion: ...` per untagged manifest; failure shows as a non-zero
exit, `failed to garbage collect` / `configuration error`, or (2.8) exit 0 with
`Error: unknown flag` on stderr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BLOB = re.compile(r"^blob eligible for deletion: (sha256:[0-9a-f]{64})\s*$", re.M)
_MANIFEST = re.compile(r"^manifest eligible for deletion: \{?(?:(\S+) )?(sha256:[0-9a-f]{64})", re.M)
_SUMMARY = re.compile(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion", re.M)
_FAILURES = ("failed to garbage collect", "configuration error", "Error: unknown flag", "unknown command")
# 2.8 on a registry with nothing pushed yet: nothing to collect, not a failure.
_EMPTY = re.compile(r"Path not found: \S*/docker/registry/v2/repositories\s*$", re.M)


@dataclass(frozen=True)
class GcOutput:
    blobs: tuple[str, ...]
    manifests: tuple[str, ...]
    marked: int | None
    failure: str | None
    empty_registry: bool = False
    manifests_by_repository: tuple[tuple[str, str], ...] = ()  # (repository, digest) of untagged manifests


_REPO_LINE = re.compile(r"^([a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::\s.*)?$")
_MANIFEST_28 = re.compile(r"^manifest eligible for deletion: (sha256:[0-9a-f]{64})\s*$")
_MANIFEST_30 = re.compile(r"^manifest eligible for deletion: \{(\S+) (sha256:[0-9a-f]{64})")


def untagged_by_repository(stdout: str) -> tuple[tuple[str, str], ...]:
    """(repository, digest) of every `manifest eligible for deletion`.

    3.x names the repository on the line; 2.8 prints the digest inside that repository's block
    (after its `<repo>` line or its `<repo>: marking ...` lines), so the last repository seen owns it.
    """
    found: list[tuple[str, str]] = []
    current: str | None = None
    for line in stdout.splitlines():
        if m := _MANIFEST_30.match(line):
            found.append((m.group(1), m.group(2)))
        elif m := _MANIFEST_28.match(line):
            if current is None:
                raise ValueError(f"untagged manifest {m.group(1)} printed before any repository")
            found.append((current, m.group(1)))
        elif line.startswith(("blob eligible", "manifest eligible")) or not line.strip() or _SUMMARY.match(line):
            continue
        elif m := _REPO_LINE.match(line.rstrip()):
            current = m.group(1)
    return tuple(dict.fromkeys(found))


def parse(exit_code: int, stdout: str, stderr: str) -> GcOutput:
    blobs = tuple(dict.fromkeys(_BLOB.findall(stdout)))
    manifests = tuple(dict.fromkeys(m[1] for m in _MANIFEST.findall(stdout)))
    summary = _SUMMARY.search(stdout)
    marked = int(summary.group(1)) if summary else None
    text = f"{stdout}\n{stderr}"
    if _EMPTY.search(text) and not blobs:
        return GcOutput(blobs=(), manifests=(), marked=0, failure=None, empty_registry=True)
    failure = None
    for needle in _FAILURES:
        line = next((ln.strip() for ln in text.splitlines() if needle in ln), None)
        if line:
            failure = line
            break
    if failure is None and exit_code != 0:
        last = [ln.strip() for ln in text.splitlines() if ln.strip()]
        failure = f"exit code {exit_code}" + (f": {last[-1]}" if last else "")
    if failure is None and summary is None:
        failure = "garbage-collect printed no summary line; treating the run as failed"
    return GcOutput(
        blobs=blobs,
        manifests=manifests,
        marked=marked,
        failure=failure,
        manifests_by_repository=untagged_by_repository(stdout),
    )

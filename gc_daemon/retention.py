"""The retention planner: rules + inventory + now -> Plan. Pure: no I/O, no clock.

Every invariant the product promises about *which* tags go lives here:
- a tag in a repository no rule matches is kept;
- a stable tag is kept;
- the newest ``keep_unstable`` unstable tags are kept, and every unstable tag younger than ``keep_within``;
  "newest" by build time, else the time gc-daemon first saw that tag at that digest, else tag name;
- a signature / attestation / SBOM tag (``sha256-<hex>.sig|.att|.sbom``, or a manifest with an OCI
  ``subject``) follows its subject: kept while the image with that digest is kept, removed with it,
  never counted as a build;
- no manifest a kept tag needs (its digest, or a child of its index) is deleted: a tag to remove whose
  digest is still needed is *untagged* alone; other manifests are deleted by digest with all their tags;
- a repository that could not be read whole is skipped whole;
- guards (``max_delete_ratio`` per repository, ``max_deletions`` per run) are reported as violations;
  the run refuses to remove anything while one stands (unless forced).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gc_daemon.model import (
    Action,
    Decision,
    Deletion,
    Inventory,
    Method,
    Plan,
    Repository,
    TagClass,
    Untag,
)

SIGNATURE_TAG = re.compile(r"^sha256-([0-9a-f]{64})\.(sig|att|sbom)$")
FirstSeen = Mapping[tuple[str, str, str], datetime]  # (repository, tag, digest) -> first time seen
Pushes = Mapping[tuple[str, str, str], datetime]  # (repository, tag, digest) -> push time (registry events)
Pulls = Mapping[tuple[str, str], datetime]  # (repository, digest) -> last pull (registry events)


@dataclass(frozen=True)
class History:
    """What the registry's notifications told: push and pull times."""

    pushes: Pushes
    pulls: Pulls


@dataclass(frozen=True)
class RuleSpec:
    """A retention rule as plain values (built from config.Rule at the edge)."""

    repositories: tuple[str, ...]
    stable: tuple[str, ...]
    keep_unstable: int
    keep_within: timedelta | None = None
    keep_pulled_within: timedelta | None = None
    keep_pushed_within: timedelta | None = None

    def matches(self, repository: str) -> bool:
        return any(glob_to_regex(g).fullmatch(repository) for g in self.repositories)

    def stable_pattern(self, tag: str) -> str | None:
        for pattern in self.stable:
            if re.fullmatch(pattern, tag):
                return pattern
        return None


@dataclass(frozen=True)
class Guards:
    max_delete_ratio: float = 0.5
    max_deletions: int | None = None


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment; `**` crosses `/` (as operators expect of paths)."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


def natural_key(tag: str) -> tuple[tuple[int, int | str], ...]:
    """`develop-9` sorts before `develop-10`."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", tag) if part)


def subject_of(repo: Repository, tag: str) -> str | None:
    """The digest a signature-like tag is attached to, or None for an ordinary tag."""
    match = SIGNATURE_TAG.match(tag)
    if match:
        return f"sha256:{match.group(1)}"
    image = repo.images.get(repo.tags[tag])
    return image.subject if image is not None else None


@dataclass(frozen=True)
class _When:
    time: datetime | None
    source: str  # the ordering source, named in reasons


def _pushed(repo: Repository, tag: str, history: History | None) -> _When | None:
    """Push time: from the registry's events, else from the storage inventory."""
    digest = repo.tags[tag]
    if history is not None and (at := history.pushes.get((repo.name, tag, digest))) is not None:
        return _When(at, "pushed, registry event")
    if (at := repo.pushed.get(tag)) is not None:
        return _When(at, "push time from storage")
    return None


def _when(repo: Repository, tag: str, first_seen: FirstSeen, history: History | None = None) -> _When:
    digest = repo.tags[tag]
    pushed = _pushed(repo, tag, history)
    if pushed is not None:
        return pushed
    image = repo.images.get(digest)
    if image is not None and image.created is not None:
        return _When(image.created, image.created_source or "build time")
    seen = first_seen.get((repo.name, tag, digest))
    if seen is not None:
        return _When(seen, "first seen by gc-daemon, build time unknown")
    return _When(None, "build time unknown, ordered by tag name")


def newest_first(
    repo: Repository, tags: Sequence[str], first_seen: FirstSeen | None = None, history: History | None = None
) -> list[str]:
    """Tags ordered newest first; without a known time, after every timed one, highest tag name first."""
    seen = first_seen or {}
    times = {t: _when(repo, t, seen, history).time for t in tags}
    timed = [t for t in tags if times[t] is not None]
    untimed = [t for t in tags if times[t] is None]
    timed.sort(key=lambda t: (times[t], natural_key(t)), reverse=True)
    untimed.sort(key=natural_key, reverse=True)
    return timed + untimed


def _recently_used(repo: Repository, tag: str, rule: RuleSpec, now: datetime, history: History | None) -> str:
    """Why keep_pulled_within / keep_pushed_within keep this tag, or "" when they do not."""
    if rule.keep_pulled_within is not None and history is not None:
        pulled = history.pulls.get((repo.name, repo.tags[tag]))
        if pulled is not None and now - pulled < rule.keep_pulled_within:
            return (f"pulled {pulled.strftime('%Y-%m-%dT%H:%M:%SZ')}, within "
                    f"keep_pulled_within={format_duration(rule.keep_pulled_within)}")  # fmt: skip
    if rule.keep_pushed_within is not None:
        pushed = _pushed(repo, tag, history)
        if pushed is not None and pushed.time is not None and now - pushed.time < rule.keep_pushed_within:
            return (f"pushed {pushed.time.strftime('%Y-%m-%dT%H:%M:%SZ')}, within "
                    f"keep_pushed_within={format_duration(rule.keep_pushed_within)}")  # fmt: skip
    return ""


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def plan(
    inventory: Inventory,
    rules: Sequence[RuleSpec],
    now: datetime,
    *,
    first_seen: FirstSeen | None = None,
    guards: Guards | None = None,
    history: History | None = None,
) -> Plan:
    seen = first_seen or {}
    limits = guards or Guards()
    decisions: list[Decision] = []
    deletions: list[Deletion] = []
    untags: list[Untag] = []
    skipped: list[tuple[str, str]] = []
    violations: list[tuple[str, str]] = []
    for repo in sorted(inventory.repositories, key=lambda r: r.name):
        if repo.error is not None:
            skipped.append((repo.name, repo.error))
            continue
        repo_decisions = _decide(repo, rules, now, seen, history)
        decisions.extend(repo_decisions)
        removed = [d for d in repo_decisions if d.action is Action.DELETE]
        groups: dict[str, list[str]] = {}
        for d in removed:
            if d.method is Method.UNTAG:
                untags.append(Untag(repo.name, d.tag, d.digest))
            else:
                groups.setdefault(d.digest, []).append(d.tag)
        deletions.extend(Deletion(repo.name, digest, tuple(tags)) for digest, tags in sorted(groups.items()))
        if repo.tags and len(removed) / len(repo.tags) > limits.max_delete_ratio:
            violations.append((
                "max_delete_ratio",
                f"{repo.name} would lose {len(removed)} of {len(repo.tags)} tags "
                f"({len(removed) / len(repo.tags):.0%} > max_delete_ratio {limits.max_delete_ratio:.0%})",
            ))  # fmt: skip
    total = sum(1 for d in decisions if d.action is Action.DELETE)
    if limits.max_deletions is not None and total > limits.max_deletions:
        violations.append(("max_deletions", f"{total} tags would be removed (> max_deletions {limits.max_deletions})"))
    return Plan(
        decisions=tuple(decisions),
        deletions=tuple(deletions),
        skipped=tuple(skipped),
        now=now,
        untags=tuple(untags),
        violations=tuple(violations),
    )


def _decide(
    repo: Repository, rules: Sequence[RuleSpec], now: datetime, seen: FirstSeen, history: History | None = None
) -> list[Decision]:
    rule_index = next((i for i, rule in enumerate(rules) if rule.matches(repo.name)), None)
    tags = sorted(repo.tags, key=natural_key)
    if rule_index is None:
        reason = "no retention rule matches this repository: left untouched"
        return [
            Decision(
                repo.name, t, repo.tags[t], Action.KEEP, reason, TagClass.UNMANAGED, size=repo.image_size(repo.tags[t])
            )
            for t in tags
        ]
    rule = rules[rule_index]
    label = f"rule {rule_index + 1}"
    # The verdicts every unstable tag of this rule shares: one string each, not one per tag.
    kept_within = f"within keep_unstable={rule.keep_unstable} ({label})"
    beyond = f"beyond keep_unstable={rule.keep_unstable} ({label})"
    young_verdict = ""
    if rule.keep_within is not None:
        young_verdict = (f"beyond keep_unstable={rule.keep_unstable} but younger than "
                         f"keep_within={format_duration(rule.keep_within)} ({label})")  # fmt: skip
    stable_reasons: dict[str, str] = {}
    wanted: dict[str, tuple[Action, str, TagClass]] = {}
    ranks: dict[str, tuple[int, _When]] = {}
    unstable: list[str] = []
    signatures: dict[str, str] = {}
    for tag in tags:
        subject = subject_of(repo, tag)
        pattern = rule.stable_pattern(tag)
        if subject is not None:
            signatures[tag] = subject
        elif pattern is not None:
            if pattern not in stable_reasons:
                stable_reasons[pattern] = f"stable: matches /{pattern}/ ({label})"
            wanted[tag] = (Action.KEEP, stable_reasons[pattern], TagClass.STABLE)
        else:
            unstable.append(tag)
    ordered = newest_first(repo, unstable, seen, history)
    for rank, tag in enumerate(ordered, start=1):
        when = _when(repo, tag, seen, history)
        young = rule.keep_within is not None and when.time is not None and now - when.time < rule.keep_within
        within = rank <= rule.keep_unstable
        recent = _recently_used(repo, tag, rule, now, history)
        if within:
            verdict = kept_within
        elif recent:
            verdict = f"beyond keep_unstable={rule.keep_unstable} but {recent} ({label})"
        elif young:
            verdict = young_verdict
        else:
            verdict = beyond
        ranks[tag] = (rank, when)
        wanted[tag] = (Action.KEEP if within or young or recent else Action.DELETE, verdict, TagClass.UNSTABLE)

    needed: set[str] = set()
    for tag, (action, _, _) in wanted.items():
        if action is Action.KEEP:
            needed |= repo.closure(repo.tags[tag])
    for tag, subject in signatures.items():
        if subject in needed:
            wanted[tag] = (
                Action.KEEP,
                f"signature of {subject[:19]}, an image that is kept ({label})",
                TagClass.SIGNATURE,
            )
        else:
            why = "removed by this run" if subject in repo.images else "not in this repository"
            wanted[tag] = (Action.DELETE, f"signature of {subject[:19]}, {why} ({label})", TagClass.SIGNATURE)
    # Every manifest a kept tag needs, and the first kept tag (in tag order) that needs it.
    holders: dict[str, str] = {}
    for tag in tags:
        if wanted[tag][0] is Action.KEEP:
            for digest in repo.closure(repo.tags[tag]):
                holders.setdefault(digest, tag)

    decisions = []
    for tag in tags:
        action, note, tag_class = wanted[tag]
        digest = repo.tags[tag]
        method = None
        if action is Action.DELETE:
            holder = holders.get(digest)
            if holder is not None:
                method = Method.UNTAG
                how = "shares this digest" if repo.tags[holder] == digest else "is an index that contains it"
                note += f"; untagged alone: kept tag {holder!r} {how}"
            else:
                method = Method.DIGEST
        size = repo.image_size(digest)
        ranked = ranks.get(tag)
        if ranked is not None:
            rank, when = ranked
            decisions.append(Decision(repo.name, tag, digest, action, note, tag_class, rule_index, method, size,
                                      rank, len(ordered), when.time, when.source))  # fmt: skip
        else:
            decisions.append(Decision(repo.name, tag, digest, action, note, tag_class, rule_index, method, size))
    return decisions

"""The retention planner: rules + inventory + now -> Plan. Pure: no I/O, no clock.

Every invariant the product promises about *which* tags go lives here:
- a tag in a repository no rule matches is kept;
- a stable tag is kept;
- the newest ``keep_unstable`` unstable tags are kept, newest by build time, then by tag name;
- no manifest a kept tag needs (its digest, or a child of its index) is ever deleted: DELETE by
  digest would take every tag on that digest with it, so such a tag is kept and the reason says so;
- a repository that could not be read whole is skipped whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gc_daemon.model import Action, Decision, Deletion, Image, Inventory, Plan, Repository, TagClass


@dataclass(frozen=True)
class RuleSpec:
    """A retention rule as plain values (built from config.Rule at the edge)."""

    repositories: tuple[str, ...]
    stable: tuple[str, ...]
    keep_unstable: int

    def matches(self, repository: str) -> bool:
        return any(glob_to_regex(g).fullmatch(repository) for g in self.repositories)

    def stable_pattern(self, tag: str) -> str | None:
        for pattern in self.stable:
            if re.fullmatch(pattern, tag):
                return pattern
        return None


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


def newest_first(repo: Repository, tags: Sequence[str]) -> list[str]:
    """Tags ordered newest build first; unknown build times after every known one, by tag name."""

    def created(tag: str) -> datetime | None:
        image = repo.images.get(repo.tags[tag])
        return image.created if image else None

    known = [t for t in tags if created(t) is not None]
    unknown = [t for t in tags if created(t) is None]
    known.sort(key=lambda t: (created(t), natural_key(t)), reverse=True)
    unknown.sort(key=natural_key, reverse=True)
    return known + unknown


def _when(image: Image | None) -> str:
    if image is None or image.created is None:
        return "build time unknown, ordered by tag name"
    return f"built {image.created.strftime('%Y-%m-%dT%H:%M:%SZ')} ({image.created_source})"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan(inventory: Inventory, rules: Sequence[RuleSpec], now: datetime) -> Plan:
    decisions: list[Decision] = []
    deletions: list[Deletion] = []
    skipped: list[tuple[str, str]] = []
    for repo in sorted(inventory.repositories, key=lambda r: r.name):
        if repo.error is not None:
            skipped.append((repo.name, repo.error))
            continue
        repo_decisions, repo_deletions = _plan_repository(repo, rules)
        decisions.extend(repo_decisions)
        deletions.extend(repo_deletions)
    return Plan(decisions=tuple(decisions), deletions=tuple(deletions), skipped=tuple(skipped), now=now)


def _plan_repository(repo: Repository, rules: Sequence[RuleSpec]) -> tuple[list[Decision], list[Deletion]]:
    rule_index = next((i for i, rule in enumerate(rules) if rule.matches(repo.name)), None)
    tags = sorted(repo.tags, key=natural_key)
    if rule_index is None:
        return [
            Decision(
                repo.name,
                tag,
                repo.tags[tag],
                Action.KEEP,
                "no retention rule matches this repository: left untouched",
                TagClass.UNMANAGED,
            )
            for tag in tags
        ], []
    rule = rules[rule_index]
    label = f"rule {rule_index + 1}"
    wanted: dict[str, tuple[Action, str, TagClass]] = {}
    unstable: list[str] = []
    for tag in tags:
        pattern = rule.stable_pattern(tag)
        if pattern is not None:
            wanted[tag] = (Action.KEEP, f"stable: matches /{pattern}/ ({label})", TagClass.STABLE)
        else:
            unstable.append(tag)
    unstable = newest_first(repo, unstable)
    total = len(unstable)
    for rank, tag in enumerate(unstable, start=1):
        when = _when(repo.images.get(repo.tags[tag]))
        keep = rank <= rule.keep_unstable
        limit = f"{'within' if keep else 'beyond'} keep_unstable={rule.keep_unstable}"
        reason = f"unstable: {_ordinal(rank)} newest of {total}, {when}; {limit} ({label})"
        wanted[tag] = (Action.KEEP if keep else Action.DELETE, reason, TagClass.UNSTABLE)

    # Every manifest a kept tag needs: its digest and its index's children.
    needed: dict[str, str] = {}
    for tag in tags:
        if wanted[tag][0] is Action.KEEP:
            for digest in sorted(repo.closure(repo.tags[tag])):
                needed.setdefault(digest, tag)

    decisions: list[Decision] = []
    by_digest: dict[str, list[str]] = {}
    for tag in tags:
        action, reason, tag_class = wanted[tag]
        digest = repo.tags[tag]
        if action is Action.DELETE:
            holder = needed.get(digest)
            if holder is not None:
                same = repo.tags[holder] == digest
                how = "points to the same digest" if same else "is an index that contains it"
                action = Action.KEEP
                reason = f"{reason}; but kept: kept tag {holder!r} {how}, and DELETE by digest would remove that too"
            else:
                by_digest.setdefault(digest, []).append(tag)
        decisions.append(Decision(repo.name, tag, digest, action, reason, tag_class, rule_index))
    deletions = [Deletion(repo.name, digest, tuple(t)) for digest, t in sorted(by_digest.items())]
    return decisions, deletions

"""The planner, pure: rules + inventory + now -> Plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gc_daemon.model import MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, Action, Image, Inventory, Repository, TagClass
from gc_daemon.retention import RuleSpec, glob_to_regex, natural_key, plan

NOW = datetime(2026, 12, 3, tzinfo=UTC)
RULE = RuleSpec(repositories=("team/*",), stable=(r"\d+\.\d+\.\d+", "latest"), keep_unstable=3)


def image(n: int, created: datetime | None = None, children: tuple[str, ...] = ()) -> Image:
    media = MEDIA_OCI_INDEX if children else MEDIA_DOCKER_MANIFEST
    return Image(digest=f"sha256:{n:064x}", media_type=media, size=100, created=created, children=children,
                 created_source="config created" if created else None)  # fmt: skip


def repo(name: str, tags: dict[str, Image], extra: tuple[Image, ...] = ()) -> Repository:
    images = {i.digest: i for i in (*tags.values(), *extra)}
    return Repository(name=name, tags={t: i.digest for t, i in tags.items()}, images=images)


def actions(p: object) -> dict[str, str]:
    return {d.tag: d.action.value for d in p.decisions}  # type: ignore[attr-defined]


def test_stable_kept_and_newest_unstable_by_created_not_push_order() -> None:
    days = [5, 1, 8, 3, 7, 2, 6, 4]  # dict order = push order, different from created order
    tags = {f"develop-{i:03d}": image(i, NOW - timedelta(days=d)) for i, d in enumerate(days)}
    tags |= {"1.0.0": image(100), "1.1.0": image(101), "1.2.0": image(102)}
    tags["latest"] = tags["1.2.0"]
    p = plan(Inventory((repo("team/app", tags),), NOW), [RULE], NOW)
    kept = {t for t, a in actions(p).items() if a == "keep"}
    # newest three: days 1, 2, 3 ago -> develop-001, develop-005, develop-003
    assert kept == {"1.0.0", "1.1.0", "1.2.0", "latest", "develop-001", "develop-005", "develop-003"}
    assert len(p.deletions) == 5
    reasons = {d.tag: d.reason for d in p.decisions}
    assert "stable: matches" in reasons["latest"]
    assert "1st newest of 8" in reasons["develop-001"] and "config created" in reasons["develop-001"]
    assert "beyond keep_unstable=3" in reasons["develop-000"]


def test_repository_without_rule_is_untouched() -> None:
    p = plan(Inventory((repo("other/x", {"develop-1": image(1)}),), NOW), [RULE], NOW)
    (d,) = p.decisions
    assert d.action is Action.KEEP and d.tag_class is TagClass.UNMANAGED and "no retention rule" in d.reason
    assert p.deletions == ()


def test_first_matching_rule_wins() -> None:
    strict = RuleSpec(repositories=("team/app",), stable=(), keep_unstable=0)
    p = plan(Inventory((repo("team/app", {"x": image(1)}),), NOW), [strict, RULE], NOW)
    assert actions(p) == {"x": "delete"} and p.decisions[0].rule == 0


def test_unstable_tag_sharing_digest_with_stable_tag_is_kept_and_says_why() -> None:
    shared = image(1, NOW - timedelta(days=30))
    tags = {"1.0.0": shared, "develop-001": shared, "develop-002": image(2, NOW)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (r"\d+\.\d+\.\d+",), 1)], NOW)
    assert actions(p) == {"1.0.0": "keep", "develop-001": "keep", "develop-002": "keep"}
    reason = next(d.reason for d in p.decisions if d.tag == "develop-001")
    assert "'1.0.0' points to the same digest" in reason
    assert p.deletions == ()


def test_child_of_kept_index_is_never_deleted() -> None:
    child = image(1, NOW - timedelta(days=9))
    index = image(2, NOW - timedelta(days=9), children=(child.digest,))
    tags = {"2.0.0": index, "develop-amd64": child, "develop-new": image(3, NOW)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (r"2\.0\.0",), 1)], NOW)
    assert actions(p)["develop-amd64"] == "keep"
    assert "is an index that contains it" in next(d.reason for d in p.decisions if d.tag == "develop-amd64")


def test_tags_on_one_digest_are_deleted_together() -> None:
    old = image(1, NOW - timedelta(days=9))
    tags = {"a": old, "b": old, "c": image(2, NOW)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (), 1)], NOW)
    (deletion,) = p.deletions
    assert deletion.digest == old.digest and deletion.tags == ("a", "b")


def test_unknown_build_time_falls_back_to_natural_tag_order() -> None:
    tags = {f"develop-{n}": image(n) for n in (9, 10, 8, 11)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (), 2)], NOW)
    assert {t for t, a in actions(p).items() if a == "keep"} == {"develop-11", "develop-10"}
    assert "build time unknown, ordered by tag name" in p.decisions[0].reason


def test_known_build_times_rank_before_unknown() -> None:
    tags = {"develop-99": image(1), "develop-1": image(2, NOW - timedelta(days=300))}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (), 1)], NOW)
    assert actions(p) == {"develop-1": "keep", "develop-99": "delete"}


def test_unreadable_repository_is_skipped_whole() -> None:
    broken = Repository(name="team/broken", error="could not be read whole: boom")
    p = plan(Inventory((broken,), NOW), [RULE], NOW)
    assert p.decisions == () and p.deletions == () and p.skipped == (("team/broken", broken.error),)


def test_globs_keep_single_star_within_a_segment() -> None:
    assert glob_to_regex("caliopen/*").fullmatch("caliopen/web")
    assert not glob_to_regex("caliopen/*").fullmatch("caliopen/a/b")
    assert glob_to_regex("caliopen/**").fullmatch("caliopen/a/b")
    assert glob_to_regex("*").fullmatch("app") and not glob_to_regex("*").fullmatch("team/app")


def test_natural_key() -> None:
    assert sorted(["develop-10", "develop-9", "develop-100"], key=natural_key) == [
        "develop-9", "develop-10", "develop-100",
    ]  # fmt: skip


@st.composite
def repositories(draw: st.DrawFn) -> Repository:
    n_images = draw(st.integers(1, 8))
    images = [
        image(i, draw(st.one_of(st.none(), st.integers(0, 1000).map(lambda d: NOW - timedelta(hours=d)))))
        for i in range(n_images)
    ]
    # some indexes over earlier images
    for j in range(draw(st.integers(0, 2))):
        kids = tuple(draw(st.sets(st.sampled_from([i.digest for i in images]), min_size=1, max_size=3)))
        images.append(image(1000 + j, None, children=kids))
    candidates = ["1.0.0", "2.1.0", "latest", "develop-1", "develop-2", "develop-10", "feature-a", "pr-7", "nightly"]
    names = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=9, unique=True))
    tags = {name: draw(st.sampled_from(images)) for name in names}
    return repo("team/app", tags, extra=tuple(images))


@given(repositories(), st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_property_plan_never_deletes_what_a_kept_tag_needs(r: Repository, keep: int) -> None:
    rule = RuleSpec(("team/*",), (r"\d+\.\d+\.\d+", "latest"), keep)
    p = plan(Inventory((r,), NOW), [rule], NOW)
    decided = {d.tag: d for d in p.decisions}
    assert set(decided) == set(r.tags)
    needed = set().union(*(r.closure(d.digest) for d in p.decisions if d.action is Action.KEEP))
    deleted = {d.digest for d in p.deletions}
    assert not deleted & needed
    # Every stable tag is kept.
    assert all(decided[t].action is Action.KEEP for t in r.tags if rule.stable_pattern(t))
    # Deleting a digest deletes exactly the tags that point to it, all planned for deletion.
    for deletion in p.deletions:
        assert set(deletion.tags) == {t for t, dg in r.tags.items() if dg == deletion.digest}
        assert all(decided[t].action is Action.DELETE for t in deletion.tags)
    # At least min(N, unstable) unstable tags are kept (more only when protected by a kept digest).
    unstable = [t for t in r.tags if not rule.stable_pattern(t)]
    kept_unstable = [t for t in unstable if decided[t].action is Action.KEEP]
    assert len(kept_unstable) >= min(keep, len(unstable))
    protected = [t for t in kept_unstable if "but kept" in decided[t].reason]
    assert len(kept_unstable) - len(protected) == min(keep, len(unstable))

"""The planner, pure: rules + inventory + now -> Plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gc_daemon.model import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    Action,
    Blob,
    BlobKind,
    Image,
    Inventory,
    Method,
    Repository,
    TagClass,
    Untag,
)
from gc_daemon.retention import Guards, RuleSpec, glob_to_regex, natural_key, plan, subject_of

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


def test_unstable_tag_sharing_digest_with_stable_tag_is_untagged_alone() -> None:
    shared = image(1, NOW - timedelta(days=30))
    tags = {"1.0.0": shared, "develop-001": shared, "develop-002": image(2, NOW)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (r"\d+\.\d+\.\d+",), 1)], NOW)
    assert actions(p) == {"1.0.0": "keep", "develop-001": "delete", "develop-002": "keep"}
    decision = next(d for d in p.decisions if d.tag == "develop-001")
    assert decision.method is Method.UNTAG and "kept tag '1.0.0' shares this digest" in decision.reason
    assert p.deletions == () and p.untags == (Untag("team/app", "develop-001", shared.digest),)


def test_child_of_kept_index_is_never_deleted() -> None:
    child = image(1, NOW - timedelta(days=9))
    index = image(2, NOW - timedelta(days=9), children=(child.digest,))
    tags = {"2.0.0": index, "develop-amd64": child, "develop-new": image(3, NOW)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (r"2\.0\.0",), 1)], NOW)
    decision = next(d for d in p.decisions if d.tag == "develop-amd64")
    assert decision.method is Method.UNTAG and "is an index that contains it" in decision.reason
    assert all(d.digest != child.digest for d in p.deletions)


def test_index_size_counts_its_children() -> None:
    blobs = (Blob("sha256:" + "a" * 64, 1000, BlobKind.LAYER), Blob("sha256:" + "b" * 64, 5, BlobKind.CONFIG))
    child = Image(digest="sha256:" + "1" * 64, media_type=MEDIA_DOCKER_MANIFEST, size=10, blobs=blobs)
    index = image(2, children=(child.digest,))
    p = plan(Inventory((repo("team/app", {"1.0.0": index}, extra=(child,)),), NOW), [RULE], NOW)
    assert p.decisions[0].size == 100 + 10 + 1000 + 5


def test_signatures_follow_their_subject_and_are_not_builds() -> None:
    kept, dropped = image(1, NOW - timedelta(days=1)), image(2, NOW - timedelta(days=5))
    tags = {
        "develop-2": kept,
        "develop-1": dropped,
        f"sha256-{kept.digest[7:]}.sig": image(10),
        f"sha256-{dropped.digest[7:]}.sig": image(11),
        f"sha256-{dropped.digest[7:]}.att": image(12),
        f"sha256-{'9' * 64}.sbom": image(13),  # orphan: its subject is not in the repository
    }
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (), 1)], NOW)
    got = {d.tag: (d.action.value, d.tag_class.value) for d in p.decisions}
    assert got["develop-2"] == ("keep", "unstable") and got["develop-1"] == ("delete", "unstable")
    assert got[f"sha256-{kept.digest[7:]}.sig"] == ("keep", "signature")
    assert got[f"sha256-{dropped.digest[7:]}.sig"] == ("delete", "signature")
    assert got[f"sha256-{dropped.digest[7:]}.att"] == ("delete", "signature")
    assert got[f"sha256-{'9' * 64}.sbom"] == ("delete", "signature")
    assert "1st newest of 2" in next(d.reason for d in p.decisions if d.tag == "develop-2")


def test_oci_subject_manifest_follows_its_subject() -> None:
    kept = image(1, NOW)
    attached = Image(digest="sha256:" + "5" * 64, media_type=MEDIA_DOCKER_MANIFEST, size=1, subject=kept.digest)
    p = plan(Inventory((repo("team/app", {"develop-1": kept, "sbom-for-1": attached}),), NOW),
             [RuleSpec(("team/*",), (), 0)], NOW)  # fmt: skip
    assert {d.tag: d.tag_class.value for d in p.decisions}["sbom-for-1"] == "signature"
    assert actions(p) == {"develop-1": "delete", "sbom-for-1": "delete"}


def test_epoch_build_times_fall_back_to_first_seen_then_tag_name() -> None:
    tags = {"develop-9": image(9), "develop-10": image(10), "develop-11": image(11), "develop-8": image(8)}
    seen = {("team/app", "develop-8", image(8).digest): NOW - timedelta(hours=1)}
    p = plan(Inventory((repo("team/app", tags),), NOW), [RuleSpec(("team/*",), (), 2)], NOW, first_seen=seen)
    reasons = {d.tag: d.reason for d in p.decisions}
    assert actions(p) == {"develop-8": "keep", "develop-11": "keep", "develop-10": "delete", "develop-9": "delete"}
    assert "first seen by gc-daemon" in reasons["develop-8"]
    assert "build time unknown, ordered by tag name" in reasons["develop-11"]


def test_keep_within_keeps_young_builds_beyond_the_count() -> None:
    tags = {f"develop-{n}": image(n, NOW - timedelta(days=n)) for n in range(1, 8)}
    rule = RuleSpec(("team/*",), (), 2, keep_within=timedelta(days=5))
    p = plan(Inventory((repo("team/app", tags),), NOW), [rule], NOW)
    kept = {t for t, a in actions(p).items() if a == "keep"}
    assert kept == {"develop-1", "develop-2", "develop-3", "develop-4"}
    assert "younger than keep_within=5d" in next(d.reason for d in p.decisions if d.tag == "develop-4")


def test_guards_report_violations() -> None:
    tags = {f"develop-{n}": image(n, NOW - timedelta(days=n)) for n in range(1, 11)}
    inventory = Inventory((repo("team/app", tags),), NOW)
    p = plan(inventory, [RuleSpec(("team/*",), (), 2)], NOW)
    assert p.violations == (("max_delete_ratio", "team/app would lose 8 of 10 tags (80% > max_delete_ratio 50%)"),)
    p = plan(inventory, [RuleSpec(("team/*",), (), 2)], NOW, guards=Guards(max_delete_ratio=1.0, max_deletions=5))
    assert [g for g, _ in p.violations] == ["max_deletions"]
    p = plan(inventory, [RuleSpec(("team/*",), (), 6)], NOW)
    assert p.violations == ()


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
    for j in range(draw(st.integers(0, 2))):  # indexes over earlier images
        kids = tuple(draw(st.sets(st.sampled_from([i.digest for i in images]), min_size=1, max_size=3)))
        images.append(image(1000 + j, None, children=kids))
    candidates = ["1.0.0", "2.1.0", "latest", "develop-1", "develop-2", "develop-10", "feature-a", "pr-7", "nightly"]
    names = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=9, unique=True))
    tags = {name: draw(st.sampled_from(images)) for name in names}
    for subject in draw(st.sets(st.sampled_from([i.digest for i in images]), max_size=3)):  # signature tags
        tags[f"sha256-{subject[7:]}.sig"] = image(2000 + len(tags))
    return repo("team/app", tags, extra=tuple(images))


@given(repositories(), st.integers(0, 5), st.one_of(st.none(), st.integers(1, 800).map(lambda h: timedelta(hours=h))))
@settings(max_examples=400, deadline=None)
def test_property_plan_never_removes_what_a_kept_tag_needs(
    r: Repository, keep: int, keep_within: timedelta | None
) -> None:
    rule = RuleSpec(("team/*",), (r"\d+\.\d+\.\d+", "latest"), keep, keep_within)
    p = plan(Inventory((r,), NOW), [rule], NOW)
    decided = {d.tag: d for d in p.decisions}
    assert set(decided) == set(r.tags)
    kept_tags = [t for t, d in decided.items() if d.action is Action.KEEP]
    needed = set().union(*(r.closure(r.tags[t]) for t in kept_tags))
    # No manifest a kept tag needs is deleted; what is needed is only ever untagged.
    assert not {d.digest for d in p.deletions} & needed
    assert all(u.digest in needed for u in p.untags)
    # Every tag planned for removal is removed exactly once, by digest or by untag.
    removed = [t for d in p.deletions for t in d.tags] + [u.tag for u in p.untags]
    assert sorted(removed) == sorted(t for t, d in decided.items() if d.action is Action.DELETE)
    for deletion in p.deletions:  # a DELETE by digest takes exactly the tags planned on that digest
        assert set(deletion.tags) == {t for t, dg in r.tags.items() if dg == deletion.digest}
    # Every stable (non-signature) tag is kept.
    assert all(decided[t].action is Action.KEEP for t in r.tags if rule.stable_pattern(t) and not subject_of(r, t))
    # Signatures are not builds, and follow their subject.
    for t, d in decided.items():
        if subject_of(r, t):
            assert d.tag_class is TagClass.SIGNATURE
            assert (d.action is Action.KEEP) == (subject_of(r, t) in needed)
    # Exactly min(N, builds) unstable tags kept by count, plus those younger than keep_within.
    unstable = [t for t in r.tags if decided[t].tag_class is TagClass.UNSTABLE]
    by_count = [t for t in unstable if "within keep_unstable" in decided[t].reason]
    assert len(by_count) == min(keep, len(unstable))
    young = {t for t in unstable if "younger than keep_within" in decided[t].reason}
    assert {t for t in unstable if decided[t].action is Action.KEEP} == set(by_count) | young
    for t in young:
        image_ = r.images[r.tags[t]]
        assert keep_within is not None and image_.created is not None and NOW - image_.created < keep_within


def test_push_and_pull_history_from_registry_events() -> None:
    from gc_daemon.retention import History

    tags = {f"develop-{n}": image(n, NOW - timedelta(days=30 - n)) for n in range(1, 5)}
    r = repo("team/app", tags)
    # Pushed in the reverse of build order: the push time (events) orders, not the build time.
    pushes = {("team/app", t, i.digest): NOW - timedelta(days=n) for n, (t, i) in enumerate(tags.items(), start=1)}
    pulls = {("team/app", tags["develop-4"].digest): NOW - timedelta(hours=2)}
    rule = RuleSpec(("team/*",), (), 1, keep_pulled_within=timedelta(days=7))
    p = plan(Inventory((r,), NOW), [rule], NOW, history=History(pushes, pulls))
    reasons = {d.tag: d.reason for d in p.decisions}
    assert actions(p) == {"develop-1": "keep", "develop-2": "delete", "develop-3": "delete", "develop-4": "keep"}
    assert "pushed, registry event" in reasons["develop-1"]
    assert "within keep_pulled_within=7d" in reasons["develop-4"]
    pushed_rule = RuleSpec(("team/*",), (), 0, keep_pushed_within=timedelta(days=2, hours=12))
    p = plan(Inventory((r,), NOW), [pushed_rule], NOW, history=History(pushes, {}))
    assert {t for t, a in actions(p).items() if a == "keep"} == {"develop-1", "develop-2"}

"""Parsing garbage-collect output: what was swept, and every way it says it failed."""

from __future__ import annotations

from gc_daemon.collect.output import parse

A, B, M = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
OUT_28 = f"""team/app
team/app: marking manifest sha256:{"d" * 64} \nteam/app: marking blob sha256:{"e" * 64}
manifest eligible for deletion: {M}

2 blobs marked, 2 blobs and 1 manifests eligible for deletion
blob eligible for deletion: {A}
blob eligible for deletion: {B}
"""


def test_swept_blobs_and_manifests_28() -> None:
    out = parse(0, OUT_28, 'time=... level=info msg="Deleting blob: /docker/registry/v2/blobs/sha256/aa/aaa"')
    assert out.failure is None and out.blobs == (A, B) and out.manifests == (M,) and out.marked == 2


def test_manifest_line_30_format() -> None:
    out = parse(
        0,
        OUT_28.replace(
            f"manifest eligible for deletion: {M}", f"manifest eligible for deletion: {{team/app {M} [develop]}}"
        ),
        "",
    )
    assert out.manifests == (M,)


def test_failures() -> None:
    assert parse(1, "", "failed to garbage collect: failed to mark: boom").failure.startswith("failed to garbage")  # type: ignore[union-attr]
    assert "unknown flag" in (parse(0, "", "Error: unknown flag: --quiet\nUsage: ...").failure or "")
    assert "configuration error" in (parse(1, "", "configuration error: open /nope.yml: no such file").failure or "")
    assert parse(2, "", "").failure == "exit code 2"
    assert "no summary" in (parse(0, "", "").failure or "")


def test_empty_registry_is_not_a_failure() -> None:
    out = parse(
        1, "", "failed to garbage collect: failed to mark: filesystem: Path not found: /docker/registry/v2/repositories"
    )
    assert out.failure is None and out.empty_registry and out.blobs == ()


def test_untagged_manifests_are_attributed_to_their_repository_28() -> None:
    out = """team/app
manifest eligible for deletion: sha256:1111111111111111111111111111111111111111111111111111111111111111
team/app: marking manifest sha256:7f6d2a299ee5add9f7890e360f1482c08686be4a28af0590654438f84503df48 ${SP}
team/app: marking blob sha256:6f335e219dfd543f7de57673b064f0707116dabf6ce7c14d42d5147569329f70
manifest eligible for deletion: sha256:2222222222222222222222222222222222222222222222222222222222222222
other/x
other/x: marking manifest sha256:7f6d2a299ee5add9f7890e360f1482c08686be4a28af0590654438f84503df48 ${SP}
manifest eligible for deletion: sha256:3333333333333333333333333333333333333333333333333333333333333333

3 blobs marked, 0 blobs and 3 manifests eligible for deletion
""".replace(" ${SP}", " ")  # 2.8 ends marking lines with a space
    assert parse(0, out, "").manifests_by_repository == (
        ("team/app", "sha256:" + "1" * 64),
        ("team/app", "sha256:" + "2" * 64),
        ("other/x", "sha256:" + "3" * 64),
    )


def test_untagged_manifests_30_format_name_the_repository() -> None:
    out = f"manifest eligible for deletion: {{team/app {M} [develop]}}\n\n"
    out += "0 blobs marked, 0 blobs and 1 manifests eligible for deletion\n"
    assert parse(0, out, "").manifests_by_repository == (("team/app", M),)

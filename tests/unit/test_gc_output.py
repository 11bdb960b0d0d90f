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

"""Tests of the test-support code against a real registry: the helpers must be able to fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    Pushed,
    Pusher,
    RegistryHTTPError,
    pull_whole,
    sha256_digest,
)
from tests.support.registry import RegistryContainer

MakeRegistry = Callable[..., RegistryContainer]


def blob_path(reg: RegistryContainer, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return reg.storage_dir / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def test_integration_marker_is_automatic(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None


def test_manifest_accept_lists_the_four_types() -> None:
    assert MANIFEST_ACCEPT.split(", ") == [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]


def test_registry_binds_loopback_with_deletes_as_asked(make_registry: MakeRegistry) -> None:
    on = make_registry()
    off = make_registry(delete_enabled=False)
    assert on.url == f"http://127.0.0.1:{on.port}" and on.port != off.port
    inspect = on.container().attrs
    assert inspect["HostConfig"]["NetworkMode"] == "host"
    assert inspect["Config"]["Labels"]["gc-daemon-test"] == "1"
    assert on.name.startswith("gcd-test-")
    with Pusher(on.url) as p_on, Pusher(off.url) as p_off:
        a = p_on.push_image("app", "v1")
        b = p_off.push_image("app", "v1")
        resp = p_off.client.delete(f"/v2/app/manifests/{b.digest}")
        assert resp.status_code == 405 and resp.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert p_on.client.delete(f"/v2/app/manifests/{a.digest}").status_code == 202
        assert p_on.tags("app") == []  # all tags deleted: 200 {"tags": null}
        assert p_off.tags("app") == ["v1"]


def test_docker_image_push_and_pull_whole(registry: RegistryContainer, pusher: Pusher) -> None:
    layers = [pusher.random_layer(1000), pusher.random_layer(3000)]
    img = pusher.push_image("team/app", "v1", layers=layers, labels={"a": "b"}, created="2024-01-02T03:04:05Z")
    assert img.media_type == DOCKER_MANIFEST
    assert img.blobs == {
        img.config_digest: img.blobs[str(img.config_digest)],
        sha256_digest(layers[0]): 1000,
        sha256_digest(layers[1]): 3000,
    }
    config = json.loads(blob_path(registry, str(img.config_digest)).read_bytes())
    assert config["created"] == "2024-01-02T03:04:05Z"
    assert config["config"]["Labels"] == {"a": "b"}
    assert config["rootfs"]["diff_ids"] == [sha256_digest(x) for x in layers]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert pusher.tags("team/app") == ["v1"]
    assert pusher.digest_of("team/app", "v1") == img.digest
    assert pull_whole(registry.url, "team/app", "v1") == img
    assert pull_whole(registry.url, "team/app", img.digest) == img


def test_config_created_and_determinism(registry: RegistryContainer, pusher: Pusher) -> None:
    layer = pusher.random_layer()
    fixed1 = pusher.push_image("r", "a", layers=[layer], created="1970-01-01T00:00:00Z")
    fixed2 = pusher.push_image("r", "b", layers=[layer], created="1970-01-01T00:00:00Z")
    assert fixed1.digest == fixed2.digest  # identical inputs, identical image
    now1 = pusher.push_image("r", "c", layers=[layer])
    now2 = pusher.push_image("r", "d", layers=[layer])
    assert now1.config_digest != now2.config_digest
    none = pusher.push_image("r", "e", layers=[layer], created=None)
    config = json.loads(blob_path(registry, str(none.config_digest)).read_bytes())
    assert "created" not in config and all("created" not in h for h in config["history"])


def test_oci_image_with_annotations(registry: RegistryContainer, pusher: Pusher) -> None:
    ann = {"org.opencontainers.image.created": "2023-05-06T07:08:09Z"}
    img = pusher.push_image("oci/app", "1.0", media="oci", annotations=ann, platform=("linux", "arm64"))
    assert img.media_type == OCI_MANIFEST
    manifest = json.loads(img.manifest)
    assert manifest["annotations"] == ann
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert pull_whole(registry.url, "oci/app", "1.0") == img
    with pytest.raises(ValueError):
        pusher.push_image("oci/app", "x", annotations=ann)  # docker schema2 has no annotations


def test_untagged_push_by_digest(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("loose", None)
    assert pusher.tags("loose") == []  # never tagged: 404 NAME_UNKNOWN
    assert pusher.digest_of("loose", img.digest) == img.digest
    assert pusher.digest_of("loose", "latest") is None
    assert pull_whole(registry.url, "loose", img.digest) == img


@pytest.mark.parametrize(("media", "index_type"), [("oci", OCI_INDEX), ("docker", DOCKER_MANIFEST_LIST)])
def test_index_with_untagged_children(registry: RegistryContainer, pusher: Pusher, media: str, index_type: str) -> None:
    child_media = "oci" if media == "oci" else "docker"
    children = [
        pusher.push_image("multi", None, media=child_media, platform=("linux", arch))  # type: ignore[arg-type]
        for arch in ("amd64", "arm64")
    ]
    idx = pusher.push_index("multi", "latest", children, media=media)  # type: ignore[arg-type]
    assert idx.media_type == index_type and idx.config_digest is None
    assert idx.blobs == {**children[0].blobs, **children[1].blobs}
    entries = json.loads(idx.manifest)["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64"]
    assert pusher.tags("multi") == ["latest"]
    pulled = pull_whole(registry.url, "multi", "latest")
    assert pulled == idx
    assert [c.digest for c in pulled.children] == [c.digest for c in children]


def test_docker_manifest_list_refuses_oci_children(pusher: Pusher) -> None:
    child = pusher.push_image("multi", None, media="oci")
    with pytest.raises(ValueError):
        pusher.push_index("multi", "x", [child], media="docker")


def test_two_tags_one_digest(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("app", "v2")
    pusher.tag("app", "latest", img)
    assert pusher.tags("app") == ["latest", "v2"]
    assert pusher.digest_of("app", "latest") == pusher.digest_of("app", "v2") == img.digest
    assert pull_whole(registry.url, "app", "latest") == pull_whole(registry.url, "app", "v2") == img


def test_missing_layer_detected_after_restart(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("app", "v1", layers=[pusher.random_layer(), pusher.random_layer()])
    victim = list(img.blobs)[2]  # the second layer (the config is first)
    blob_path(registry, victim).unlink()
    before = registry.started_at()
    registry.restart()
    assert registry.started_at() != before
    with pytest.raises(AssertionError, match=f"layer 1 blob {victim}: GET -> 404"):
        pull_whole(registry.url, "app", "v1")


def test_missing_layer_detected_by_fresh_registry_and_with_stale_cache(
    registry: RegistryContainer, pusher: Pusher, make_registry: MakeRegistry
) -> None:
    img = pusher.push_image("app", "v1")
    assert pull_whole(registry.url, "app", "v1") == img  # warms the blob-descriptor cache
    victim = next(d for d in img.blobs if d != img.config_digest)
    blob_path(registry, victim).unlink()
    # The running registry still believes in the blob (HEAD 200) and breaks off the GET body.
    with pytest.raises(AssertionError, match=victim):
        pull_whole(registry.url, "app", "v1")
    fresh = make_registry(storage_dir=registry.storage_dir)
    with pytest.raises(AssertionError, match=f"{victim}: GET -> 404"):
        pull_whole(fresh.url, "app", "v1")


def test_missing_index_child_detected(registry: RegistryContainer, pusher: Pusher) -> None:
    children = [pusher.push_image("multi", None, platform=("linux", a)) for a in ("amd64", "arm64")]
    pusher.push_index("multi", "latest", children)
    blob_path(registry, children[1].digest).unlink()
    registry.restart()
    with pytest.raises(AssertionError, match=f"child {children[1].digest}: GET manifest .* 404"):
        pull_whole(registry.url, "multi", "latest")


def test_missing_child_layer_detected(registry: RegistryContainer, pusher: Pusher) -> None:
    children = [pusher.push_image("multi", None, platform=("linux", a)) for a in ("amd64", "arm64")]
    pusher.push_index("multi", "latest", children, media="oci")
    victim = next(d for d in children[0].blobs if d != children[0].config_digest)
    blob_path(registry, victim).unlink()
    registry.restart()
    with pytest.raises(AssertionError, match=victim):
        pull_whole(registry.url, "multi", "latest")


def test_pull_whole_checks_descriptor_sizes(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("app", "v1")
    manifest = json.loads(img.manifest)
    manifest["layers"][0]["size"] += 5
    pusher.push_manifest("app", "bad", json.dumps(manifest).encode(), DOCKER_MANIFEST)  # 2.8 accepts it
    with pytest.raises(AssertionError, match="descriptor says"):
        pull_whole(registry.url, "app", "bad")


def test_pull_whole_checks_blob_content(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("app", "v1")
    victim = next(d for d in img.blobs if d != img.config_digest)
    path = blob_path(registry, victim)
    path.write_bytes(os.urandom(path.stat().st_size))  # same size, other bytes: the registry serves them
    with pytest.raises(AssertionError, match=f"layer 0 blob {victim}: content has digest"):
        pull_whole(registry.url, "app", "v1")


def test_pull_whole_checks_index_platforms(registry: RegistryContainer, pusher: Pusher) -> None:
    child = pusher.push_image("multi", None, platform=("linux", "arm64"))
    idx = json.loads(pusher.push_index("multi", "good", [child]).manifest)
    idx["manifests"][0]["platform"]["architecture"] = "amd64"
    pusher.push_manifest("multi", "bad", json.dumps(idx).encode(), OCI_INDEX)
    pull_whole(registry.url, "multi", "good")
    with pytest.raises(AssertionError, match="platform"):
        pull_whole(registry.url, "multi", "bad")


def test_pull_whole_unknown_reference(registry: RegistryContainer, pusher: Pusher) -> None:
    pusher.push_image("app", "v1")
    with pytest.raises(AssertionError, match="app:nope: GET manifest nope -> 404"):
        pull_whole(registry.url, "app", "nope")


def test_push_manifest_surfaces_registry_errors(pusher: Pusher) -> None:
    img = pusher.push_image("app", "v1")
    manifest = json.loads(img.manifest)
    manifest["layers"][0]["digest"] = "sha256:" + "0" * 64
    with pytest.raises(RegistryHTTPError, match="MANIFEST_BLOB_UNKNOWN") as info:
        pusher.push_manifest("app", "broken", json.dumps(manifest).encode(), DOCKER_MANIFEST)
    assert info.value.status_code == 400


def test_blob_store_counts_exactly_the_pushed_blobs(registry: RegistryContainer, pusher: Pusher) -> None:
    assert registry.blob_store() == {}
    img = pusher.push_image("app", "v1", layers=[pusher.random_layer(100), pusher.random_layer(200)])
    children = [pusher.push_image("multi", None, platform=("linux", a)) for a in ("amd64", "arm64")]
    idx = pusher.push_index("multi", "latest", children)
    expected = {**img.blobs, **img.manifest_digests, **idx.blobs, **idx.manifest_digests}
    assert len(expected) == 4 + 7  # config+2 layers+manifest; 2x(config+layer+manifest)+index
    assert registry.blob_store() == expected


def test_skip_existing_does_not_reupload(registry: RegistryContainer, pusher: Pusher) -> None:
    layer = pusher.random_layer()
    pusher.push_blob("app", layer)
    blob_path(registry, sha256_digest(layer)).unlink()
    # The stale cache says the blob exists, so a client that HEADs first skips it: a broken image.
    img = pusher.push_image("app", "v1", layers=[layer], skip_existing=True)
    assert sha256_digest(layer) not in registry.blob_store()
    with pytest.raises(AssertionError):
        pull_whole(registry.url, "app", "v1")
    pusher.push_image("app", "v2", layers=[layer])  # without skip_existing the blob is uploaded again
    assert pull_whole(registry.url, "app", "v1") == img


def test_snapshot_stable_across_reads(registry: RegistryContainer, pusher: Pusher) -> None:
    img = pusher.push_image("app", "v1")
    children = [pusher.push_image("multi", None, platform=("linux", a)) for a in ("amd64", "arm64")]
    pusher.push_index("multi", "latest", children)
    before = registry.snapshot()
    assert before["docker/registry/v2/repositories/app/_manifests/tags/v1"] == "dir"
    assert any(k.endswith("/data") and v != "dir" for k, v in before.items())
    started = registry.started_at()
    pusher.tags("app")
    pusher.digest_of("app", "v1")
    pull_whole(registry.url, "app", "v1")
    pull_whole(registry.url, "multi", "latest")
    with httpx.Client(base_url=registry.url) as http:
        assert http.get("/v2/_catalog").json() == {"repositories": ["app", "multi"]}
        assert http.head(f"/v2/app/blobs/{img.config_digest}").status_code == 200
    assert registry.snapshot() == before
    assert registry.started_at() == started
    pusher.tag("app", "v2", img)  # a write shows up
    assert registry.snapshot() != before


@pytest.mark.parametrize(
    "location",
    [
        "/v2/app/blobs/uploads/u1?_state=abc",
        "http://127.0.0.1:1/v2/app/blobs/uploads/u1?_state=abc",
        "/v2/app/blobs/uploads/u1",
    ],
)
def test_push_blob_location_forms(location: str) -> None:
    seen: list[httpx.URL] = []
    data = b"hello"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": location})
        return httpx.Response(201, headers={"Docker-Content-Digest": sha256_digest(data)})

    with Pusher("http://127.0.0.1:1", transport=httpx.MockTransport(handler)) as p:
        assert p.push_blob("app", data) == sha256_digest(data)
    put = seen[1]
    assert str(put).startswith("http://127.0.0.1:1/v2/app/blobs/uploads/u1?")
    assert put.params["digest"] == sha256_digest(data)
    assert put.params.get("_state") == ("abc" if "_state" in location else None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, "scripts/setup-env.sh"),
        ({"GC_DAEMON_TEST_REGISTRY_IMAGE": "gc-daemon-test/absent:0"}, "scripts/setup-env.sh"),
        ({"GC_DAEMON_SKIP_INTEGRATION": "1"}, "1 skipped"),
    ],
)
def test_environment_problems_fail_not_skip(env: dict[str, str], expected: str) -> None:
    """Without an engine the integration tests fail (pointing at setup); they skip only on request."""
    root = Path(__file__).parents[2]
    target = "tests/integration/test_support.py::test_untagged_push_by_digest"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert expected in out, out
    assert proc.returncode == (0 if "GC_DAEMON_SKIP_INTEGRATION" in env else 1), out


def test_pushed_manifest_digests_cover_children() -> None:
    child = Pushed("r", "sha256:c", DOCKER_MANIFEST, b"12", "sha256:cfg", {"sha256:cfg": 1}, (), ("linux", "x"))
    idx = Pushed("r", "sha256:i", OCI_INDEX, b"123", None, child.blobs, (child,))
    assert idx.manifest_digests == {"sha256:i": 3, "sha256:c": 2}

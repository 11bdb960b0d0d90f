"""Synthetic images pushed through the Docker Registry V2 API with httpx (no image tooling).

Layers are random bytes, so every blob size is exact and no two pushes share a layer unless the
caller passes the same bytes. `pull_whole` does what a client does on pull and fails loudly when any
manifest or blob is missing or wrong: "tag still listed" does not prove an image is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX))

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    """Current UTC time as RFC 3339 with microseconds (distinct configs for back-to-back pushes)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class RegistryHTTPError(AssertionError):
    """The registry answered an unexpected status (an AssertionError so pytest reports it plainly)."""

    def __init__(self, resp: httpx.Response, expected: tuple[int, ...]) -> None:
        self.status_code = resp.status_code
        self.body = resp.text
        super().__init__(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code} "
            f"(expected {'/'.join(map(str, expected))}): {resp.text[:500]}"
        )


def _expect(resp: httpx.Response, *codes: int) -> httpx.Response:
    if resp.status_code not in codes:
        raise RegistryHTTPError(resp, codes)
    return resp


@dataclass(frozen=True)
class Pushed:
    repository: str
    digest: str
    media_type: str
    manifest: bytes
    config_digest: str | None
    # every blob this image references (config and layers; the children's too for an index): digest -> size
    blobs: dict[str, int]
    children: tuple[Pushed, ...] = ()
    # (os, architecture) of an image; None for an index
    platform: tuple[str, str] | None = None

    @property
    def manifest_digests(self) -> dict[str, int]:
        """Digest -> size of this manifest and its children's (the registry stores them as blobs)."""
        result = {self.digest: len(self.manifest)}
        for child in self.children:
            result.update(child.manifest_digests)
        return result


class Pusher:
    """Pushes blobs, images and indexes to one registry."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=30, transport=transport)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def random_layer(size: int = 4096) -> bytes:
        return os.urandom(size)

    def push_blob(self, repository: str, data: bytes, *, skip_existing: bool = False) -> str:
        """Upload one blob (POST then PUT ?digest=). With skip_existing, first HEAD it and skip the
        upload on 200, as docker clients do (this is how a stale blob cache breaks re-pushes)."""
        digest = sha256_digest(data)
        if skip_existing:
            head = self.client.head(f"/v2/{repository}/blobs/{digest}")
            if head.status_code == 200:
                return digest
        resp = _expect(self.client.post(f"/v2/{repository}/blobs/uploads/"), 202)
        location = resp.headers.get("Location")
        if not location:
            raise AssertionError(f"upload POST for {repository} answered 202 without Location")
        # Location may be relative or absolute and usually carries a query (_state=...) already.
        url = httpx.URL(self.base_url + "/").join(location).copy_merge_params({"digest": digest})
        put = _expect(self.client.put(url, content=data, headers={"Content-Type": "application/octet-stream"}), 201)
        got = put.headers.get("Docker-Content-Digest")
        if got is not None and got != digest:
            raise AssertionError(f"blob upload to {repository}: registry says {got}, expected {digest}")
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; return its digest (checked against the registry)."""
        digest = sha256_digest(body)
        resp = _expect(
            self.client.put(
                f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
            ),
            201,
        )
        got = resp.headers.get("Docker-Content-Digest")
        if got != digest:
            raise AssertionError(
                f"PUT manifest {repository}:{reference}: Docker-Content-Digest {got}, sha256 of body {digest}"
            )
        return digest

    def push_image(
        self,
        repository: str,
        tag: str | None,
        *,
        layers: list[bytes] | None = None,
        created: str | None = "now",
        media: Literal["docker", "oci"] = "docker",
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        platform: tuple[str, str] = ("linux", "amd64"),
        skip_existing: bool = False,
    ) -> Pushed:
        """Push a config, its layers and a manifest. tag=None pushes by digest (untagged).

        `created="now"` stamps the current time; any other string is used as is; None omits the key.
        The config holds nothing random, so identical inputs (fixed `created`, same layers) give the
        same digest.
        """
        if layers is None:
            layers = [self.random_layer(2048)]
        if annotations is not None and media != "oci":
            raise ValueError("annotations are only supported on OCI manifests")
        os_name, arch = platform
        created_at = now_iso() if created == "now" else created
        history: list[dict[str, Any]] = []
        for i in range(len(layers)):
            entry: dict[str, Any] = {"created_by": f"gc-daemon-test layer {i}"}
            if created_at is not None:
                entry["created"] = created_at
            history.append(entry)
        config: dict[str, Any] = {"architecture": arch, "os": os_name}
        if created_at is not None:
            config["created"] = created_at
        config["config"] = {"Labels": dict(labels or {})}
        config["rootfs"] = {"type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]}
        config["history"] = history
        config_bytes = json.dumps(config, sort_keys=True).encode()

        blobs: dict[str, int] = {}
        config_digest = self.push_blob(repository, config_bytes, skip_existing=skip_existing)
        blobs[config_digest] = len(config_bytes)
        layer_type = DOCKER_LAYER if media == "docker" else OCI_LAYER
        layer_descs = []
        for layer in layers:
            d = self.push_blob(repository, layer, skip_existing=skip_existing)
            blobs[d] = len(layer)
            layer_descs.append({"mediaType": layer_type, "digest": d, "size": len(layer)})
        media_type = DOCKER_MANIFEST if media == "docker" else OCI_MANIFEST
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": DOCKER_CONFIG if media == "docker" else OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layer_descs,
        }
        if annotations is not None:
            manifest["annotations"] = dict(annotations)
        body = json.dumps(manifest, indent=3).encode()
        digest = self.push_manifest(repository, tag or sha256_digest(body), body, media_type)
        return Pushed(repository, digest, media_type, body, config_digest, blobs, (), (os_name, arch))

    def push_index(
        self,
        repository: str,
        tag: str | None,
        children: list[Pushed],
        *,
        media: Literal["oci", "docker"] = "oci",
        annotations: dict[str, str] | None = None,
    ) -> Pushed:
        """Push an OCI index or a Docker manifest list over already-pushed (untagged) children."""
        media_type = OCI_INDEX if media == "oci" else DOCKER_MANIFEST_LIST
        allowed = IMAGE_TYPES if media == "oci" else (DOCKER_MANIFEST,)
        entries = []
        blobs: dict[str, int] = {}
        for child in children:
            if child.repository != repository:
                raise ValueError(f"child {child.digest} was pushed to {child.repository}, not {repository}")
            if child.media_type not in allowed or child.platform is None:
                raise ValueError(f"a {media_type} cannot hold a {child.media_type} child")
            os_name, arch = child.platform
            entries.append(
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": {"architecture": arch, "os": os_name},
                }
            )
            blobs.update(child.blobs)
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        if annotations is not None:
            if media != "oci":
                raise ValueError("annotations are only supported on OCI indexes")
            index["annotations"] = dict(annotations)
        body = json.dumps(index, indent=3).encode()
        digest = self.push_manifest(repository, tag or sha256_digest(body), body, media_type)
        return Pushed(repository, digest, media_type, body, None, blobs, tuple(children))

    def tag(self, repository: str, tag: str, pushed: Pushed) -> None:
        """Point another tag at an existing manifest (re-PUT the same bytes)."""
        self.push_manifest(repository, tag, pushed.manifest, pushed.media_type)

    def tags(self, repository: str) -> list[str]:
        """Sorted tags; [] when the repository is unknown (404) or has no tags left (null)."""
        resp = self.client.get(f"/v2/{repository}/tags/list")
        if resp.status_code == 404:
            return []
        _expect(resp, 200)
        return sorted(resp.json().get("tags") or [])

    def digest_of(self, repository: str, reference: str) -> str | None:
        """Digest of a tag or digest reference (HEAD with every manifest type); None on 404."""
        resp = self.client.head(f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        _expect(resp, 200)
        digest: str = resp.headers["Docker-Content-Digest"]
        return digest


def pull_whole(base_url: str, repository: str, reference: str, *, client: httpx.Client | None = None) -> Pushed:
    """Pull like a client: the manifest, then every config and layer blob, recursing into an index.

    Raises AssertionError naming the repository, reference and the first missing or wrong manifest or
    blob. Returns what was pulled as a Pushed, comparable with what push_* returned.
    """
    if client is None:
        with httpx.Client(timeout=30, follow_redirects=True) as own:
            return _pull(own, base_url.rstrip("/"), repository, reference, f"{repository}:{reference}")
    return _pull(client, base_url.rstrip("/"), repository, reference, f"{repository}:{reference}")


def _pull(client: httpx.Client, base: str, repository: str, reference: str, what: str) -> Pushed:
    try:
        resp = client.get(
            f"{base}/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            follow_redirects=True,
        )
    except httpx.TransportError as exc:
        raise AssertionError(f"{what}: GET manifest {reference} failed mid-response: {exc!r}") from None
    if resp.status_code != 200:
        raise AssertionError(f"{what}: GET manifest {reference} -> {resp.status_code}: {resp.text[:300]}")
    body = resp.content
    digest = sha256_digest(body)
    header = resp.headers.get("Docker-Content-Digest")
    if header != digest:
        raise AssertionError(f"{what}: manifest {reference} Docker-Content-Digest {header} != sha256 {digest}")
    if reference.startswith("sha256:") and reference != digest:
        raise AssertionError(f"{what}: GET by digest {reference} returned a manifest with digest {digest}")
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"{what}: manifest {digest} is not JSON: {exc}") from None
    media_type = manifest.get("mediaType") or resp.headers.get("Content-Type", "")
    content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type != media_type:
        raise AssertionError(f"{what}: manifest {digest} Content-Type {content_type} but mediaType {media_type}")

    if media_type in INDEX_TYPES:
        children = []
        blobs: dict[str, int] = {}
        for entry in manifest.get("manifests") or []:
            child_digest = entry["digest"]
            child = _pull(client, base, repository, child_digest, f"{what} -> child {child_digest}")
            if len(child.manifest) != entry["size"] or child.media_type != entry["mediaType"]:
                raise AssertionError(
                    f"{what}: child {child_digest} is {len(child.manifest)} bytes of {child.media_type}, "
                    f"the index says {entry['size']} bytes of {entry['mediaType']}"
                )
            plat = entry.get("platform") or {}
            if child.platform != (plat.get("os"), plat.get("architecture")):
                raise AssertionError(f"{what}: child {child_digest} platform {child.platform} != index {plat}")
            children.append(child)
            blobs.update(child.blobs)
        return Pushed(repository, digest, media_type, body, None, blobs, tuple(children))

    if media_type not in IMAGE_TYPES:
        raise AssertionError(f"{what}: manifest {digest} has unsupported media type {media_type!r}")
    blobs = {}
    config_desc = manifest["config"]
    config_bytes = _pull_blob(client, base, repository, config_desc, f"{what}: config")
    blobs[config_desc["digest"]] = config_desc["size"]
    for i, layer in enumerate(manifest.get("layers") or []):
        _pull_blob(client, base, repository, layer, f"{what}: layer {i}")
        blobs[layer["digest"]] = layer["size"]
    config = json.loads(config_bytes)
    return Pushed(
        repository,
        digest,
        media_type,
        body,
        config_desc["digest"],
        blobs,
        (),
        (config.get("os"), config.get("architecture")),
    )


def _pull_blob(client: httpx.Client, base: str, repository: str, desc: dict[str, Any], what: str) -> bytes:
    digest, size = desc["digest"], desc["size"]
    try:
        resp = client.get(f"{base}/v2/{repository}/blobs/{digest}", follow_redirects=True)
    except httpx.TransportError as exc:
        # A registry whose blob-descriptor cache still knows a deleted blob answers 200 with its
        # Content-Length, then drops the connection without a body.
        raise AssertionError(f"{what} blob {digest}: GET failed mid-response: {exc!r}") from None
    if resp.status_code != 200:
        raise AssertionError(f"{what} blob {digest}: GET -> {resp.status_code}: {resp.text[:300]}")
    data = resp.content
    if sha256_digest(data) != digest:
        raise AssertionError(f"{what} blob {digest}: content has digest {sha256_digest(data)}")
    if len(data) != size:
        raise AssertionError(f"{what} blob {digest}: {len(data)} bytes, descriptor says {size}")
    return data

"""A small V2 API client. Every httpx exception and unexpected status becomes a RegistryError.

Retries: connection errors and 5xx answers are retried with exponential backoff; a DELETE
is retried too (a repeated DELETE of a gone manifest answers 404, which callers treat as done).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from gc_daemon import __version__
from gc_daemon.errors import (
    DeleteDisabled,
    RegistryAuthError,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryServerError,
    RegistryUnreachable,
)
from gc_daemon.model import MANIFEST_MEDIA_TYPES, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_MANIFEST
from gc_daemon.registry.auth import RegistryAuth

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
CATALOG_PAGE = 1000  # the registry refuses n > 1000 with PAGINATION_NUMBER_INVALID
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# A digest no manifest has: DELETE on it tells whether deletes are enabled without removing anything.
PROBE_DIGEST = "sha256:" + "0" * 64


@dataclass(frozen=True)
class ManifestResponse:
    digest: str
    media_type: str
    body: bytes


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _error_codes(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return ", ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or response.text[:200]
    except (ValueError, AttributeError):
        return response.text[:200].strip()


class RegistryClient:
    """The V2 calls gc-daemon makes. Construct with ``transport=`` to test without a network."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        verify: bool | ssl.SSLContext = True,
        timeout_s: float = 30.0,
        concurrency: int = 8,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._has_credentials = username is not None
        self._retries = retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self.auth = RegistryAuth(username, password)
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=self.auth,
            verify=verify,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
            headers={"User-Agent": f"gc-daemon/{__version__}"},
        )
        self.requests = 0  # issued, retries included: for tests and the benchmark

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = False,
        retry: bool = True,
        content: bytes | None = None,
    ) -> httpx.Response:
        retries = self._retries if retry else 0
        attempt = 0
        while True:
            attempt += 1
            self.requests += 1
            try:
                response = self._http.request(
                    method, url, headers=headers, follow_redirects=follow_redirects, content=content
                )
            except httpx.TransportError as exc:
                if attempt <= retries:
                    self._pause(attempt, f"{method} {url}: {exc!r}")
                    continue
                raise RegistryUnreachable(
                    f"cannot reach the registry at {self.base_url}: {type(exc).__name__}: {exc}"
                ) from exc
            if response.status_code >= 500 and attempt <= retries:
                self._pause(attempt, f"{method} {url}: HTTP {response.status_code}")
                continue
            return self._check(method, url, response)

    def _pause(self, attempt: int, what: str) -> None:
        delay = self._backoff_s * (2 ** (attempt - 1))
        log.warning("retrying in %.1fs after %s", delay, what)
        self._sleep(delay)

    def _check(self, method: str, url: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if status < 300 or (300 <= status < 400 and "location" in response.headers):
            return response
        what = f"{method} {url}"
        if status in (401, 403):
            if self._has_credentials:
                raise RegistryAuthError(
                    f"authentication failed: the registry rejected the credentials ({what}: HTTP {status})"
                )
            raise RegistryAuthError(
                f"authentication required: {what} answered HTTP {status}; set registry.username and "
                "registry.password (or password_file)"
            )
        if status == 404:
            raise RegistryNotFound(f"{what}: not found ({_error_codes(response)})")
        if status == 405 and method == "DELETE":
            if "UNSUPPORTED" in response.text:
                raise DeleteDisabled(_error_codes(response))
            raise RegistryError(f"{what}: HTTP 405 ({response.text.strip()[:120]}); is the registry in read-only mode?")
        if status >= 500:
            raise RegistryServerError(f"{what}: HTTP {status} after {self._retries} retries ({_error_codes(response)})")
        raise RegistryProtocolError(f"{what}: unexpected HTTP {status} ({_error_codes(response)})")

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise RegistryProtocolError(f"{response.request.url}: answer is not JSON") from exc

    def _pages(self, url: str) -> Iterator[Any]:
        """Follow ``Link: <...>; rel="next"`` until absent, yielding each page's JSON."""
        seen = set()
        next_url: str | None = url
        while next_url is not None:
            if next_url in seen:
                raise RegistryProtocolError(f"pagination loops back to {next_url}")
            seen.add(next_url)
            response = self._request("GET", next_url)
            yield self._json(response)
            link = response.links.get("next")
            next_url = urljoin(str(response.request.url), link["url"]) if link and link.get("url") else None

    # -- API -------------------------------------------------------------------------------

    def probe(self, *, retry: bool = True) -> None:
        """GET /v2/: reachable, speaks V2, accepts our credentials."""
        response = self._request("GET", "/v2/", retry=retry)
        if response.headers.get("Docker-Distribution-Api-Version", "registry/2.0") != "registry/2.0":
            raise RegistryProtocolError(f"{self.base_url} does not speak the registry V2 API")

    def catalog(self) -> list[str]:
        names: list[str] = []
        for page in self._pages(f"/v2/_catalog?n={CATALOG_PAGE}"):
            repos = page.get("repositories") if isinstance(page, dict) else None
            if repos is None:
                repos = []
            if not isinstance(repos, list) or not all(isinstance(r, str) for r in repos):
                raise RegistryProtocolError("catalog answer has no list of repositories")
            names.extend(repos)
        return names

    def tags(self, repository: str) -> list[str]:
        """Every tag; [] when all were deleted (tags null) or the repository was never tagged (404)."""
        tags: list[str] = []
        try:
            for page in self._pages(f"/v2/{repository}/tags/list"):
                page_tags = page.get("tags") if isinstance(page, dict) else None
                if page_tags is None:
                    continue
                if not isinstance(page_tags, list) or not all(isinstance(t, str) for t in page_tags):
                    raise RegistryProtocolError(f"{repository}: tags/list answer is not a list of tags")
                tags.extend(page_tags)
        except RegistryNotFound as exc:
            if "NAME_UNKNOWN" in str(exc):
                return []
            raise
        return tags

    def manifest(self, repository: str, reference: str) -> ManifestResponse:
        """GET a manifest with the full Accept list; the digest is checked against the body."""
        response = self._request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        body = response.content
        computed = sha256_digest(body)
        header = response.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != computed:
            raise RegistryProtocolError(f"{repository}:{reference}: Docker-Content-Digest {header} != body {computed}")
        if reference.startswith("sha256:") and reference != computed:
            raise RegistryProtocolError(f"{repository}@{reference}: body digest is {computed}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            declared = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            declared = None
        return ManifestResponse(digest=header or computed, media_type=declared or media_type, body=body)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """HEAD a tag: the digest it points to now, None when it is gone."""
        try:
            response = self._request(
                "HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            )
        except RegistryNotFound:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryProtocolError(f"{repository}:{reference}: HEAD answer has no Docker-Content-Digest")
        return str(digest)

    def blob(self, repository: str, digest: str, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", follow_redirects=True)
        data = response.content
        if len(data) > max_bytes:
            raise RegistryProtocolError(f"{repository}@{digest}: blob larger than {max_bytes} bytes")
        if digest.startswith("sha256:") and sha256_digest(data) != digest:
            raise RegistryProtocolError(f"{repository}@{digest}: blob content does not match its digest")
        return data

    def blob_size(self, repository: str, digest: str) -> int | None:
        """HEAD a blob through a repository: its size, or None when that repository does not link it."""
        try:
            response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}")
        except RegistryNotFound:
            return None
        length = response.headers.get("Content-Length")
        if response.status_code != 200 or length is None or not length.isdigit():
            return None  # e.g. a 307 to object storage: no size here
        return int(length)

    def delete_manifest(self, repository: str, digest: str) -> None:
        """DELETE by digest: removes the manifest and every tag pointing to it."""
        if not digest.startswith("sha256:"):
            raise ValueError(f"refusing to DELETE by something not a digest: {digest!r}")
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}")
        if response.status_code != 202:
            raise RegistryProtocolError(f"DELETE {repository}@{digest}: HTTP {response.status_code}, expected 202")

    def check_deletes_enabled(self, repository: str) -> None:
        """Raise DeleteDisabled unless the registry accepts deletes; removes nothing.

        DELETE of a digest no manifest has: 404 when deletes are enabled, 405 UNSUPPORTED when not.
        """
        try:
            self._request("DELETE", f"/v2/{repository}/manifests/{PROBE_DIGEST}")
        except RegistryNotFound:
            return
        raise RegistryProtocolError(f"DELETE of the nonexistent {PROBE_DIGEST} in {repository} did not answer 404")

    def tag_delete_supported(self, repository: str) -> bool:
        """Whether DELETE by tag untags (distribution 3.x) or is refused (2.8: 400 DIGEST_INVALID).

        Asked with a tag that does not exist, so nothing is removed either way.
        """
        probe = f"gc-daemon-probe-{secrets.token_hex(8)}"
        try:
            self._request("DELETE", f"/v2/{repository}/manifests/{probe}")
        except RegistryNotFound:
            return True
        except RegistryProtocolError as exc:
            if "DIGEST_INVALID" in str(exc) or "HTTP 400" in str(exc):
                return False
            raise
        raise RegistryProtocolError(f"DELETE of the nonexistent tag {probe} in {repository} answered 2xx")

    def delete_tag(self, repository: str, tag: str) -> None:
        """DELETE by tag (distribution 3.x): removes that tag only; the manifest stays."""
        response = self._request("DELETE", f"/v2/{repository}/manifests/{tag}")
        if response.status_code != 202:
            raise RegistryProtocolError(f"DELETE {repository}:{tag}: HTTP {response.status_code}, expected 202")

    def upload_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        location = started.headers.get("Location")
        if started.status_code != 202 or not location:
            raise RegistryProtocolError(f"POST {repository} blob upload: HTTP {started.status_code}, no Location")
        url = httpx.URL(urljoin(self.base_url + "/", location))
        done = self._request(
            "PUT",
            str(url.copy_add_param("digest", digest)),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise RegistryProtocolError(f"PUT {repository} blob {digest}: HTTP {done.status_code}, expected 201")
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = self._request(
            "PUT", f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise RegistryProtocolError(f"PUT {repository}:{reference}: HTTP {response.status_code}, expected 201")
        digest = sha256_digest(body)
        if response.headers.get("Docker-Content-Digest", digest) != digest:
            raise RegistryProtocolError(f"PUT {repository}:{reference}: registry stored another digest")
        return digest

    def untag_with_placeholder(self, repository: str, tag: str) -> tuple[str, str]:
        """Remove one tag on a registry without DELETE by tag (2.8): point it at a tiny manifest unique to it
        (its own small config, no layers), then DELETE that manifest by digest. Only that tag goes; the
        placeholder's blobs are swept by the next collect. Returns the placeholder's manifest and config digests.
        """
        config = json.dumps(
            {
                "architecture": "none",
                "os": "none",
                "config": {"Labels": {"io.gc-daemon.untag": f"{repository}:{tag}"}},
                "rootfs": {"type": "layers", "diff_ids": []},
                "gc-daemon-nonce": secrets.token_hex(16),
            },
            sort_keys=True,
        ).encode()
        config_digest = self.upload_blob(repository, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {"mediaType": MEDIA_DOCKER_CONFIG, "size": len(config), "digest": config_digest},
                "layers": [],
            },
            sort_keys=True,
        ).encode()
        placeholder = self.put_manifest(repository, tag, manifest, MEDIA_DOCKER_MANIFEST)
        self.delete_manifest(repository, placeholder)
        return placeholder, config_digest

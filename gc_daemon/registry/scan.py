"""Inventory: read every repository, tag and manifest through the V2 API.

A repository is read whole or not at all: any error inside it marks it ``error`` and the
planner skips it. Errors that say the registry itself is unusable (unreachable, auth, 5xx
after retries) and any catalog error stop the scan, so no run deletes from a partial view.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from gc_daemon.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryServerError,
    RegistryUnreachable,
    RunAborted,
)
from gc_daemon.model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Blob,
    BlobKind,
    Image,
    Inventory,
    Repository,
)
from gc_daemon.registry.client import RegistryClient

log = logging.getLogger(__name__)

CREATED_ANNOTATION = "org.opencontainers.image.created"
FATAL = (RegistryUnreachable, RegistryAuthError, RegistryServerError)
# Reproducible builds stamp 1970-01-01 (or Go's zero time 0001-01-01): not a build time.
EARLIEST_REAL_BUILD = datetime(1971, 1, 1, tzinfo=UTC)


def parse_created(value: object) -> datetime | None:
    """RFC 3339 as Go writes it (nanoseconds, Z); None for absent, unparsable or epoch-ish values."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    text = re.sub(r"[zZ]$", "+00:00", text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when if when >= EARLIEST_REAL_BUILD else None


class _ConfigCache:
    """Config blobs are content-addressed: read each distinct one once per scan."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created: dict[str, Any] = {}

    def get(self, digest: str) -> tuple[bool, Any]:
        with self._lock:
            if digest in self._created:
                return True, self._created[digest]
            return False, None

    def put(self, digest: str, value: Any) -> None:
        with self._lock:
            self._created[digest] = value


class Scanner:
    def __init__(
        self,
        client: RegistryClient,
        *,
        concurrency: int = 8,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self._client = client
        self._concurrency = concurrency
        self._should_stop = should_stop
        self._configs = _ConfigCache()

    def scan(self, now: datetime) -> Inventory:
        names = self._client.catalog()
        log.info("scan: %d repositories in the catalog", len(names))
        done = 0
        lock = threading.Lock()

        def one(name: str) -> Repository:
            nonlocal done
            if self._should_stop():
                raise RunAborted("stop requested during the scan; nothing was removed")
            repo = self.scan_repository(name)
            with lock:
                done += 1
                if done % 25 == 0 or done == len(names):
                    log.info("scan: %d/%d repositories read", done, len(names))
            return repo

        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="scan") as pool:
            repositories = tuple(pool.map(one, names))
        return Inventory(repositories=repositories, scanned_at=now)

    def scan_repository(self, name: str) -> Repository:
        try:
            tags = self._client.tags(name)
            tag_digests: dict[str, str] = {}
            images: dict[str, Image] = {}
            for tag in tags:
                response = self._client.manifest(name, tag)
                tag_digests[tag] = response.digest
                if response.digest not in images:
                    self._add_image(name, response.digest, response.media_type, response.body, images)
            return Repository(name=name, tags=tag_digests, images=images)
        except FATAL:
            raise
        except RegistryError as exc:
            log.warning("scan: skipping repository %s: %s", name, exc)
            return Repository(name=name, error=f"could not be read whole: {exc}")

    def _add_image(self, repo: str, digest: str, media_type: str, body: bytes, images: dict[str, Image]) -> None:
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise _Unreadable(repo, f"manifest {digest} is not JSON") from exc
        if not isinstance(manifest, dict):
            raise _Unreadable(repo, f"manifest {digest} is not a JSON object")
        if manifest.get("schemaVersion") == 1 or media_type not in MANIFEST_MEDIA_TYPES:
            raise _Unreadable(repo, f"manifest {digest} has unsupported media type {media_type or 'schema1'}")
        if media_type in INDEX_MEDIA_TYPES:
            try:
                children = tuple(str(m["digest"]) for m in manifest.get("manifests") or [])
            except (KeyError, TypeError) as exc:
                raise _Unreadable(repo, f"index {digest} has a malformed child descriptor") from exc
            newest: Image | None = None
            for child in children:
                if child not in images:
                    response = self._client.manifest(repo, child)
                    self._add_image(repo, response.digest, response.media_type, response.body, images)
                candidate = images[child]
                if candidate.created and (
                    newest is None or newest.created is None or candidate.created > newest.created
                ):
                    newest = candidate
            images[digest] = Image(
                digest=digest,
                media_type=media_type,
                size=len(body),
                created=newest.created if newest else None,
                created_source=f"newest child, {newest.created_source}" if newest else None,
                children=children,
                subject=_subject(manifest),
            )
            return
        try:
            config = manifest.get("config") or {}
            blobs = []
            if config.get("digest"):
                blobs.append(Blob(str(config["digest"]), int(config.get("size", 0)), BlobKind.CONFIG))
            for layer in manifest.get("layers") or []:
                blobs.append(Blob(str(layer["digest"]), int(layer.get("size", 0)), BlobKind.LAYER))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Unreadable(repo, f"manifest {digest} has a malformed descriptor: {exc!r}") from exc
        created, source = self._created(repo, config, manifest)
        images[digest] = Image(
            digest=digest,
            media_type=media_type,
            size=len(body),
            created=created,
            created_source=source,
            blobs=tuple(blobs),
            subject=_subject(manifest),
        )

    def _created(
        self, repo: str, config: dict[str, Any], manifest: dict[str, Any]
    ) -> tuple[datetime | None, str | None]:
        """Build time: config `created`, else the OCI created annotation or label."""
        digest = config.get("digest")
        labels: dict[str, Any] = {}
        if digest:
            found, cached = self._configs.get(digest)
            if not found:
                data = self._client.blob(repo, digest)
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = {}
                cached = parsed if isinstance(parsed, dict) else {}
                cached = {"created": cached.get("created"), "labels": (cached.get("config") or {}).get("Labels") or {}}
                self._configs.put(digest, cached)
            created = parse_created(cached["created"])
            if created:
                return created, "config created"
            labels = cached["labels"]
        annotation = parse_created((manifest.get("annotations") or {}).get(CREATED_ANNOTATION))
        if annotation:
            return annotation, "created annotation"
        label = parse_created(labels.get(CREATED_ANNOTATION))
        if label:
            return label, "created label"
        return None, None


def _subject(manifest: dict[str, Any]) -> str | None:
    subject = manifest.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        return str(subject["digest"])
    return None


def _newer(a: Image, b: Image) -> bool:
    return b.created is None or (a.created is not None and a.created > b.created)


class _Unreadable(RegistryError):
    def __init__(self, repo: str, why: str) -> None:
        super().__init__(f"{repo}: {why}")

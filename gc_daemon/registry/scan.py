"""Inventory: read every repository, tag and manifest through the V2 API (or the registry's storage).

A repository is read whole or not at all: any error inside it marks it ``error`` and the
planner skips it. Errors that say the registry itself is unusable (unreachable, auth, 5xx
after retries) and any catalog error stop the scan, so no run deletes from a partial view.

Speed (see README "Performance"): ``concurrency`` requests in flight over keep-alive connections, for
every repository and tag at once; within a run each digest is read once (manifests, index children,
configs), and waiting on a digest another thread is already reading costs no request. Per tag:

- a repository the digest cache (``cache.py``) has read before: one HEAD gives the digest; a digest
  known to the cache costs nothing more, an unknown one is GET by digest (verified against the body);
- a repository never read before: one GET by tag (the digest is checked against the body), the
  cheapest way to learn both digest and manifest;
- with a storage inventory (``storage.py``): the tag's link file on disk gives digest and push time,
  manifests and configs come from the cache or the blob store on disk: no request at all. Anything
  missing or damaged on disk is asked of the API instead.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from gc_daemon.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryNotFound,
    RegistryServerError,
    RegistryUnreachable,
    RunAborted,
)
from gc_daemon.model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Blob,
    BlobKind,
    Image,
    Inventory,
    Repository,
)
from gc_daemon.registry.cache import DigestCache
from gc_daemon.registry.client import MAX_CONFIG_BYTES, ManifestResponse, RegistryClient
from gc_daemon.registry.storage import StorageInventory, StoredTag

log = logging.getLogger(__name__)

CREATED_ANNOTATION = "org.opencontainers.image.created"
FATAL = (RegistryUnreachable, RegistryAuthError, RegistryServerError)
# Reproducible builds stamp 1970-01-01 (or Go's zero time 0001-01-01): not a build time.
EARLIEST_REAL_BUILD = datetime(1971, 1, 1, tzinfo=UTC)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution refuses larger manifests
PROGRESS_EVERY = 25

T = TypeVar("T")


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


class _Once(Generic[T]):
    """Run-wide memo: each key is computed once, by the first thread that asks; the others wait for it.

    A failure is not remembered (it may belong to one repository only): a waiter then tries itself.
    """

    def __init__(self) -> None:
        # One condition for every key: a wait is rare (two tags on one digest read at the same moment), so a
        # shared wake-up is cheaper than an Event allocated per digest.
        self._lock = threading.Condition()
        self._done: dict[str, T] = {}
        self._running: set[str] = set()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        with self._lock:
            while True:
                if key in self._done:
                    return self._done[key]
                if key not in self._running:
                    self._running.add(key)
                    break
                self._lock.wait()
        try:
            value = compute()
            with self._lock:
                self._done[key] = value
            return value
        finally:
            with self._lock:
                self._running.discard(key)
                self._lock.notify_all()

    def peek(self, key: str) -> T:
        with self._lock:
            return self._done[key]

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._done)


class _Cancelled(Exception):
    """A tag task skipped because its repository (or the whole scan) already failed."""


@dataclass
class _RepoJob:
    name: str
    tags: list[str] = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)  # tag -> digest from the digest cache
    stored: dict[str, StoredTag] | None = None  # from the storage inventory
    futures: dict[str, Future[str]] = field(default_factory=dict)
    error: str | None = None


class Scanner:
    def __init__(
        self,
        client: RegistryClient,
        *,
        concurrency: int = 8,
        should_stop: Callable[[], bool] = lambda: False,
        cache: DigestCache | None = None,
        storage: StorageInventory | None = None,
    ) -> None:
        self._client = client
        self._concurrency = concurrency
        self._should_stop = should_stop
        self._cache = cache
        self._storage = storage
        if storage is not None and not storage.available():
            log.warning("storage_path %s does not hold registry storage (docker/registry/v2): ignored", storage.root)
            self._storage = None
        self._images: _Once[Image] = _Once()
        self._configs: _Once[dict[str, Any]] = _Once()
        self._blobs: dict[tuple[str, int, BlobKind], Blob] = {}
        self._aborted = False
        self._started = time.monotonic()

    # -- the whole registry ------------------------------------------------------------------

    def scan(self, now: datetime) -> Inventory:
        names = self._client.catalog()
        log.info(
            "scan: %d repositories in the catalog (%d in flight%s%s)",
            len(names),
            self._concurrency,
            ", digest cache" if self._cache else "",
            ", storage inventory" if self._storage else "",
        )
        self._started = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="scan")
        try:
            repositories = self._scan_all(pool, names)
        except BaseException:
            self._aborted = True
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if self._cache is not None:
            if all(r.error is None for r in repositories):
                self._cache.prune(names, self._images.keys(), self._configs.keys())
            self._cache.flush()
        return Inventory(repositories=tuple(repositories), scanned_at=now)

    def _scan_all(self, pool: ThreadPoolExecutor, names: list[str]) -> list[Repository]:
        # Repositories the storage inventory holds are read from disk by one thread of their own: that work is
        # all Python (parse, hash), so more threads only fight over the GIL (measured: 8 threads take 1.7x
        # as long as one). Everything else goes through the pool, `concurrency` requests in flight.
        on_disk = [n for n in names if self._on_disk(n)]
        disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-disk") if on_disk else None
        try:
            listings: dict[Future[_RepoJob], str] = {}
            if disk is not None:
                listings.update({disk.submit(self._read_stored, name): name for name in on_disk})
            stored = set(on_disk)
            listings.update({pool.submit(self._list, name, False): name for name in names if name not in stored})
            jobs: dict[str, _RepoJob] = {}
            for done in as_completed(listings):
                name = listings[done]
                try:
                    job = done.result()
                except FATAL:
                    raise
                except RegistryError as exc:
                    log.warning("scan: skipping repository %s: %s", name, exc)
                    jobs[name] = _RepoJob(name, error=f"could not be read whole: {exc}")
                    continue
                if not job.futures:
                    job.futures = {tag: pool.submit(self._tag, job, tag) for tag in job.tags}
                jobs[name] = job
        finally:
            if disk is not None:
                disk.shutdown(wait=True, cancel_futures=True)
        repositories = []
        started, tags = self._started, 0
        for count, name in enumerate(names, start=1):
            repositories.append(self._finish(jobs[name]))
            tags += len(repositories[-1].tags)
            if count % PROGRESS_EVERY == 0 or count == len(names):
                elapsed = max(time.monotonic() - started, 1e-6)
                log.info("scan: %d/%d repositories read, %d tags, %.0f tags/s", count, len(names), tags, tags / elapsed)
        return repositories

    def scan_repository(self, name: str) -> Repository:
        """Read one repository, one request at a time (the same rules as :meth:`scan`)."""
        try:
            job = self._list(name, self._on_disk(name))
        except FATAL:
            raise
        except RegistryError as exc:
            log.warning("scan: skipping repository %s: %s", name, exc)
            return Repository(name=name, error=f"could not be read whole: {exc}")
        self._read_inline(job)
        return self._finish(job)

    def _read_stored(self, name: str) -> _RepoJob:
        """List and read a repository from the storage inventory, in this thread."""
        job = self._list(name, True)
        self._read_inline(job)
        return job

    def _read_inline(self, job: _RepoJob) -> None:
        """Read every tag of ``job`` in this thread, one after the other."""
        for tag in job.tags:
            future: Future[str] = Future()
            try:
                future.set_result(self._tag(job, tag))
            except FATAL:
                raise
            except (RegistryError, _Cancelled) as exc:
                future.set_exception(exc)
            job.futures[tag] = future

    # -- one repository ----------------------------------------------------------------------

    def _check_stop(self) -> None:
        if self._should_stop():
            self._aborted = True
            raise RunAborted("stop requested during the scan; nothing was removed")

    def _on_disk(self, name: str) -> bool:
        return self._storage is not None and self._storage.has_repository(name)

    def _list(self, name: str, on_disk: bool) -> _RepoJob:
        """The repository's tags: from the storage inventory when ``on_disk``, else through the API."""
        self._check_stop()
        job = _RepoJob(name)
        if on_disk and self._storage is not None:
            job.stored = self._storage.tags(name)
            job.tags = list(job.stored)
        else:
            job.tags = self._client.tags(name)
        if self._cache is not None:
            job.known = self._cache.tags(name)
        return job

    def _tag(self, job: _RepoJob, tag: str) -> str:
        """The digest ``tag`` points to; its image (and children) end up in the run-wide memo."""
        if self._aborted or job.error is not None:
            raise _Cancelled
        self._check_stop()
        try:
            stored = job.stored.get(tag) if job.stored is not None else None
            if stored is not None and stored.digest is not None:
                digest = stored.digest
                self._image(job.name, digest)
            elif stored is not None or job.known:
                found = self._client.manifest_digest(job.name, tag)
                if found is None:
                    raise RegistryNotFound(f"{job.name}:{tag}: the tag is gone since it was listed")
                digest = found
                self._image(job.name, digest)
            else:
                response = self._client.manifest(job.name, tag)
                digest = response.digest
                self._image(job.name, digest, response)
            return sys.intern(digest)
        except FATAL:
            self._aborted = True
            raise
        except RegistryError as exc:
            if job.error is None:
                job.error = f"could not be read whole: {exc}"
            raise

    def _finish(self, job: _RepoJob) -> Repository:
        tags: dict[str, str] = {}
        for tag, future in job.futures.items():
            try:
                tags[tag] = future.result()
            except FATAL:
                raise
            except RunAborted:
                raise
            except (RegistryError, _Cancelled):
                pass
        if job.error is not None:
            if job.futures:  # a listing error was logged already
                log.warning("scan: skipping repository %s: %s", job.name, job.error)
            return Repository(name=job.name, error=job.error)
        images: dict[str, Image] = {}
        pending = list(set(tags.values()))
        while pending:
            digest = pending.pop()
            if digest not in images:
                images[digest] = image = self._images.peek(digest)
                pending.extend(image.children)
        pushed = {}
        if job.stored is not None:
            pushed = {t: s.pushed for t, s in job.stored.items() if t in tags and s.pushed is not None}
        if self._cache is not None:
            self._cache.set_tags(job.name, tags, job.known)
        return Repository(name=job.name, tags=tags, images=images, pushed=pushed)

    # -- digests (run-wide: each read once) ----------------------------------------------------

    def _image(self, repo: str, digest: str, response: ManifestResponse | None = None) -> Image:
        return self._images.get(digest, lambda: self._read_image(repo, digest, response))

    def _read_image(self, repo: str, digest: str, response: ManifestResponse | None) -> Image:
        fresh = True
        body: bytes | None = None
        parsed: dict[str, Any] | None = None  # the manifest, when already parsed
        media_type = ""
        if response is not None:
            body, media_type = response.body, response.media_type
        else:
            cached = self._cache.manifest(digest) if self._cache is not None else None
            if cached is not None:
                (media_type, body), fresh = cached, False
            elif self._storage is not None:
                body = self._storage.blob(digest, MAX_MANIFEST_BYTES)
                parsed = _json_object(body) if body is not None else None
                media_type = _declared_type(parsed) if parsed is not None else ""
                if not media_type:
                    body = parsed = None
            if body is None:
                response = self._client.manifest(repo, digest)
                body, media_type = response.body, response.media_type
        image = self._parse(repo, digest, media_type, body, parsed)
        if fresh and self._cache is not None:
            self._cache.put_manifest(digest, media_type, body)
        return image

    def _parse(
        self, repo: str, digest: str, media_type: str, body: bytes, manifest: dict[str, Any] | None = None
    ) -> Image:
        if manifest is None:
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
                children = tuple(sys.intern(str(m["digest"])) for m in manifest.get("manifests") or [])
            except (KeyError, TypeError) as exc:
                raise _Unreadable(repo, f"index {digest} has a malformed child descriptor") from exc
            newest: Image | None = None
            for child in children:
                candidate = self._image(repo, child)
                if candidate.created and (
                    newest is None or newest.created is None or candidate.created > newest.created
                ):
                    newest = candidate
            return Image(
                digest=digest,
                media_type=media_type,
                size=len(body),
                created=newest.created if newest else None,
                created_source=f"newest child, {newest.created_source}" if newest else None,
                children=children,
                subject=_subject(manifest),
            )
        try:
            config = manifest.get("config") or {}
            blobs = []
            if config.get("digest"):
                blobs.append(self._blob(str(config["digest"]), int(config.get("size", 0)), BlobKind.CONFIG))
            for layer in manifest.get("layers") or []:
                blobs.append(self._blob(str(layer["digest"]), int(layer.get("size", 0)), BlobKind.LAYER))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Unreadable(repo, f"manifest {digest} has a malformed descriptor: {exc!r}") from exc
        created, source = self._created(repo, config, manifest)
        return Image(
            digest=digest,
            media_type=media_type,
            size=len(body),
            created=created,
            created_source=source,
            blobs=tuple(blobs),
            subject=_subject(manifest),
        )

    def _blob(self, digest: str, size: int, kind: BlobKind) -> Blob:
        """One shared Blob per descriptor: layers shared by many images cost their memory once."""
        key = (digest, size, kind)
        blob = self._blobs.get(key)
        if blob is None:
            blob = self._blobs.setdefault(key, Blob(sys.intern(digest), size, kind))
        return blob

    def _created(
        self, repo: str, config: dict[str, Any], manifest: dict[str, Any]
    ) -> tuple[datetime | None, str | None]:
        """Build time: config `created`, else the OCI created annotation or label."""
        digest = config.get("digest")
        labels: dict[str, Any] = {}
        if digest:
            info = self._configs.get(str(digest), lambda: self._read_config(repo, str(digest)))
            created = parse_created(info.get("created"))
            if created:
                return created, "config created"
            labels = info.get("labels") or {}
        annotation = parse_created((manifest.get("annotations") or {}).get(CREATED_ANNOTATION))
        if annotation:
            return annotation, "created annotation"
        label = parse_created(labels.get(CREATED_ANNOTATION))
        if label:
            return label, "created label"
        return None, None

    def _read_config(self, repo: str, digest: str) -> dict[str, Any]:
        if self._cache is not None:
            cached = self._cache.config(digest)
            if cached is not None:
                return cached
        data = self._storage.blob(digest, MAX_CONFIG_BYTES) if self._storage is not None else None
        if data is None:
            data = self._client.blob(repo, digest)
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        labels = (parsed.get("config") or {}).get("Labels") if isinstance(parsed.get("config"), dict) else None
        label = labels.get(CREATED_ANNOTATION) if isinstance(labels, dict) else None
        info: dict[str, Any] = {
            "created": parsed.get("created"),
            "labels": {CREATED_ANNOTATION: label} if label else {},
        }
        if self._cache is not None:
            self._cache.put_config(digest, info)
        return info


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _declared_type(manifest: dict[str, Any]) -> str:
    """The media type a manifest read from storage declares (OCI may omit it: then inferred as the registry does)."""
    declared = manifest.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if manifest.get("schemaVersion") == 2:
        if "manifests" in manifest:
            return MEDIA_OCI_INDEX
        if "config" in manifest:
            return MEDIA_OCI_MANIFEST
    return ""


def _subject(manifest: dict[str, Any]) -> str | None:
    subject = manifest.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        return str(subject["digest"])
    return None


class _Unreadable(RegistryError):
    def __init__(self, repo: str, why: str) -> None:
        super().__init__(f"{repo}: {why}")

"""The digest cache: ``<state dir>/digests.sqlite``, what scans learned that never changes.

Manifests and config blobs are content-addressed, so what a digest names is immutable: once a
manifest's bytes (checked against the digest) or a config's build time are known, no later run
needs to GET them again. The cache also remembers which digest each tag pointed to, so a later
scan knows a repository it has read before: it asks one HEAD per tag there and GETs only digests
it has never seen.

Tables:
- ``manifests (digest, media_type, body)``: the exact bytes, verified again when read;
- ``configs (digest, info)``: ``{"created": ..., "labels": {...}}`` of an image config blob;
- ``tags (repository, tag, digest)``: the last complete reading of each repository.

One connection, guarded by a lock, shared by the scan's threads. New entries and tag readings are
buffered and written in batches, one transaction each. A state dir that cannot be written means no
cache: the scan goes on without it (one log line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "digests.sqlite"
FLUSH_EVERY = 500

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS manifests (digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS configs (digest TEXT PRIMARY KEY, info TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tags (repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,"
    " PRIMARY KEY (repository, tag))",
)


def _verified(digest: str, body: bytes) -> bool:
    algorithm, _, hexdigest = digest.partition(":")
    return algorithm == "sha256" and hashlib.sha256(body).hexdigest() == hexdigest


class DigestCache:
    """Thread-safe access to ``digests.sqlite``. Use :meth:`open`; call :meth:`close` to write the rest."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()
        self._manifests: list[tuple[str, str, bytes]] = []
        self._configs: list[tuple[str, str]] = []
        self._tags_changed: list[tuple[str, str, str]] = []
        self._tags_gone: list[tuple[str, str]] = []
        # A first run (or a wiped state dir) knows nothing yet: its misses need not ask SQLite.
        self._empty = {
            table: conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table})").fetchone()[0] == 1
            for table in ("manifests", "configs")
        }
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(cls, directory: Path) -> DigestCache | None:
        """The cache in ``directory``, or None (logged once) when it cannot be created or written."""
        path = directory / FILE_NAME
        conn: sqlite3.Connection | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")  # proves the file is writable before the scan relies on it
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            log.warning("digest cache %s cannot be written (%s): scanning without it", path, exc)
            return None
        return cls(conn, path)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------

    def manifest(self, digest: str) -> tuple[str, bytes] | None:
        """(media type, bytes) of a manifest seen before; None when unknown (or the entry is damaged)."""
        if self._empty["manifests"]:
            self.misses += 1
            return None
        with self._lock:
            row = self._conn.execute("SELECT media_type, body FROM manifests WHERE digest = ?", (digest,)).fetchone()
            if row is None or not _verified(digest, bytes(row[1])):
                self.misses += 1
                return None
            self.hits += 1
            return str(row[0]), bytes(row[1])

    def config(self, digest: str) -> dict[str, Any] | None:
        if self._empty["configs"]:
            self.misses += 1
            return None
        with self._lock:
            row = self._conn.execute("SELECT info FROM configs WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            try:
                info = json.loads(row[0])
            except ValueError:
                return None
            self.hits += 1
            return info if isinstance(info, dict) else None

    def tags(self, repository: str) -> dict[str, str]:
        """Tag -> digest as the last complete reading of ``repository`` found them ({} when never read)."""
        with self._lock:
            rows = self._conn.execute("SELECT tag, digest FROM tags WHERE repository = ?", (repository,)).fetchall()
        return {str(t): str(d) for t, d in rows}

    # -- writes ------------------------------------------------------------------------------

    def put_manifest(self, digest: str, media_type: str, body: bytes) -> None:
        """Remember a manifest; its bytes must hash to ``digest`` (else it is not cached)."""
        if not _verified(digest, body):
            return
        with self._lock:
            self._manifests.append((digest, media_type, body))
            full = len(self._manifests) + len(self._configs) >= FLUSH_EVERY
        if full:
            self.flush()

    def put_config(self, digest: str, info: Mapping[str, Any]) -> None:
        with self._lock:
            self._configs.append((digest, json.dumps(info, sort_keys=True)))
            full = len(self._manifests) + len(self._configs) >= FLUSH_EVERY
        if full:
            self.flush()

    def set_tags(self, repository: str, tags: Mapping[str, str], known: Mapping[str, str]) -> None:
        """Record a complete reading of ``repository`` (``known``: what the cache held before)."""
        changed = [(repository, t, d) for t, d in tags.items() if known.get(t) != d]
        gone = [(repository, t) for t in known if t not in tags]
        if not changed and not gone:
            return
        with self._lock:
            self._tags_changed.extend(changed)
            self._tags_gone.extend(gone)
            full = len(self._tags_changed) >= FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, in one transaction."""
        with self._lock:
            manifests, self._manifests = self._manifests, []
            configs, self._configs = self._configs, []
            changed, self._tags_changed = self._tags_changed, []
            gone, self._tags_gone = self._tags_gone, []
            if not (manifests or configs or changed or gone):
                return
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR IGNORE INTO manifests VALUES (?, ?, ?)", manifests)
            self._conn.executemany("INSERT OR IGNORE INTO configs VALUES (?, ?)", configs)
            self._conn.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", changed)
            self._conn.executemany("DELETE FROM tags WHERE repository = ? AND tag = ?", gone)
            self._conn.execute("COMMIT")

    def prune(self, repositories: Iterable[str], manifests: Iterable[str], configs: Iterable[str]) -> None:
        """After a scan that read every repository whole: forget what no repository references any more."""
        self.flush()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            for table, values in (("repos", repositories), ("keep_m", manifests), ("keep_c", configs)):
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (v TEXT PRIMARY KEY)")
                conn.execute(f"DELETE FROM {table}")
                conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?)", ((v,) for v in values))
            conn.execute("DELETE FROM tags WHERE repository NOT IN (SELECT v FROM repos)")
            conn.execute("DELETE FROM manifests WHERE digest NOT IN (SELECT v FROM keep_m)")
            conn.execute("DELETE FROM configs WHERE digest NOT IN (SELECT v FROM keep_c)")
            conn.execute("COMMIT")

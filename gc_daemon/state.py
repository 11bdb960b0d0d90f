"""The state dir: what gc-daemon remembers across runs.

- ``state.sqlite``: ``first_seen`` (repository, tag, digest) -> the first time a scan saw that tag at
  that digest, the ordering fallback for images without a usable build time;
- ``audit.jsonl``: one JSON line per removal (time, run id, repository, tag, digest, method, reason);
- ``manifests/<algorithm>/<hex>``: the exact bytes of every manifest removed, with its media type in the
  audit line, so a removal can be undone byte for byte while its blobs are still on disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gc_daemon.errors import GcDaemonError


class StateError(GcDaemonError):
    """The state dir cannot be read or written."""


class RunInProgress(GcDaemonError):
    """Another run holds the state dir's run lock."""


class State:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._append = threading.Lock()  # removals run in threads: one JSON-lines append at a time

    @contextmanager
    def _db(self, write: bool) -> Iterator[sqlite3.Connection | None]:
        path = self.dir / "state.sqlite"
        if not write and not path.exists():
            yield None
            return
        try:
            if write:
                self.dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path if write else f"file:{path}?mode=ro", uri=not write, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state dir {self.dir}: cannot open {path.name}: {exc}") from exc
        try:
            if write:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS first_seen (repository TEXT, tag TEXT, digest TEXT, seen_at TEXT,"
                    " PRIMARY KEY (repository, tag, digest))"
                )
                conn.execute("CREATE TABLE IF NOT EXISTS blob_sizes (digest TEXT PRIMARY KEY, size INTEGER, kind TEXT)")
            yield conn
            conn.commit()
        except sqlite3.Error as exc:
            raise StateError(f"state dir {self.dir}: {exc}") from exc
        finally:
            conn.close()

    def first_seen(self) -> dict[tuple[str, str, str], datetime]:
        with self._db(write=False) as conn:
            if conn is None:
                return {}
            try:
                rows = conn.execute("SELECT repository, tag, digest, seen_at FROM first_seen").fetchall()
            except sqlite3.OperationalError:
                return {}
        return {(r, t, d): datetime.fromisoformat(s) for r, t, d, s in rows}

    def record_seen(self, seen: Iterable[tuple[str, str, str]], now: datetime) -> None:
        """Remember the first sighting of each (repository, tag, digest); later sightings change nothing."""
        stamp = now.astimezone(UTC).isoformat()
        with self._db(write=True) as conn:
            assert conn is not None
            conn.executemany(
                "INSERT OR IGNORE INTO first_seen VALUES (?, ?, ?, ?)", ((r, t, d, stamp) for r, t, d in seen)
            )

    def blob_sizes(self) -> dict[str, tuple[int, str]]:
        """Sizes (and kinds) of every blob a descriptor ever described: blobs are immutable per digest."""
        with self._db(write=False) as conn:
            if conn is None:
                return {}
            try:
                rows = conn.execute("SELECT digest, size, kind FROM blob_sizes").fetchall()
            except sqlite3.OperationalError:
                return {}
        return {d: (int(size), str(kind)) for d, size, kind in rows}

    def remember_sizes(self, sizes: dict[str, tuple[int, str]]) -> None:
        with self._db(write=True) as conn:
            assert conn is not None
            conn.executemany(
                "INSERT OR IGNORE INTO blob_sizes VALUES (?, ?, ?)", ((d, s, k) for d, (s, k) in sizes.items())
            )

    # -- the last run -----------------------------------------------------------------------------

    def save_last_run(self, summary: dict[str, Any]) -> None:
        """Persist the last run's outcome (and the last success) for `status`, catch-up and restarts."""
        previous = self.last_run() or {}
        record = {"last": summary, "last_success": previous.get("last_success")}
        if summary.get("result") == "success":
            record["last_success"] = summary
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "last-run.json.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, self.dir / "last-run.json")
        except OSError as exc:
            raise StateError(f"state dir {self.dir}: cannot record the last run: {exc}") from exc

    def _append_lines(self, name: str, records: list[dict[str, Any]], sync: bool = False) -> None:
        """Append JSON lines to a log in the state dir (fsync'ed when `sync`)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._append, (self.dir / name).open("a") as out:
                for record in records:
                    out.write(json.dumps(record, sort_keys=True) + "\n")
                out.flush()
                if sync:
                    os.fsync(out.fileno())
        except OSError as exc:
            raise StateError(f"state dir {self.dir}: cannot append to {name}: {exc}") from exc

    def _read_lines(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append_history(self, summary: dict[str, Any]) -> None:
        self._append_lines("runs.jsonl", [summary])

    def history(self) -> list[dict[str, Any]]:
        return self._read_lines("runs.jsonl")

    def last_run(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / "last-run.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"state dir {self.dir}: unreadable last-run.json: {exc}") from exc
        return data if isinstance(data, dict) else None

    # -- "registry stopped by gc-daemon" -------------------------------------------------------

    @property
    def _marker(self) -> Path:
        return self.dir / "registry-stopped.json"

    def mark_registry_stopped(self, container: str, run_id: str, now: datetime) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self._marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"container": container, "run_id": run_id, "stopped_at": now.isoformat()}))
            os.replace(tmp, self._marker)
        except OSError as exc:
            raise StateError(f"state dir {self.dir}: cannot record the registry stop: {exc}") from exc

    def registry_stopped(self) -> dict[str, str] | None:
        try:
            data = json.loads(self._marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"state dir {self.dir}: unreadable {self._marker.name}: {exc}") from exc
        return {str(k): str(v) for k, v in data.items()}

    def clear_registry_stopped(self) -> None:
        self._marker.unlink(missing_ok=True)

    # -- one run at a time ------------------------------------------------------------------------

    @contextmanager
    def run_lock(self, run_id: str, now: datetime) -> Iterator[None]:
        """Hold the state dir's run lock (flock: released by the kernel even on SIGKILL)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = (self.dir / "run.lock").open("a+")
        except OSError as exc:
            raise StateError(f"state dir {self.dir}: cannot open the run lock: {exc}") from exc
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunInProgress(
                    f"another gc-daemon run is in progress ({holder}): refusing to start a second one"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"run {run_id}, pid {os.getpid()}, since {now.isoformat(timespec='seconds')}")
            handle.flush()
            yield
        finally:
            handle.close()

    def audit(
        self,
        *,
        run_id: str,
        repository: str,
        tags: Iterable[str],
        digest: str,
        method: str,
        reason: str,
        manifest: bytes | None,
        media_type: str | None,
        now: datetime,
    ) -> None:
        """Append one line per removed tag (or per untagged manifest), and keep the manifest's bytes."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            saved = None
            if manifest is not None:
                algorithm, hexdigest = digest.split(":", 1)
                path = self.dir / "manifests" / algorithm / hexdigest
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    # Unique per writer: the same digest may be removed from two repositories at once.
                    tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
                    tmp.write_bytes(manifest)
                    os.replace(tmp, path)
                saved = str(path.relative_to(self.dir))
            lines = [
                {
                    "time": now.astimezone(UTC).isoformat(),
                    "run_id": run_id,
                    "repository": repository,
                    "tag": tag,
                    "digest": digest,
                    "method": method,
                    "reason": reason,
                    "media_type": media_type,
                    "manifest": saved,
                }
                for tag in (list[str | None](tags) or [None])
            ]
        except OSError as exc:
            raise StateError(f"state dir {self.dir}: cannot save the removed manifest: {exc}") from exc
        self._append_lines("audit.jsonl", lines, sync=True)

    def audit_lines(self) -> list[dict[str, Any]]:
        return self._read_lines("audit.jsonl")

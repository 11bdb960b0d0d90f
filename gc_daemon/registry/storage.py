"""Storage inventory: read tags, digests and push times straight from the registry's filesystem storage.

With ``[registry] storage_path`` set to the registry's storage root mounted read-only (``/var/lib/registry``
in the official image), a scan needs no request per tag: distribution keeps

- ``<root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link``: the digest the tag
  points to (``sha256:<hex>``); its mtime is when the tag was last pushed (GET does not touch it);
- ``<root>/docker/registry/v2/blobs/sha256/<xx>/<hex>/data``: the bytes of every blob, manifests included.

Nothing here is trusted blindly: a link must hold a well-formed digest and a blob's bytes must hash to
their digest, else the scan asks the API for that tag or digest instead. The API stays the authority for
every removal (the apply step re-checks each tag by HEAD right before it goes). Read-only: nothing is
ever written here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

V2 = Path("docker/registry/v2")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredTag:
    digest: str | None  # None: the link is missing or unreadable (ask the API)
    pushed: datetime | None


class StorageInventory:
    def __init__(self, root: Path) -> None:
        """``root``: the registry's storage root (holding ``docker/``), or its ``docker/registry/v2``."""
        self.root = root
        self.v2 = root / V2 if (root / V2).is_dir() else root
        # Plain strings, not Path: a scan joins tens of thousands of paths and pathlib's parsing shows up.
        self._repositories = os.path.join(self.v2, "repositories")
        self._blobs = os.path.join(self.v2, "blobs", "sha256")
        self.reads = 0  # files read, for tests and the benchmark

    def available(self) -> bool:
        return os.path.isdir(self._repositories) and os.path.isdir(os.path.dirname(self._blobs))

    def has_repository(self, repository: str) -> bool:
        return os.path.isdir(os.path.join(self._repositories, repository, "_manifests"))

    def tags(self, repository: str) -> dict[str, StoredTag]:
        """Every tag directory of a repository, with its current digest and push time."""
        tags_dir = os.path.join(self._repositories, repository, "_manifests", "tags")
        try:
            names = os.listdir(tags_dir)
        except FileNotFoundError:
            return {}
        result: dict[str, StoredTag] = {}
        for tag in names:
            link = f"{tags_dir}/{tag}/current/link"
            try:
                with open(link, "rb") as f:
                    text = f.read(200).decode("ascii", "replace").strip()
                    mtime = os.fstat(f.fileno()).st_mtime
            except OSError:
                result[tag] = StoredTag(None, None)
                continue
            self.reads += 1
            result[tag] = StoredTag(text if DIGEST.match(text) else None, datetime.fromtimestamp(mtime, tz=UTC))
        return result

    def blob(self, digest: str, max_bytes: int) -> bytes | None:
        """The bytes of a blob (checked against its digest); None when absent, too large or damaged."""
        if not DIGEST.match(digest):
            return None
        hexdigest = digest.removeprefix("sha256:")
        path = f"{self._blobs}/{hexdigest[:2]}/{hexdigest}/data"
        try:
            with open(path, "rb", buffering=0) as f:
                # Sized by fstat: read(max_bytes + 1) would allocate max_bytes for every small manifest.
                data = b"" if os.fstat(f.fileno()).st_size > max_bytes else f.readall()
        except OSError:
            return None
        self.reads += 1
        if not data or len(data) > max_bytes or hashlib.sha256(data).hexdigest() != hexdigest:
            log.warning("storage: blob %s is damaged or too large; asking the registry instead", digest[:19])
            return None
        return data

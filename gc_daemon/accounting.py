"""What a collect freed, exactly: the size and kind of every blob the sweep removed.

Sizes come from descriptors (manifests, configs, layers) seen in this scan, in earlier runs (the state
dir's cache: a digest's size never changes), or in manifests read during the run; failing those, from a
blob HEAD taken before the sweep. A blob whose size is still unknown is counted apart, never guessed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from gc_daemon.model import BlobKind, Inventory


@dataclass
class Accounting:
    sizes: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, BlobKind] = field(default_factory=dict)

    @classmethod
    def from_inventory(cls, inventory: Inventory, cached: dict[str, tuple[int, str]] | None = None) -> Accounting:
        acc = cls()
        for digest, (size, kind) in (cached or {}).items():
            acc.learn(digest, size, BlobKind(kind) if kind in BlobKind.__members__.values() else None)
        for digest, size in inventory.blob_sizes().items():
            acc.sizes[digest] = size
        acc.kinds.update(inventory.blob_kinds())
        return acc

    def learn(self, digest: str, size: int, kind: BlobKind | None = None) -> None:
        self.sizes.setdefault(digest, size)
        if kind is not None:
            self.kinds.setdefault(digest, kind)

    def learn_manifest(self, digest: str, body: bytes) -> None:
        """A manifest read during the run (before deleting it): itself, its config and layers."""
        self.learn(digest, len(body), BlobKind.MANIFEST)
        try:
            manifest = json.loads(body)
        except ValueError:
            return
        if not isinstance(manifest, dict):
            return
        config = manifest.get("config")
        described = [(config, BlobKind.CONFIG)] + [(layer, BlobKind.LAYER) for layer in manifest.get("layers") or []]
        for descriptor, kind in described:
            if isinstance(descriptor, dict):
                digest_, size = descriptor.get("digest"), descriptor.get("size")
                if isinstance(digest_, str) and isinstance(size, int):
                    self.learn(digest_, size, kind)

    def to_cache(self) -> dict[str, tuple[int, str]]:
        return {d: (s, self.kinds[d].value if d in self.kinds else "") for d, s in self.sizes.items()}


@dataclass(frozen=True)
class Reclaimed:
    blobs: int
    bytes: int
    unknown_size: int
    by_kind: dict[str, int]  # blobs per kind: layer, config, manifest, other (no descriptor said)
    bytes_by_kind: dict[str, int]


def reclaimed(accounting: Accounting, swept: Iterable[str]) -> Reclaimed:
    blobs = list(dict.fromkeys(swept))
    counts: Counter[str] = Counter()
    volume: Counter[str] = Counter()
    for digest in blobs:
        kind = accounting.kinds.get(digest)
        label = kind.value if kind is not None else "other"
        counts[label] += 1
        volume[label] += accounting.sizes.get(digest, 0)
    return Reclaimed(
        blobs=len(blobs),
        bytes=sum(accounting.sizes[d] for d in blobs if d in accounting.sizes),
        unknown_size=sum(1 for d in blobs if d not in accounting.sizes),
        by_kind=dict(counts),
        bytes_by_kind=dict(volume),
    )

"""Large objects as blocks: what a block is, and where a large object's record lives.

Objects larger than ``[origin] block_size`` are cached as blocks of that size. Each block is
an ordinary cache entry keyed by (object URL, version, block index), so everything that
works per entry works per block: eviction and placement (hot row groups of a cold Parquet
file stay, the rest go), single flight, checksums (a hit verifies only the blocks it
returns), promotion and metrics. Whole objects stay the unit for shards.

A large object's *record* says which version the node caches: size, version (the pin every
ranged GET carries), the whole-object CRC32 the origin vouches for, and, once the whole
object has been checked against it, every block's CRC32, so a block fetched again later is
checked on its own. Records live beside the index (``objects`` in ``index.lmdb``); the
engine writes them, every process reads them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from .forksafe import transaction
from .index import Index, blob_id_for
from .ranged import Head, Pin


class LargeObject(Exception):
    """Raised by ``Cache.locate``: this object is read as blocks (its record attached)."""

    def __init__(self, obj: ObjectRecord) -> None:
        super().__init__(f"{obj.key} is read as blocks ({obj.size} bytes)")
        self.obj = obj


@dataclass(frozen=True)
class ObjectRecord:
    """One version of a large object as the node caches it."""

    key: str  # the object's cache key (its full URL)
    path: str  # the origin path (stripped)
    size: int
    version: str
    etag: str
    version_id: str
    crc32: int | None  # whole object, from the origin
    block_size: int
    #: Wall-clock time the version was seen current: a validation at that moment.
    fetched_at: float
    #: Every block's CRC32, once the whole object matched ``crc32`` (None until then).
    crcs: tuple[int, ...] | None = None

    @classmethod
    def of(cls, key: str, path: str, head: Head, block_size: int) -> ObjectRecord:
        return cls(
            key, path, head.size, head.version, head.etag, head.version_id, head.crc32,
            block_size, time.time(),
        )  # fmt: skip

    # -- geometry -------------------------------------------------------------------------------
    # Blocks are aligned to the object's end: the first block holds the remainder and every
    # other block is whole. What readers fetch first of a large file is its tail (a Parquet
    # footer, a zip's central directory): one whole block, never a sliver of one block and
    # most of the block before it.
    @property
    def blocks(self) -> int:
        return max(1, -(-self.size // self.block_size))

    @property
    def _pad(self) -> int:
        """Bytes the first block is short of a whole one."""
        return self.blocks * self.block_size - self.size

    def span(self, index: int) -> tuple[int, int]:
        """Bytes ``[start, end)`` of block ``index``."""
        start = index * self.block_size - self._pad
        return max(0, start), start + self.block_size

    def block_of(self, offset: int) -> int:
        """The block byte ``offset`` falls in."""
        return (offset + self._pad) // self.block_size

    def covering(self, start: int, end: int) -> range:
        """The blocks bytes ``[start, end)`` fall in (none for an empty range)."""
        if end <= start:
            return range(0)
        return range(self.block_of(start), self.block_of(end - 1) + 1)

    def block_key(self, index: int) -> str:
        """A block's cache key: never equal to an object's (NUL is in no object name)."""
        return f"{self.key}\x00block {index} of {self.version}"

    @property
    def pin(self) -> Pin:
        return Pin(self.path, self.size, self.version, self.etag, self.version_id)

    def expected_crc(self, index: int) -> int | None:
        return self.crcs[index] if self.crcs is not None else None

    # -- storage --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.path,
            "size": self.size,
            "version": self.version,
            "etag": self.etag,
            "version_id": self.version_id,
            "crc32": self.crc32,
            "block_size": self.block_size,
            "fetched_at": self.fetched_at,
            "crcs": list(self.crcs) if self.crcs is not None else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ObjectRecord:
        crcs = raw.get("crcs")
        return cls(
            raw["key"], raw["path"], int(raw["size"]), raw["version"], raw["etag"],
            raw["version_id"], raw["crc32"], int(raw["block_size"]), float(raw["fetched_at"]),
            tuple(crcs) if crcs is not None else None,
        )  # fmt: skip

    def verified(self, crcs: list[int]) -> ObjectRecord:
        return replace(self, crcs=tuple(crcs))


class ObjectRecords:
    """The ``objects`` table of the index: object key -> :class:`ObjectRecord`."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.db = index.objects

    def get(self, key: str) -> ObjectRecord | None:
        with transaction(), self.index.env.begin(db=self.db) as txn:
            raw = txn.get(blob_id_for(key).encode())
        return ObjectRecord.from_json(json.loads(raw)) if raw is not None else None

    def put(self, obj: ObjectRecord) -> None:
        value = json.dumps(obj.to_json()).encode()
        with transaction(), self.index.env.begin(write=True, db=self.db) as txn:
            txn.put(blob_id_for(obj.key).encode(), value)

    def delete(self, key: str) -> None:
        with transaction(), self.index.env.begin(write=True, db=self.db) as txn:
            txn.delete(blob_id_for(key).encode())

    def __iter__(self) -> Any:
        with transaction(), self.index.env.begin(db=self.db) as txn:
            rows = [bytes(v) for _, v in txn.cursor()]
        return (ObjectRecord.from_json(json.loads(v)) for v in rows)


_RECORDS_LOCK = threading.Lock()


def records_for(index: Index) -> ObjectRecords:
    """The records table of ``index`` (one handle per index object: a fork's cache opens a
    new index, and gets its own). Its LMDB table is opened with the index (``Index``)."""
    with _RECORDS_LOCK:
        found = getattr(index, "_object_records", None)
        if found is None:
            found = ObjectRecords(index)
            index._object_records = found  # type: ignore[attr-defined]
        return found


def _reset_in_child() -> None:
    global _RECORDS_LOCK
    _RECORDS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_in_child)

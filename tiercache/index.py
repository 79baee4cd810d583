"""The index: which key is in which tier, with its checksum and origin version (LMDB).

LMDB gives what a node-wide index needs: many processes read concurrently without locks,
one writes at a time with ACID commits, and a process killed mid-commit leaves the last
committed state intact. Only the engine writes; every process reads.

Keys are arbitrary strings (origin URLs), often longer than LMDB's 511-byte key limit, so
the index is keyed by a digest of the key, which is also the blob's file name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import lmdb

from .forksafe import transaction
from .security import ensure_private_dir
from .tiers.store import BlobMeta

log = logging.getLogger(__name__)

_ABANDONED: list[object] = []

#: tier, flags, size, stored size, crc32, inode, mtime_ns, last access, fetched at, hits,
#: key length
_HEAD = struct.Struct("<BBQQIQqddIH")
#: Bumped whenever the packed entry changes; an index in another format is started afresh.
FORMAT = b"2"
_COMPRESSED, _SMALL = 1, 2


def blob_id_for(key: str) -> str:
    """A fixed-length, path-safe name for a key (128 bits of SHA-256)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Entry:
    """One cached object."""

    key: str
    tier: int
    size: int  # logical (decompressed) bytes
    blob: BlobMeta
    version: str  # the origin's ETag, or size and mtime, when the bytes were fetched
    last_access: float = 0.0
    hits: int = 0
    blob_id: str = field(default="", compare=False)
    #: Wall-clock time ``version`` was last known current: when the bytes were read from
    #: the origin, or when the engine last validated them, for every process on the node.
    fetched_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.blob_id:
            self.blob_id = blob_id_for(self.key)

    def pack(self) -> bytes:
        key = self.key.encode("utf-8", "surrogatepass")
        flags = (_COMPRESSED if self.blob.compressed else 0) | (_SMALL if self.blob.small else 0)
        head = _HEAD.pack(
            self.tier,
            flags,
            self.size,
            self.blob.stored_size,
            self.blob.checksum,
            self.blob.ino,
            self.blob.mtime_ns,
            self.last_access,
            self.fetched_at,
            min(self.hits, 2**32 - 1),
            len(key),
        )
        return head + key + self.version.encode()

    @classmethod
    def unpack(cls, raw: bytes | memoryview, blob_id: str = "") -> Entry:
        tier, flags, size, stored, crc, ino, mtime_ns, last, fetched, hits, klen = (
            _HEAD.unpack_from(raw)
        )
        body = bytes(raw[_HEAD.size :])
        key = body[:klen].decode("utf-8", "surrogatepass")
        meta = BlobMeta(stored, crc, bool(flags & _COMPRESSED), bool(flags & _SMALL), ino, mtime_ns)
        return cls(key, tier, size, meta, body[klen:].decode(), last, hits, blob_id, fetched)


class Placement(NamedTuple):
    """Where an entry lives, without the rest of it (start-up scans millions of these)."""

    blob_id: str
    tier: int
    stored_size: int
    small: bool
    last_access: float


class Index:
    """LMDB-backed map of blob id -> :class:`Entry`, plus per-tier byte and entry totals."""

    def __init__(self, path: Path, tier_names: list[str]) -> None:
        ensure_private_dir(path)
        self.path = path
        self.tier_names = tier_names
        self.env = lmdb.open(
            str(path / "index.lmdb"),
            subdir=False,
            map_size=16 * 1024**3,
            max_dbs=4,
            max_readers=1024,
            metasync=False,
            sync=True,
            mode=0o600,
        )
        # Every table is opened here, before this process has other threads on the index:
        # opening one needs LMDB's write lock and py-lmdb waits for it holding the GIL, so a
        # table opened later, while another thread of the process held a write transaction,
        # hung the process (that thread could never take the GIL back to commit).
        self.entries = self.env.open_db(b"entries")
        self.meta = self.env.open_db(b"meta")
        self.objects = self.env.open_db(b"objects")  # large objects' records (blocks.py)
        self._check_format()

    def _check_format(self) -> None:
        """Start afresh from an index another version of tiercache wrote in another layout.

        Its entries cannot be read, so they are dropped; the engine's start-up reconcile then
        sweeps their blobs as orphans. Data is only ever lost from the cache, never served
        wrong.
        """
        with transaction(), self.env.begin(db=self.meta) as txn:
            if txn.get(b"format") == FORMAT:
                return
        with transaction(), self.env.begin(write=True) as txn:
            found = txn.get(b"format", db=self.meta)
            if found == FORMAT:
                return  # another process got here first
            stale = txn.stat(self.entries)["entries"]
            if stale:
                log.warning(
                    "%s: index format %s, this tiercache writes %s; starting with an empty "
                    "index (%d entries dropped, their blobs are swept)",
                    self.path, (found or b"1").decode(), FORMAT.decode(), stale,
                )  # fmt: skip
                txn.drop(self.entries, delete=False)
                txn.delete(b"totals", db=self.meta)
            txn.put(b"format", FORMAT, db=self.meta)

    def get(self, key: str) -> Entry | None:
        blob_id = blob_id_for(key)
        with transaction(), self.env.begin(db=self.entries, buffers=True) as txn:
            raw = txn.get(blob_id.encode())
            return Entry.unpack(raw, blob_id) if raw is not None else None

    def get_by_blob_id(self, blob_id: str) -> Entry | None:
        with transaction(), self.env.begin(db=self.entries, buffers=True) as txn:
            raw = txn.get(blob_id.encode())
            return Entry.unpack(raw, blob_id) if raw is not None else None

    def __iter__(self) -> Iterator[Entry]:
        with transaction(), self.env.begin(db=self.entries, buffers=True) as txn:
            for k, v in txn.cursor():
                yield Entry.unpack(v, bytes(k).decode())

    def placements(
        self, after: bytes = b"", limit: int = 10_000, prefix: bytes = b""
    ) -> list[Placement]:
        """Up to ``limit`` entries' placements in blob id order, from the first id past
        ``after`` (and starting with ``prefix``); short read transactions (a fork waits
        for open ones), and no Entry objects, so a million entries take about a second."""
        out: list[Placement] = []
        with transaction(), self.env.begin(db=self.entries) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(max(after, prefix)):
                return out
            for key, raw in cursor:
                if key == after:
                    continue
                if not key.startswith(prefix):
                    break
                tier, flags, _, stored, *_rest, last, _f, _h, _k = _HEAD.unpack_from(raw)
                out.append(Placement(key.decode(), tier, stored, bool(flags & _SMALL), last))
                if len(out) >= limit:
                    break
        return out

    def tiers_of(self, blob_ids: list[str]) -> list[int | None]:
        """Each blob id's tier now (None: no entry), in one read transaction."""
        out: list[int | None] = []
        with transaction(), self.env.begin(db=self.entries, buffers=True) as txn:
            for blob_id in blob_ids:
                raw = txn.get(blob_id.encode())
                out.append(None if raw is None else raw[0])
        return out

    def totals(self) -> dict[str, dict[str, int]]:
        """Per tier: ``entries`` and ``used_bytes`` (stored bytes), as last committed."""
        with transaction(), self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"totals")
        stored = json.loads(raw) if raw else {}
        return {name: stored.get(name, {"entries": 0, "used_bytes": 0}) for name in self.tier_names}

    def write(self) -> IndexWriter:
        """A write transaction that keeps the per-tier totals in step with the entries."""
        return IndexWriter(self)

    def close(self) -> None:
        self.env.close()

    def abandon(self) -> None:
        """After fork, in the child: release the inherited environment so it can be reopened.

        py-lmdb refuses to open files that are already open in the process, and a forked
        child inherits the parent's registration; only ``close`` lifts it. Closing in the
        child is safe for LMDB: the child holds none of the parent's fcntl locks, reader
        slots are matched by pid, and shared mutexes are only torn down under the
        exclusive file lock, which the living parent's shared lock prevents.
        """
        try:
            self.env.close()
        except Exception:
            _ABANDONED.append(self.env)


class IndexWriter:
    """Context manager: put/delete entries, commit them with the updated totals atomically."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def __enter__(self) -> IndexWriter:
        self._gate = transaction()
        self._gate.__enter__()
        try:
            self.txn = self.index.env.begin(write=True)
        except BaseException:
            self._gate.__exit__(None, None, None)
            raise
        raw = self.txn.get(b"totals", db=self.index.meta)
        self.totals: dict[str, dict[str, int]] = json.loads(raw) if raw else {}
        self._totals_changed = False
        return self

    def _adjust(self, entry: Entry, sign: int) -> None:
        self._totals_changed = True
        name = self.index.tier_names[entry.tier]
        t = self.totals.setdefault(name, {"entries": 0, "used_bytes": 0})
        t["entries"] += sign
        t["used_bytes"] += sign * entry.blob.stored_size

    def get(self, blob_id: str) -> Entry | None:
        raw = self.txn.get(blob_id.encode(), db=self.index.entries)
        return Entry.unpack(raw, blob_id) if raw is not None else None

    def put(self, entry: Entry) -> None:
        old = self.get(entry.blob_id)
        if old is not None:
            self._adjust(old, -1)
        self.txn.put(entry.blob_id.encode(), entry.pack(), db=self.index.entries)
        self._adjust(entry, +1)

    def touch(self, entry: Entry) -> None:
        """Update access statistics only (no change to totals)."""
        self.txn.put(entry.blob_id.encode(), entry.pack(), db=self.index.entries)

    def delete(self, blob_id: str) -> Entry | None:
        old = self.get(blob_id)
        if old is not None:
            self.txn.delete(blob_id.encode(), db=self.index.entries)
            self._adjust(old, -1)
        return old

    def recount_totals(self) -> None:
        """Recompute the per-tier totals from the entries themselves (``verify --repair``)."""
        self.totals = {}
        self._totals_changed = True
        for key, raw in self.txn.cursor(db=self.index.entries):
            self._adjust(Entry.unpack(raw, bytes(key).decode()), +1)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                # A transaction that changed nothing commits nothing: LMDB then skips the
                # fsync, which on a disk costs milliseconds under the engine lock.
                if self._totals_changed:
                    self.txn.put(b"totals", json.dumps(self.totals).encode(), db=self.index.meta)
                self.txn.commit()
            else:
                self.txn.abort()
        finally:
            self._gate.__exit__(None, None, None)

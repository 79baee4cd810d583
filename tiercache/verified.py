"""Which disk-tier blobs some process on the node has verified lately.

A disk tier (``verify = "always"``) hashes a blob when it comes from disk into use. Each
DataLoader worker is its own process, and each opened every shard it read and hashed it,
every epoch: with 8 workers a shard was hashed 8 times per epoch. Recording a verification
node-wide makes it once per shard per ``verify_ttl_seconds``.

A record says: the blob with this id, in the file with this identity (inode, mtime) and this
checksum, hashed clean at this time. It holds only while all four match, so a rewritten,
replaced or re-admitted blob is hashed again, and only for the configured time, after which
pages re-read from the disk are hashed again. The records live in a small LMDB of their own
(``verified.lmdb`` beside the index) written by any process without fsync: losing them costs
only a re-hash.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import lmdb

from .forksafe import transaction
from .tiers.store import BlobMeta

_RECORD = struct.Struct("<QqId")  # inode, mtime_ns, crc32, verified at (wall clock)


class VerifiedTable:
    """Node-wide record of recent checksum verifications of file blobs."""

    def __init__(self, index_path: Path) -> None:
        self.path = index_path / "verified.lmdb"
        self._env: lmdb.Environment | None = None

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            self._env = lmdb.open(
                str(self.path),
                subdir=False,
                map_size=1024**3,
                max_readers=1024,
                sync=False,
                metasync=False,
                mode=0o600,
            )
        return self._env

    def fresh(self, blob_id: str, meta: BlobMeta, ttl: float) -> bool:
        """Whether this blob, as ``meta`` describes it, was verified less than ``ttl`` ago."""
        if ttl <= 0:
            return False
        with transaction(), self.env.begin(buffers=True) as txn:
            raw = txn.get(bytes.fromhex(blob_id))
            if raw is None:
                return False
            ino, mtime_ns, crc, when = _RECORD.unpack(raw)
        same = (ino, mtime_ns, crc) == (meta.ino, meta.mtime_ns, meta.checksum)
        return same and 0 <= time.time() - when < ttl

    def record(self, blob_id: str, meta: BlobMeta) -> None:
        """This blob was just hashed clean."""
        value = _RECORD.pack(meta.ino, meta.mtime_ns, meta.checksum, time.time())
        try:
            with transaction(), self.env.begin(write=True) as txn:
                txn.put(bytes.fromhex(blob_id), value)
        except lmdb.Error:
            pass  # a full disk or map: the next reader hashes again, nothing is wrong

    def purge(self, ttl: float) -> int:
        """Delete records older than ``ttl`` (their blobs may be long gone); returns how many."""
        cutoff = time.time() - ttl
        with transaction(), self.env.begin(write=True) as txn:
            stale = [bytes(k) for k, v in txn.cursor() if _RECORD.unpack(bytes(v))[3] < cutoff]
            for key in stale:
                txn.delete(key)
        return len(stale)

    def abandon(self) -> None:
        """After fork, in the child: release the inherited environment (see Index.abandon)."""
        if self._env is not None:
            try:
                self._env.close()
            except Exception:
                _ABANDONED.append(self._env)
            self._env = None


_ABANDONED: list[object] = []

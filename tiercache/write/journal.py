"""The write journal: every write, delete and rename not yet durable at the origin (LMDB).

One LMDB environment beside the staged files (``<write.path>/journal.lmdb``), written by
whichever process writes (a writer's ``close()`` commits its entry itself, so an
acknowledgement never waits for the engine) and by the engine's uploader (part progress,
completion). LMDB serialises writers across processes and survives SIGKILL at any instant;
the environment is opened with full durability (``sync`` and ``metasync``): a committed
entry is on disk when the commit returns, which is what ``close()`` acknowledges.

Databases:

* ``ops``: sequence number (program order, node-wide) -> operation (JSON): ``put`` (a staged
  file to upload), ``delete``, ``copy`` (a rename of an object only the origin holds);
* ``keys``: digest of an object's key -> the sequence number of its latest operation: what
  a read or a listing on this node sees before the origin does;
* ``uploads``: staged file -> its multipart upload at the origin (upload id, part size);
* ``parts``: staged file and part number -> the part's ETag, CRC32 and size;
* ``done``: digest of a key -> its last completed operation, kept a while so that listings
  taken before the completion still show it;
* ``origins``: digest -> the pickled origin filesystem an operation goes to (a restarted
  engine rebuilds it from here);
* ``meta``: the next sequence number, the bytes staged, the format.

Nothing slow ever runs inside a write transaction: files are written, linked and fsynced
before it, and deleted after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from ..forksafe import transaction
from ..index import blob_id_for
from ..security import ensure_private_dir

log = logging.getLogger("tiercache.write")

FORMAT = b"1"
_SEQ = struct.Struct(">Q")
_PART = struct.Struct(">I")
#: How long a completed operation stays in ``done`` (seconds): longer than any listing cache.
DONE_KEEP_SECONDS = 900.0

#: Operation kinds.
PUT, DELETE, COPY = "put", "delete", "copy"
#: Operation states: waiting or being uploaded; uploaded and verified (being released);
#: refused by the origin for good (kept, retried rarely, shown by ``tiercache uploads``).
PENDING, DURABLE, FAILED = "pending", "durable", "failed"


@dataclass
class Op:
    """One journal operation, as stored (JSON) under its sequence number."""

    seq: int
    kind: str
    key: str  # the origin URL, the cache key
    path: str  # the origin path (the key without its protocol)
    origin: str  # digest of the pickled origin filesystem (``origins``)
    token: str = ""  # put: the staged file's name
    size: int = 0
    crc32: int = 0
    src: str = ""  # copy: the origin path copied from
    early: bool = False  # put: parts sent while it was written may be kept
    state: str = PENDING
    error: str = ""
    attempts: int = 0
    version: str = ""  # durable: the origin's version of what it holds
    created: float = 0.0  # wall clock, when acknowledged
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> str:
        return posixpath.dirname(self.path.rstrip("/"))

    def encode(self) -> bytes:
        data = {k: v for k, v in self.__dict__.items() if k != "seq" and v not in ("", 0, {})}
        data["kind"] = self.kind
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, seq: int, raw: bytes | memoryview) -> Op:
        data = json.loads(bytes(raw))
        return cls(seq=seq, **data)

    def public(self) -> dict[str, Any]:
        """What ``tiercache uploads`` and ``fs.sync`` report about it."""
        out = {
            "seq": self.seq,
            "op": self.kind,
            "url": self.key,
            "size": self.size,
            "state": self.state,
            "attempts": self.attempts,
            "age_seconds": round(max(0.0, time.time() - self.created), 3),
        }
        if self.src:
            out["from"] = self.src
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Seen:
    """What this node knows about a key ahead of the origin: the latest pending operation."""

    op: Op

    @property
    def exists(self) -> bool:
        return self.op.kind != DELETE


#: Journals open in this process, by directory: LMDB refuses to open one file twice.
_OPEN: dict[Path, Journal] = {}
_OPEN_LOCK = threading.Lock()


def _reset_in_child() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_in_child)


def open_journal(path: Path, owner: str) -> Journal:
    """The process's :class:`Journal` in ``path``, opened once; ``owner`` names the cache
    (its index directory) that uploads it: one write path serves one cache only."""
    with _OPEN_LOCK:
        journal = _OPEN.get(path)
        if journal is None:
            journal = _OPEN[path] = Journal(path)
    journal.claim(owner)
    return journal


class Journal:
    """The write journal of one write tier (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        ensure_private_dir(path)
        self.path = path
        self.env = lmdb.open(
            str(path / "journal.lmdb"),
            subdir=False,
            map_size=4 * 1024**3,
            max_dbs=8,
            max_readers=1024,
            sync=True,
            metasync=True,  # an acknowledged write must survive a power cut, not only a crash
            mode=0o600,
        )
        self.ops = self.env.open_db(b"ops")
        self.keys = self.env.open_db(b"keys")
        self.uploads = self.env.open_db(b"uploads")
        self.parts = self.env.open_db(b"parts")
        self.done = self.env.open_db(b"done")
        self.origins = self.env.open_db(b"origins")
        self.meta = self.env.open_db(b"meta")
        with transaction(), self.env.begin(db=self.meta) as txn:
            found = txn.get(b"format")
        if found is None:
            with transaction(), self.env.begin(write=True, db=self.meta) as txn:
                found = txn.get(b"format")
                if found is None:
                    txn.put(b"format", FORMAT)
                    found = FORMAT
        if found != FORMAT:
            # Never drop a journal: it may hold the only copy of acknowledged writes.
            self.env.close()
            raise RuntimeError(
                f"{path}/journal.lmdb is in format {bytes(found).decode()}, this tiercache "
                f"writes {FORMAT.decode()}: upload its pending writes with the tiercache "
                "version that made them (`tiercache uploads --wait`) before upgrading"
            )

    def claim(self, owner: str) -> None:
        """Record which cache uploads this journal; refuse a second one."""
        with transaction(), self.env.begin(db=self.meta) as txn:
            found = txn.get(b"owner")
        if found is None:
            with transaction(), self.env.begin(write=True, db=self.meta) as txn:
                found = txn.get(b"owner")
                if found is None:
                    txn.put(b"owner", owner.encode())
                    return
        if bytes(found).decode() != owner:
            raise ValueError(
                f"[write] path {self.path} already stages the writes of the cache at "
                f"{bytes(found).decode()}; give the cache at {owner} a [write] path of its own"
            )

    # -- writing ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[JournalWriter]:
        """One atomic, durable change (commits on leaving the block, aborts on an error)."""
        with transaction(), self.env.begin(write=True) as txn:
            yield JournalWriter(self, txn)

    def remember_origin(self, digest: str, pickled: bytes) -> None:
        with transaction(), self.env.begin(write=True, db=self.origins) as txn:
            if txn.get(digest.encode()) is None:
                txn.put(digest.encode(), pickled)

    # -- reading ----------------------------------------------------------------------------------
    def latest(self, key: str) -> Seen | None:
        """The latest pending operation on ``key`` (None: the origin is the truth)."""
        bid = blob_id_for(key).encode()
        with transaction(), self.env.begin(buffers=True) as txn:
            seq = txn.get(bid, db=self.keys)
            if seq is None:
                return None
            raw = txn.get(bytes(seq), db=self.ops)
            if raw is None:
                return None
            return Seen(Op.decode(_SEQ.unpack(seq)[0], raw))

    def get(self, seq: int) -> Op | None:
        with transaction(), self.env.begin(buffers=True, db=self.ops) as txn:
            raw = txn.get(_SEQ.pack(seq))
            return None if raw is None else Op.decode(seq, raw)

    def pending(self) -> list[Op]:
        """Every operation not yet released, in program order."""
        with transaction(), self.env.begin(buffers=True, db=self.ops) as txn:
            return [Op.decode(_SEQ.unpack(k)[0], v) for k, v in txn.cursor()]

    def last_seq(self) -> int:
        with transaction(), self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"next_seq")
        return (_SEQ.unpack(raw)[0] if raw else 1) - 1

    def latest_under(self, prefix: str) -> dict[str, Op]:
        """The latest pending operation of every path under ``prefix`` (a directory)."""
        out: dict[str, Op] = {}
        for op in self.pending():
            for path in (op.path,):
                if _under(path, prefix):
                    out[path] = op
        return out

    def done_under(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Operations completed recently under ``prefix``: path -> {kind, size, at (monotonic)}."""
        out: dict[str, dict[str, Any]] = {}
        with transaction(), self.env.begin(buffers=True, db=self.done) as txn:
            for _, raw in txn.cursor():
                item = json.loads(bytes(raw))
                if _under(item["path"], prefix):
                    out[item["path"]] = item
        return out

    def done_for(self, key: str) -> dict[str, Any] | None:
        with transaction(), self.env.begin(buffers=True, db=self.done) as txn:
            raw = txn.get(blob_id_for(key).encode())
            return None if raw is None else json.loads(bytes(raw))

    def staged_bytes(self) -> int:
        with transaction(), self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"staged_bytes")
        return _SEQ.unpack(raw)[0] if raw else 0

    def tokens(self) -> set[str]:
        """Staged files some operation or upload still refers to."""
        names = {op.token for op in self.pending() if op.token}
        with transaction(), self.env.begin(db=self.uploads) as txn:
            names.update(bytes(k).decode() for k, _ in txn.cursor())
        return names

    def upload(self, token: str) -> dict[str, Any] | None:
        with transaction(), self.env.begin(buffers=True, db=self.uploads) as txn:
            raw = txn.get(token.encode())
            return None if raw is None else json.loads(bytes(raw))

    def all_uploads(self) -> dict[str, dict[str, Any]]:
        with transaction(), self.env.begin(buffers=True, db=self.uploads) as txn:
            return {bytes(k).decode(): json.loads(bytes(v)) for k, v in txn.cursor()}

    def parts_of(self, token: str) -> dict[int, dict[str, Any]]:
        prefix = token.encode() + b"\0"
        out: dict[int, dict[str, Any]] = {}
        with transaction(), self.env.begin(buffers=True, db=self.parts) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for raw_key, v in cursor:
                    k = bytes(raw_key)
                    if not k.startswith(prefix):
                        break
                    out[_PART.unpack(k[len(prefix) :])[0]] = json.loads(bytes(v))
        return out

    def origin_pickle(self, digest: str) -> bytes | None:
        with transaction(), self.env.begin(db=self.origins) as txn:
            raw = txn.get(digest.encode())
        return None if raw is None else bytes(raw)

    def summary(self) -> dict[str, Any]:
        """Counts for ``stats()`` and metrics: pending files and bytes, failures, the oldest."""
        pending = self.pending()
        waiting = [op for op in pending if op.state != FAILED]
        failed = [op for op in pending if op.state == FAILED]
        now = time.time()
        return {
            "pending_files": len(waiting),
            "pending_bytes": sum(op.size for op in waiting if op.kind == PUT),
            "failed_files": len(failed),
            "failed_bytes": sum(op.size for op in failed if op.kind == PUT),
            "staged_bytes": self.staged_bytes(),
            "oldest_pending_seconds": max((now - op.created for op in pending), default=0.0),
            "failed": [op.public() for op in failed[:20]],
        }

    def close(self) -> None:
        self._forget()
        self.env.close()

    def _forget(self) -> None:
        with _OPEN_LOCK:
            if _OPEN.get(self.path) is self:
                del _OPEN[self.path]

    def abandon(self) -> None:
        """After fork, in the child (see ``Index.abandon``)."""
        from ..index import _ABANDONED

        self._forget()
        try:
            self.env.close()
        except Exception:
            _ABANDONED.append(self.env)


class JournalWriter:
    """Changes inside one journal write transaction."""

    def __init__(self, journal: Journal, txn: lmdb.Transaction) -> None:
        self.j = journal
        self.txn = txn

    def latest(self, key: str) -> Op | None:
        seq = self.txn.get(blob_id_for(key).encode(), db=self.j.keys)
        if seq is None:
            return None
        return self.get(_SEQ.unpack(seq)[0])

    def get(self, seq: int) -> Op | None:
        raw = self.txn.get(_SEQ.pack(seq), db=self.j.ops)
        return None if raw is None else Op.decode(seq, raw)

    def append(self, op: Op) -> Op:
        """Give ``op`` the next sequence number and make it the latest on its key."""
        raw = self.txn.get(b"next_seq", db=self.j.meta)
        seq = _SEQ.unpack(raw)[0] if raw else 1
        self.txn.put(b"next_seq", _SEQ.pack(seq + 1), db=self.j.meta)
        op.seq = seq
        op.created = op.created or time.time()
        self.txn.put(_SEQ.pack(seq), op.encode(), db=self.j.ops)
        self.txn.put(blob_id_for(op.key).encode(), _SEQ.pack(seq), db=self.j.keys)
        if op.kind == PUT:
            self._staged(op.size)
        return op

    def update(self, op: Op) -> None:
        if self.txn.get(_SEQ.pack(op.seq), db=self.j.ops) is not None:
            self.txn.put(_SEQ.pack(op.seq), op.encode(), db=self.j.ops)

    def remove(self, op: Op, *, done: dict[str, Any] | None = None) -> bool:
        """Drop ``op`` (completed, or cancelled by a later operation on its key).

        ``done``: what it left at the origin, remembered for listings for a while.
        Returns False if it was gone already (another engine finished it).
        """
        key = _SEQ.pack(op.seq)
        if self.txn.get(key, db=self.j.ops) is None:
            return False
        self.txn.delete(key, db=self.j.ops)
        bid = blob_id_for(op.key).encode()
        if self.txn.get(bid, db=self.j.keys) == key:
            self.txn.delete(bid, db=self.j.keys)
        if op.kind == PUT:
            self._staged(-op.size)
            self.drop_upload(op.token)
        if done is not None:
            item = {"path": op.path, "kind": op.kind, "at": time.monotonic(), "wall": time.time()}
            self.txn.put(bid, json.dumps({**item, **done}).encode(), db=self.j.done)
        return True

    def _staged(self, delta: int) -> None:
        raw = self.txn.get(b"staged_bytes", db=self.j.meta)
        value = max(0, (_SEQ.unpack(raw)[0] if raw else 0) + delta)
        self.txn.put(b"staged_bytes", _SEQ.pack(value), db=self.j.meta)

    def upload(self, token: str) -> dict[str, Any] | None:
        raw = self.txn.get(token.encode(), db=self.j.uploads)
        return None if raw is None else json.loads(bytes(raw))

    def set_upload(self, token: str, info: dict[str, Any]) -> None:
        self.txn.put(token.encode(), json.dumps(info).encode(), db=self.j.uploads)

    def drop_upload(self, token: str) -> None:
        if not token:
            return
        self.txn.delete(token.encode(), db=self.j.uploads)
        prefix = token.encode() + b"\0"
        cursor = self.txn.cursor(db=self.j.parts)
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                if not cursor.delete():
                    break

    def record_part(self, token: str, number: int, info: dict[str, Any]) -> None:
        key = token.encode() + b"\0" + _PART.pack(number)
        self.txn.put(key, json.dumps(info).encode(), db=self.j.parts)

    def prune_done(self, older_than: float = DONE_KEEP_SECONDS) -> int:
        now = time.time()
        old = [
            bytes(k)
            for k, v in self.txn.cursor(db=self.j.done)
            if now - json.loads(bytes(v)).get("wall", 0) > older_than
        ]
        for k in old:
            self.txn.delete(k, db=self.j.done)
        return len(old)


def origin_digest(pickled: bytes) -> str:
    return hashlib.sha256(pickled).hexdigest()[:32]


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")

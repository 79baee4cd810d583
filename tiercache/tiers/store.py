"""One tier's bytes on a filesystem: large blobs as files, small ones in an LMDB store.

Every tier, RAM or SSD, is a directory; a RAM tier is simply a directory on a memory-backed
filesystem (``/dev/shm``), which every process on the node can map and read without asking
anybody. Large objects are one file each, because LMDB's overflow pages fragment under
large-value churn; small objects live in the tier's ``small.lmdb`` because one file per 4 KiB
object costs more in syscalls than the bytes are worth.

Writes are crash-safe: a blob is written under a temporary name, fsynced and renamed into
place before the index ever points at it; orphans from a killed writer are swept at start.
Reads verify the checksum recorded at write time, so damaged bytes are reported as
:class:`CorruptBlobError` (a miss plus a repair upstream), never returned.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import lz4.frame

from ..config import TierConfig
from ..forksafe import transaction
from ..localfs import mount_of
from ..security import ensure_private_dir

_TMP_PREFIX = ".tmp-"


class CorruptBlobError(Exception):
    """A stored blob's bytes no longer match the checksum recorded when it was written."""


#: What blob bytes arrive as: bytes, a fetch's bytearray, or a view of a mapping.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class BlobMeta:
    """What the index records about a stored blob, to find and verify it later."""

    stored_size: int  # bytes on disk (after compression)
    checksum: int  # crc32 of the stored bytes
    compressed: bool
    small: bool  # lives in small.lmdb rather than a file
    ino: int = 0  # file identity at write time, for verify = "on-change"
    mtime_ns: int = 0


@dataclass
class Staged:
    """A blob written but not yet visible: in ``tmp`` (files) or in hand (small objects)."""

    blob_id: str
    meta: BlobMeta
    tmp: Path | None = None
    stored: Buffer = b""

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()


class TierStore:
    """Reads and writes blobs of one tier. Safe to use from many processes at once."""

    def __init__(self, config: TierConfig) -> None:
        self.config = config
        self.root = config.path
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self._make_dirs()
        self.compress = config.compression == "lz4"
        self._small: lmdb.Environment | None = None
        self._small_lock = threading.Lock()
        self._maps: OrderedDict[str, _Mapping] = OrderedDict()
        self._maps_lock = threading.Lock()
        self._mapped_bytes = 0
        self._swept_at = 0.0
        # Shared memory cannot rot and fsync on it is a no-op; on a disk the rename must
        # not reach the platter before the bytes do.
        self._durable = not mount_of(self.root).is_memory

    def _make_dirs(self) -> None:
        for d in (self.root, self.blob_dir, self.tmp_dir):
            ensure_private_dir(d)
        self._root_ino = os.stat(self.root).st_ino

    def wiped(self) -> bool:
        """Whether the tier's directory was deleted or replaced since this store made it
        (a job epilogue that empties /dev/shm)."""
        try:
            return os.stat(self.root).st_ino != self._root_ino or not self.tmp_dir.is_dir()
        except FileNotFoundError:
            return True

    def reopen(self) -> None:
        """After a wipe: make the directories again and open a fresh small-object store
        (the old one is an unlinked file only this process still sees)."""
        self.close()
        self._make_dirs()

    # -- paths --------------------------------------------------------------------------------
    def blob_path(self, blob_id: str) -> Path:
        """Blob ids are hex digests, so no key ever becomes a path (no traversal)."""
        if len(blob_id) < 3 or not all(c in "0123456789abcdef" for c in blob_id):
            raise ValueError(f"invalid blob id {blob_id!r}")
        return self.blob_dir / blob_id[:2] / blob_id

    @property
    def small(self) -> lmdb.Environment:
        small = self._small
        if small is not None:
            return small
        # Opened on first use, by whichever thread comes first (a reader, the engine's
        # start-up): py-lmdb refuses a second open of the same file in one process.
        with self._small_lock:
            if self._small is None:
                self._small = self._open_small()
            return self._small

    def _open_small(self) -> lmdb.Environment:
        map_size = max(256 * 1024**2, 4 * self.config.capacity)
        return lmdb.open(
            str(self.root / "small.lmdb"),
            subdir=False,
            map_size=map_size,
            max_readers=1024,
            sync=self._durable,
            metasync=False,
            lock=True,
            mode=0o600,
        )

    # -- write ----------------------------------------------------------------------------------
    def encode(self, data: Buffer) -> tuple[Buffer, bool]:
        """Compress if the tier asks for it and it pays; returns (stored bytes, compressed)."""
        if self.compress:
            packed = lz4.frame.compress(data, store_size=True)
            if len(packed) < len(data):
                return packed, True
        return data, False

    def put_encoded(self, blob_id: str, stored: Buffer, compressed: bool, size: int) -> BlobMeta:
        """Store bytes already passed through :meth:`encode` (``size`` is the logical size)."""
        return self.publish(self.stage(blob_id, stored, compressed, size))

    def stage(
        self,
        blob_id: str,
        stored: Buffer,
        compressed: bool,
        size: int,
        checksum: int | None = None,
    ) -> Staged:
        """The slow half of a write, safe to run outside any lock: checksum, and for a file
        blob, write it under a temporary name and fsync it. Nothing is visible yet.

        ``checksum`` is ``stored``'s CRC32 when the caller has it already (the origin's
        read checked the same bytes against it); otherwise it is computed here."""
        if checksum is None:
            checksum = zlib.crc32(stored)
        if size <= self.config.small_object_bytes:
            meta = BlobMeta(len(stored), checksum, compressed, small=True)
            return Staged(blob_id, meta, stored=stored)
        tmp = self.tmp_dir / f"{_TMP_PREFIX}{blob_id}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the tier's directory was wiped: make it again
            self._make_dirs()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(stored)
            while view:
                view = view[os.write(fd, view) :]
            if self._durable:
                os.fsync(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.close(fd)
        meta = BlobMeta(len(stored), checksum, compressed, False, st.st_ino, st.st_mtime_ns)
        return Staged(blob_id, meta, tmp=tmp)

    def stage_file(self, blob_id: str, size: int) -> StagingFile:
        """A temporary blob file of ``size`` bytes to be written in order (a peer's answer
        received straight into this tier, chunk by chunk); see :class:`StagingFile`."""
        tmp = self.tmp_dir / f"{_TMP_PREFIX}{blob_id}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return StagingFile(blob_id, tmp, fd, size, self._durable)

    def stage_from_file(self, blob_id: str, source: Path, size: int, checksum: int) -> Staged:
        """Stage the bytes of an existing file (an upload the write tier verified): a hard
        link when the tier keeps them as they are on the same filesystem, else a copy
        through :meth:`stage`. ``checksum``: the file's CRC32, known already."""
        if size > self.config.small_object_bytes and not self.compress:
            tmp = self.tmp_dir / f"{_TMP_PREFIX}{blob_id}-{secrets.token_hex(4)}"
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
            else:
                st = os.stat(tmp)
                meta = BlobMeta(size, checksum, False, False, st.st_ino, st.st_mtime_ns)
                return Staged(blob_id, meta, tmp=tmp)
        stored, compressed = self.encode(source.read_bytes())
        return self.stage(
            blob_id, stored, compressed, size, checksum=None if compressed else checksum
        )

    def publish(self, staged: Staged) -> BlobMeta:
        """Make a staged blob visible under its id (a rename: atomic, and keeps inode and
        mtime, so the identity recorded at staging stays true)."""
        if staged.tmp is None:
            try:
                with transaction(), self.small.begin(write=True) as txn:
                    txn.put(staged.blob_id.encode(), staged.stored)
            except (lmdb.DiskError, lmdb.MapFullError) as exc:
                # To the engine a full small-object store is a full disk: skip the tier.
                raise OSError(
                    errno.ENOSPC, f"tier {self.config.name}: small-object store full: {exc}"
                ) from exc
            return staged.meta
        final = self.blob_path(staged.blob_id)
        try:
            final.parent.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:  # wiped since the blob was staged: its file went too
            self._make_dirs()
            raise
        os.replace(staged.tmp, final)
        return staged.meta

    # -- read -----------------------------------------------------------------------------------
    def get(self, blob_id: str, meta: BlobMeta) -> bytes:
        """The whole object's bytes (decompressed), verified against ``meta.checksum``."""
        if meta.small:
            with transaction(), self.small.begin(buffers=True) as txn:
                view = txn.get(blob_id.encode())
                if view is None:
                    raise FileNotFoundError(errno.ENOENT, "blob missing", blob_id)
                self._check(blob_id, view, meta)
                return self._decode(view, meta) if meta.compressed else bytes(view)
        fd, _ = self._open_sized(blob_id, meta)
        try:
            data = _read_exact(fd, meta.stored_size, 0)
        finally:
            os.close(fd)
        self._check(blob_id, data, meta)
        return self._decode(data, meta) if meta.compressed else data

    @contextlib.contextmanager
    def borrowed(
        self, blob_id: str, meta: BlobMeta, *, verify: bool = True
    ) -> Iterator[bytes | memoryview]:
        """The blob's verified logical bytes for the length of a ``with`` block.

        A file blob is mapped rather than read: moving it to another tier then copies it
        once, straight out of this tier's pages, instead of first into a fresh buffer
        (fresh memory is the slow part of a copy on many machines). ``verify=False`` (a
        memory tier) hashes it only if the file's identity is not the one recorded.
        """
        if meta.small or meta.compressed:
            yield self.get(blob_id, meta)
            return
        fd, st = self._open_sized(blob_id, meta)
        try:
            mm = mmap.mmap(fd, meta.stored_size, prot=mmap.PROT_READ) if meta.stored_size else None
        finally:
            os.close(fd)
        view = memoryview(mm) if mm is not None else memoryview(b"")
        try:
            if verify or self._changed(st, meta):
                self._check(blob_id, view, meta)
            yield view
        finally:
            view.release()
            if mm is not None:
                with contextlib.suppress(BufferError):  # a slice still held: GC unmaps it
                    mm.close()

    def _open_sized(self, blob_id: str, meta: BlobMeta) -> tuple[int, os.stat_result]:
        """Open a file blob; a size other than the recorded one is damage (truncation)."""
        fd = os.open(self.blob_path(blob_id), os.O_RDONLY)
        st = os.fstat(fd)
        if st.st_size != meta.stored_size:
            os.close(fd)
            raise CorruptBlobError(
                f"{self.config.name} blob {blob_id}: {st.st_size} bytes on disk, "
                f"{meta.stored_size} expected"
            )
        return fd, st

    def mapped(self, blob_id: str, meta: BlobMeta, *, verify: bool = False) -> memoryview:
        """The blob's bytes as a read-only view of a shared mapping (no copy, no syscall).

        Used for tiers with ``verify = "on-change"``: a mapping made once per process and
        blob serves every later hit straight from shared memory, at memory-copy speed,
        while the index entry's identity (inode, mtime) still matches. Mappings of blobs the
        engine has since deleted are dropped whenever a new one is made, so a process pins
        at most ``_MAP_BYTES`` of memory beyond the tier's capacity (and what its callers
        still hold).

        Every call returns the caller's own view: dropping a mapping from this cache (another
        thread's ``_remember``) never releases a view a caller holds; the pages stay mapped
        until the last view of them goes.
        """
        with self._maps_lock:  # the FUSE mount and block reads map from many threads
            cached = self._maps.get(blob_id)
            if cached is not None and (cached.ino, cached.mtime_ns) == (meta.ino, meta.mtime_ns):
                self._maps.move_to_end(blob_id)
                view = cached.export()
            else:
                cached = None
        if cached is not None:
            if verify:  # disks rot without touching mtime: hash what this read will copy
                try:
                    self._check(blob_id, view, meta)
                except CorruptBlobError:
                    view.release()
                    raise
            return view
        fd, st = self._open_sized(blob_id, meta)  # raises if missing or truncated
        try:
            # A blob about to be hashed is read whole: map every page in one call.
            mm = _map(fd, meta.stored_size, populate=verify)
        finally:
            os.close(fd)
        mapping = _Mapping(st.st_ino, st.st_mtime_ns, meta.stored_size, mm)
        view = mapping.export()
        if verify or self._changed(st, meta):
            # Hash the mapped pages themselves: reading the file into a buffer first would
            # cost a copy into fresh memory, several times the hash, per blob and process.
            try:
                self._check(blob_id, view, meta)
            except CorruptBlobError:
                view.release()
                mapping.close()
                raise
        self._remember(blob_id, mapping)
        return view

    def read_into(
        self, blob_id: str, meta: BlobMeta, offset: int, dest: memoryview, *, verify: bool
    ) -> bool:
        """Copy bytes ``[offset, offset + len(dest))`` of a file blob into ``dest`` with
        ``preadv``: the kernel's copy, made without the interpreter lock, so readers on
        several threads copy in parallel (a copy out of a mapping holds the lock).

        Returns False where this path does not apply, for the caller to take ``mapped``'s:
        a small or compressed blob, or a part of a blob that must be hashed (``verify``, or
        its file is not the one recorded) and can only be hashed whole.
        """
        if meta.small or meta.compressed:
            return False
        fd, st = self._open_sized(blob_id, meta)  # raises if missing or truncated
        try:
            check = verify or self._changed(st, meta)
            if check and (offset, len(dest)) != (0, meta.stored_size):
                return False
            got = 0
            while got < len(dest):
                n = os.preadv(fd, [dest[got:]], offset + got)
                if n <= 0:
                    raise CorruptBlobError(f"{self.config.name} blob {blob_id}: truncated")
                got += n
        finally:
            os.close(fd)
        if check:
            self._check(blob_id, dest, meta)
        return True

    def _remember(self, blob_id: str, mapping: _Mapping) -> None:
        with self._maps_lock:
            old = self._maps.pop(blob_id, None)
            if old is not None:
                self._mapped_bytes -= old.size
                old.close()
            if mapping.size > _MAP_BYTES:
                # Larger than the whole budget: kept alive by its caller's view alone, and
                # unmapped when that goes (keeping it would push out every other mapping).
                return
            self._maps[blob_id] = mapping
            self._mapped_bytes += mapping.size
            # Drop mappings of blobs that were replaced or deleted (at most a few times a
            # second: a stat per mapping), then the least recently used.
            now = time.monotonic()
            if now - self._swept_at > _SWEEP_SECONDS:
                self._swept_at = now
                for other_id, other in list(self._maps.items()):
                    if other_id != blob_id and not self._still_current(other_id, other):
                        self._forget(other_id)
            # The mapping just made is last and is never dropped here: its view is about to
            # be returned (one larger than the whole budget stays alone until the next).
            while (self._mapped_bytes > _MAP_BYTES or len(self._maps) > _MAP_COUNT) and len(
                self._maps
            ) > 1:
                self._forget(next(iter(self._maps)))

    def _still_current(self, blob_id: str, mapping: _Mapping) -> bool:
        try:
            st = os.stat(self.blob_path(blob_id))
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_mtime_ns) == (mapping.ino, mapping.mtime_ns)

    def _forget(self, blob_id: str) -> None:
        """Drop a mapping from the cache (the caller holds ``_maps_lock``)."""
        mapping = self._maps.pop(blob_id)
        self._mapped_bytes -= mapping.size
        mapping.close()

    def _changed(self, st: os.stat_result, meta: BlobMeta) -> bool:
        return (st.st_ino, st.st_mtime_ns) != (meta.ino, meta.mtime_ns)

    def _check(self, blob_id: str, data: Buffer, meta: BlobMeta) -> None:
        if zlib.crc32(data) != meta.checksum:
            raise CorruptBlobError(f"{self.config.name} blob {blob_id}: checksum mismatch")

    def _decode(self, data: bytes | memoryview, meta: BlobMeta) -> bytes:
        try:
            return lz4.frame.decompress(data)
        except RuntimeError as exc:
            raise CorruptBlobError(f"{self.config.name}: lz4 frame damaged: {exc}") from None

    # -- delete and housekeeping ----------------------------------------------------------------
    def delete(self, blob_id: str, meta: BlobMeta) -> None:
        if meta.small:
            with transaction(), self.small.begin(write=True) as txn:
                txn.delete(blob_id.encode())
            return
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(blob_id).unlink()

    def blob_files(self) -> dict[str, int]:
        """Every large blob file present: blob id -> size on disk."""
        found: dict[str, int] = {}
        for sub in self.blob_dir.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                with contextlib.suppress(FileNotFoundError):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_size
        return found

    def small_ids(self, prefix: str = "") -> set[str]:
        """Ids of the small blobs stored (those starting with ``prefix``)."""
        start = prefix.encode()
        found = set()
        with transaction(), self.small.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for key in cursor.iternext(values=False):
                    if not key.startswith(start):
                        break
                    found.add(bytes(key).decode())
        return found

    def blob_names(self, prefix: str) -> set[str]:
        """Ids of the file blobs present whose id starts with the two-digit ``prefix``."""
        try:
            return {e.name for e in os.scandir(self.blob_dir / prefix) if len(e.name) >= 3}
        except FileNotFoundError:
            return set()

    def has_blob(self, blob_id: str, small: bool) -> bool:
        if small:
            with transaction(), self.small.begin() as txn:
                return txn.get(blob_id.encode()) is not None
        return self.blob_path(blob_id).exists()

    def sweep_temporaries(self) -> int:
        """Remove half-written files a killed writer left behind; returns how many."""
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self._small is not None:
            self._small.close()
            self._small = None

    def abandon(self) -> None:
        """After fork: release the inherited small-object store so the child can reopen it
        (see ``Index.abandon`` for why closing it in the child is safe and necessary)."""
        if self._small is not None:
            try:
                self._small.close()
            except Exception:
                _ABANDONED.append(self._small)
            self._small = None


class StagingFile:
    """A blob file being filled in order: :meth:`write` takes the bytes, :meth:`finish`
    makes it a :class:`Staged` blob (synced, identity recorded) and maps it for reading,
    :meth:`discard` removes it. Its name is a temporary one until publishing, so a killed
    writer leaves only what the start-up sweep removes.

    Written with ``write`` from the caller's (reused, warm) buffer rather than through a
    fresh writable mapping: on tmpfs the mapping's page faults cost twice the copy."""

    def __init__(self, blob_id: str, tmp: Path, fd: int, size: int, durable: bool) -> None:
        self.blob_id = blob_id
        self.tmp = tmp
        self.size = size
        self._fd = fd
        self._durable = durable
        self._written = 0

    def write(self, chunk: Buffer) -> None:
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            self._written += n
            view = view[n:]

    def finish(self, checksum: int) -> tuple[Staged, memoryview]:
        """(the staged blob, a read-only view of its bytes, valid as long as it is held)."""
        try:
            if self._written != self.size:
                raise OSError(errno.EIO, f"staged {self._written} of {self.size} bytes", self.tmp)
            if self._durable:
                os.fsync(self._fd)
            st = os.fstat(self._fd)
            view = memoryview(b"")
            if self.size:
                with open(self.tmp, "rb") as f:
                    view = memoryview(mmap.mmap(f.fileno(), self.size, prot=mmap.PROT_READ))
        finally:
            os.close(self._fd)
            self._fd = -1
        meta = BlobMeta(self.size, checksum, False, False, st.st_ino, st.st_mtime_ns)
        return Staged(self.blob_id, meta, tmp=self.tmp), view

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


#: Per process and tier, at most this many bytes and blobs stay mapped for fast hits.
_MAP_BYTES = 1024**3
_MAP_COUNT = 512
_SWEEP_SECONDS = 0.25


@dataclass
class _Mapping:
    """One blob file mapped into this process, shared by the views handed out of it."""

    ino: int
    mtime_ns: int
    size: int
    mm: mmap.mmap | None

    def export(self) -> memoryview:
        """A new view for one caller: it keeps the pages mapped until it is released."""
        return memoryview(self.mm) if self.mm is not None else memoryview(b"")

    def close(self) -> None:
        if self.mm is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a view: GC unmaps it
                self.mm.close()


def _map(fd: int, size: int, populate: bool) -> mmap.mmap | None:
    """Map ``size`` bytes of ``fd`` read-only; ``populate`` faults every page in at once."""
    if not size:
        return None
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)


#: LMDB environments inherited across fork must never be closed (or used) by the child.
_ABANDONED: list[object] = []


def _read_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    # Short reads happen on signals or concurrent truncation; finish or report.
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise CorruptBlobError(f"blob truncated: {got} of {size} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)

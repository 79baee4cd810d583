"""The file ``fs.open(path, "wb")`` returns: a real file on local disk, published on close.

Writes go straight to a staging file (``os.pwrite``; nothing is buffered in user space, so
``os.fsync(f.fileno())`` covers every byte written, as PyTorch DCP expects). ``close()``
fsyncs it, moves it into ``data/``, fsyncs that directory and commits the journal entry;
only then does it return: the write is acknowledged and survives SIGKILL or a power cut.

A file that is not closed is not acknowledged and never reaches the origin: leaving a
``with`` block by an exception, or dropping the file unclosed, discards it (unlike a plain
file, which would keep a half-written checkpoint). Inside ``with fs.transaction:``,
``close()`` only stages the file; the transaction commits every file in one journal commit.

The CRC32 of the contents is computed as they are written, for large writes on a helper
thread while the kernel copies the bytes (the staged copy is verified against it when read,
the origin's stored checksum is compared with it after upload); after a seek backwards it
is computed once more from the file at close.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger("tiercache.write")

_CHUNK = 8 << 20
#: Writes at least this large have their CRC32 computed by a helper thread while the
#: kernel copies them (zlib releases the GIL): the hash costs the writer no time.
_OVERLAP_BYTES = 1 << 20
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _crc_pool() -> ThreadPoolExecutor:
    """One hashing thread per process (made again in a forked child)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="tiercache-crc"))
    return _POOL[1]


class Committer(Protocol):
    """What a staged file needs from the filesystem that opened it."""

    def reserve(self, f: StagedFile, need: int) -> None: ...

    def commit(self, files: list[StagedFile]) -> None: ...

    def discard(self, f: StagedFile) -> None: ...

    def written(self, f: StagedFile) -> None: ...

    def rewritten(self, f: StagedFile) -> None: ...


class StagedFile(io.RawIOBase):
    """A write-only, seekable file over one staging file (see the module docstring)."""

    def __init__(
        self,
        committer: Committer,
        path: str,
        key: str,
        fd: int,
        token: str,
        *,
        mode: str = "wb",
        autocommit: bool = True,
    ) -> None:
        super().__init__()
        self._committer = committer
        self.path = path
        self.key = key
        self.mode = mode
        self.autocommit = autocommit
        self.token = token
        self._fd = fd
        self._pos = 0
        self.size = 0
        self._crc = 0
        #: Every byte so far was appended in order: the running CRC32 is the file's, and the
        #: parts handed to the uploader while it is written stay valid.
        self.sequential = True
        #: Whole parts handed to the uploader before close (see ``fsops.FileCommitter``).
        self.early_parts = 0
        #: The staged file's identity once staged (inode, mtime), for the node's record of
        #: verified files: written here with this CRC32, it needs no re-hash for a while.
        self.ino = 0
        self.mtime_ns = 0
        self._reserved = 0
        #: "open" -> "staged" (closed in a transaction) -> "committed" | "discarded"
        self.state = "open"

    # -- io.RawIOBase -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"I/O operation on closed file {self.path}")
        return self._fd

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = seek_position(self._pos, self.size, offset, whence, self.path)
        return self._pos

    def write(self, data: Any) -> int:
        if self.state != "open":
            raise ValueError(f"write to closed file {self.path}")
        view = memoryview(data).cast("B")
        n = len(view)
        if n == 0:
            return 0
        end = self._pos + n
        if end > self._reserved:
            self._committer.reserve(self, max(end - self.size, self._committer_step()))
            self._reserved = max(end, self.size) + self._committer_step()
        crc: Future[int] | None = None
        if self.sequential and self._pos == self.size:
            if n >= _OVERLAP_BYTES:  # hashed on another core while the kernel copies it
                crc = _crc_pool().submit(zlib.crc32, view, self._crc)
            else:
                self._crc = zlib.crc32(view, self._crc)
        elif self.sequential:
            self.sequential = False
            self._committer.rewritten(self)
        written = 0
        try:
            while written < n:
                written += os.pwrite(self._fd, view[written:], self._pos + written)
        finally:
            if crc is not None:
                self._crc = crc.result()
        self._pos = end
        if end > self.size:
            self.size = end
            self._committer.written(self)
        return n

    def _committer_step(self) -> int:
        return int(getattr(self._committer, "step", 1 << 20))

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        os.ftruncate(self._fd, size)
        if size != self.size and self.sequential:
            self.sequential = False  # the running CRC32 no longer covers the contents
            self._committer.rewritten(self)
        self.size = size
        return size

    def flush(self) -> None:
        """Nothing is buffered: every ``write`` has reached the staging file."""

    # -- the end of a write -----------------------------------------------------------------------
    def close(self) -> None:
        """Acknowledge the write: durable locally and journaled when this returns.

        In a transaction (``autocommit`` off) the file is only made durable; the
        transaction's commit acknowledges it.
        """
        if self.state != "open":
            super().close()
            return
        try:
            self.stage()
            if self.autocommit:
                self._committer.commit([self])
        except BaseException:
            self.discard()
            raise
        if self.autocommit:
            super().close()

    def stage(self) -> None:
        """fsync the contents and settle size and CRC32 (from the file after a seek back,
        or if something wrote through the descriptor)."""
        if self.state != "open":
            return
        os.fsync(self._fd)
        st = os.fstat(self._fd)
        actual, self.ino, self.mtime_ns = st.st_size, st.st_ino, st.st_mtime_ns
        if not self.sequential or actual != self.size:
            self.size = actual
            self._crc = _crc_of(self._fd, actual)
            if self.sequential:
                self.sequential = False
                self._committer.rewritten(self)
        self.state = "staged"

    @property
    def crc32(self) -> int:
        return self._crc

    def committed(self) -> None:
        """The journal holds it now: release the descriptor (and with it the lock)."""
        self.state = "committed"
        self._close_fd()
        super().close()

    def commit(self) -> None:
        """fsspec's transaction API: acknowledge a file staged in a transaction."""
        if self.state == "open":
            self.stage()
        if self.state == "staged":
            self._committer.commit([self])

    def discard(self) -> None:
        """Forget the write: the staging file is deleted and nothing reaches the origin."""
        if self.state in ("committed", "discarded"):
            return
        self.state = "discarded"
        self._close_fd()
        self._committer.discard(self)
        with contextlib.suppress(Exception):
            super().close()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and self.state == "open":
            self.discard()  # a half-written file is not a file: never upload it
        else:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "state", "") == "open":
            log.warning("%s: write file dropped without close(); discarded", self.path)
            with contextlib.suppress(Exception):
                self.discard()


def seek_position(pos: int, size: int, offset: int, whence: int, name: str) -> int:
    """Where ``seek(offset, whence)`` leads in a file of ``size`` bytes, now at ``pos``."""
    base = {io.SEEK_SET: 0, io.SEEK_CUR: pos, io.SEEK_END: size}[whence]
    if base + offset < 0:
        raise ValueError(f"negative seek position {base + offset} in {name}")
    return base + offset


def _crc_of(fd: int, size: int) -> int:
    crc, offset = 0, 0
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return crc

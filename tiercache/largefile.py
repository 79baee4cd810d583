"""``fs.open()`` of a large object: returns at once and fetches blocks as the file is read.

Random reads (a Parquet footer, then the row groups asked for) fetch only the blocks they
cover. Sequential reads (a ``torch.load``, a tar stream, a copy) start readahead once the
reader has gone more than two blocks in order: the next blocks are fetched while the
current ones are consumed, the window doubling up to ``[origin] readahead_blocks``, so a
random pattern (or one Parquet row group) never pays for blocks it does not read.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .blockread import Ahead
from .blocks import ObjectRecord
from .origin import OriginChangedError
from .write.files import seek_position

if TYPE_CHECKING:
    from .fs import TierCacheFileSystem

#: A read continuing a sequential run this long (in blocks) starts readahead.
_SEQUENTIAL_BLOCKS = 2


class ReadOnlyFile(io.RawIOBase):
    """What every tiercache file shares: read-only, seekable, a path and a size."""

    def __init__(self, fs: TierCacheFileSystem, path: str, size: int) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.mode = "rb"
        self.size = size
        self._pos = 0

    @property
    def name(self) -> str:
        return self.path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = seek_position(self._pos, self.size, offset, whence, self.path)
        return self._pos

    def info(self) -> dict[str, Any]:
        return {"name": self.path, "size": self.size, "type": "file"}


class LargeFile(ReadOnlyFile):
    """A read-only, seekable file over a large object's blocks."""

    def __init__(self, fs: TierCacheFileSystem, path: str, obj: ObjectRecord) -> None:
        super().__init__(fs, path, obj.size)
        self.obj = obj
        self._ahead: Ahead = {}
        self._run_end = -1  # where the current sequential run ends
        self._run = 0  # bytes read in order so far
        self._window = 1

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        start = self._pos
        reader = self.fs.cache.blocks
        with self._pinned():
            data = reader.read(self.fs.origin, self.obj, start, end, self._ahead)
        self._advance(start, end)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        end = min(self.size, self._pos + len(view))
        if end <= self._pos:
            return 0
        start = self._pos
        reader = self.fs.cache.blocks
        with self._pinned():
            reader.read_into(self.fs.origin, self.obj, start, view[: end - start], self._ahead)
        self._advance(start, end)
        return end - start

    def read_ranges_into(self, ranges: list[tuple[int, memoryview]]) -> None:
        """Fill each ``(offset, destination)`` pair, every block of all of them fetched
        concurrently (``load_safetensors`` reads each tensor straight into its memory)."""
        self._check_open()
        reader = self.fs.cache.blocks
        with self._pinned():
            reader.read_ranges_into(self.fs.origin, self.obj, ranges)

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """A file reads one version: a change at the origin is an error naming the file
        (earlier reads may have returned bytes of the version it was opened at)."""
        try:
            yield
        except OriginChangedError as exc:
            raise OriginChangedError(
                f"{self.obj.key} changed at the origin while open ({exc}); open it again "
                "to read the new version"
            ) from exc

    def _advance(self, start: int, end: int) -> None:
        """Move past a read; start or widen readahead when the reads run in order."""
        self._pos = end
        block = self.obj.block_size
        if start == self._run_end:
            self._run += end - start
        else:
            self._run, self._window = end - start, 1
            self._drop_ahead(keep_from=self.obj.block_of(min(end, self.size - 1)))
        self._run_end = end
        limit = self.fs.config.origin.readahead_blocks
        if not limit or self._run <= _SEQUENTIAL_BLOCKS * block or end >= self.size:
            return
        first = self.obj.block_of(end)
        wanted = list(range(first, min(self.obj.blocks, first + self._window)))
        self._drop_ahead(keep_from=first)
        self.fs.cache.blocks.readahead(self.fs.origin, self.obj, wanted, self._ahead)
        self._window = min(limit, self._window * 2)

    def _drop_ahead(self, keep_from: int) -> None:
        """Forget blocks fetched ahead that the reader has moved past (or away from)."""
        for i in [i for i in self._ahead if i < keep_from]:
            future = self._ahead.pop(i)
            if not future.cancel():
                self.fs.cache.counters.add("prefetch_wasted")

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.path}")

    def close(self) -> None:
        if not self.closed:
            self._drop_ahead(keep_from=self.obj.blocks + 1)
        super().close()

    def __enter__(self) -> LargeFile:
        return self

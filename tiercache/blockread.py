"""The reader's half of block caching: a range of a large object, from its blocks.

Runs in every process that reads (one :class:`BlockReader` per :class:`~tiercache.cache.Cache`).
A range read touches only the blocks it covers: each is a hit straight from its tier
(verified as its tier says: a hit verifies only the blocks it returns) or a miss the engine
fetches. Reads spanning several blocks fetch them concurrently on this process's block
threads (``tiercache.ranged.pool``): a sliding window, each thread starting the next block
as soon as its last one is done. A whole read is assembled in place (``buffers.Filling``),
and where the engine runs in this process a missing block is received straight into its
place in the result.

A whole read of an object whose origin keeps a CRC32 checks the blocks against it (their
CRC32s combined, no second pass over the bytes). A mismatch (a bit flipped in one of the
ranged GETs) drops every block and reads the object again; bytes that do not match are never
returned. Once matched, every block's CRC32 is recorded, and a block fetched again later is
checked on its own.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from .blockfetch import cacheable, fetcher_for
from .blocks import LargeObject, ObjectRecord, records_for
from .buffers import Filling
from .index import Entry
from .ipc import dump_origin
from .origin import Origin, OriginChangedError, OriginIntegrityError
from .ranged import crc32_combine, pool, read_span
from .tiers.store import Buffer, CorruptBlobError

if TYPE_CHECKING:
    from .cache import Cache

log = logging.getLogger("tiercache.blocks")

T = TypeVar("T")

#: Blocks a reader has asked to be fetched ahead, by index, for :meth:`BlockReader.read_into`.
Ahead = dict[int, "Future[Buffer]"]


class BlockReader:
    """Reads large objects as blocks for one cache, in this process."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.index = cache.index
        self.records = records_for(cache.index)
        self.config = cache.config
        self.threads = cache.config.origin.block_concurrency

    # -- which objects are read as blocks ---------------------------------------------------------
    def route(self, origin: Origin, path: str, key: str) -> None:
        """On a miss of the whole-object entry: raise :class:`LargeObject` if ``path`` is read
        as blocks (a record exists, or a listing this process holds says it is large)."""
        obj = self.find(origin, path, key)
        if obj is None:
            size = origin.listed_size(path)
            if size is not None and size > self.config.origin.block_size:
                obj = self.describe(origin, path)
        if obj is not None:
            raise LargeObject(obj)

    def too_large(self, origin: Origin, path: str) -> None:
        """A whole-object fetch found ``path`` larger than a block: raise :class:`LargeObject`
        with its record (or return, if it has shrunk again since)."""
        obj = self.describe(origin, path)
        if obj is not None:
            raise LargeObject(obj)

    def find(self, origin: Origin, path: str, key: str) -> ObjectRecord | None:
        """The object's record if the node reads it as blocks, validated as ``[validation]``
        says (a changed object gets a new record: the blocks of the old one are never read)."""
        obj = self.records.get(key)
        if obj is None:
            return None
        if self.cache._fresh(origin, path, key, obj):  # type: ignore[arg-type]
            return obj
        return self.describe(origin, path)

    def describe(self, origin: Origin, path: str) -> ObjectRecord | None:
        """A fresh record from the origin (a HEAD, by the engine); None if it is small."""
        engine = self.cache._local_engine()
        if engine is not None:
            obj = fetcher_for(engine).describe(origin, path)
        else:
            reply, _ = self._call(origin, "describe", path=origin.strip(path))
            obj = ObjectRecord.from_json(reply["object"]) if reply["object"] else None
        return obj

    # -- reads ------------------------------------------------------------------------------------
    def read_object(
        self,
        origin: Origin,
        path: str,
        obj: ObjectRecord,
        start: int | None = None,
        end: int | None = None,
    ) -> bytes:
        """``fs.cat_file`` of a large object (fsspec's ``start``/``end``, negative from the
        end). An object that changes at the origin during the read is read again, whole,
        from its new version: never bytes of two versions (a file handle, which may have
        returned bytes of the old version already, raises instead)."""
        from .cache import _resolve_range

        for attempt in range(3):
            s, e = _resolve_range(start, end, obj.size)
            try:
                return self.read(origin, obj, s, e)
            except OriginChangedError as exc:
                if attempt == 2:
                    raise
                log.info("%s; reading it again from its new version", exc)
                self.cache.counters.add("stale_refetches")
                fresh = self.describe(origin, path)
                if fresh is None:  # small now: the whole-object path
                    return self.cache.read(origin, path, start, end)
                obj = fresh
        raise AssertionError("unreachable")

    def read(
        self, origin: Origin, obj: ObjectRecord, start: int, end: int, ahead: Ahead | None = None
    ) -> bytes:
        """Bytes ``[start, end)`` (already resolved against the size) as one ``bytes``."""
        out = Filling(max(0, end - start))
        self.read_into(origin, obj, start, out.view, ahead)
        return out.done()

    def read_into(
        self,
        origin: Origin,
        obj: ObjectRecord,
        start: int,
        dest: memoryview,
        ahead: Ahead | None = None,
        *,
        recheck: bool = True,
    ) -> None:
        """Fill ``dest`` with the object's bytes from ``start``, block by block."""
        end = start + len(dest)
        if end > obj.size:
            raise ValueError(f"{obj.key}: bytes {start}-{end} are beyond its {obj.size} bytes")
        if not cacheable(self.config, obj):
            self.cache.counters.add("streamed_reads")
        started = time.perf_counter()
        try:
            pieces = []
            for i in obj.covering(start, end):
                lo, hi = obj.span(i)
                lo, hi = max(lo, start), min(hi, end)
                pieces.append((i, dest[lo - start : hi - start], lo - obj.span(i)[0]))
            crcs = self._run([partial(self._fill, origin, obj, *p, ahead) for p in pieces])
            whole = (start, end) == (0, obj.size)
            if whole and obj.crc32 is not None and obj.crcs is None:
                self._check_whole(origin, obj, dest, crcs, recheck)
        finally:
            self.cache.counters.add("data_wait_ns", int((time.perf_counter() - started) * 1e9))

    def read_ranges_into(
        self, origin: Origin, obj: ObjectRecord, ranges: list[tuple[int, memoryview]]
    ) -> None:
        """Fill each ``(offset, destination)`` pair; every block any of them needs is read
        once, all concurrently (``load_safetensors``: each tensor straight into its memory)."""
        parts: dict[int, list[tuple[memoryview, int]]] = {}
        for start, dest in ranges:
            end = start + len(dest)
            if end > obj.size:
                raise ValueError(f"{obj.key}: bytes {start}-{end} are beyond its {obj.size}")
            for i in obj.covering(start, end):
                lo, hi = obj.span(i)
                a, b = max(lo, start), min(hi, end)
                parts.setdefault(i, []).append((dest[a - start : b - start], a - lo))
        started = time.perf_counter()
        try:
            self._run([partial(self._fill_parts, origin, obj, i, p) for i, p in parts.items()])
        finally:
            self.cache.counters.add("data_wait_ns", int((time.perf_counter() - started) * 1e9))

    def _fill_parts(
        self, origin: Origin, obj: ObjectRecord, index: int, parts: list[tuple[memoryview, int]]
    ) -> None:
        if len(parts) == 1:
            self._fill(origin, obj, index, *parts[0])
            return
        data, _ = self.get(origin, obj, index)
        view = memoryview(data)
        for piece, offset in parts:
            piece[:] = view[offset : offset + len(piece)]

    def _run(self, calls: list[Callable[[], T]]) -> list[T]:
        """Run ``calls`` on this process's block threads (inline when there is one) and
        return their results in order; on an error the rest finish or are cancelled first
        (they write into the caller's buffer)."""
        if len(calls) == 1:
            return [calls[0]()]
        workers = pool(self.threads)
        futures = [workers.submit(call) for call in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.exception()
            raise

    def _fill(
        self,
        origin: Origin,
        obj: ObjectRecord,
        index: int,
        piece: memoryview,
        offset: int,
        ahead: Ahead | None = None,
    ) -> int | None:
        """Copy block ``index``'s bytes from ``offset`` into ``piece``; returns the block's
        CRC32 where it is known without hashing (a whole block), else None."""
        start, end = obj.span(index)
        whole = offset == 0 and len(piece) == end - start
        future = ahead.pop(index, None) if ahead is not None else None
        if future is not None and not future.cancel():  # running or done: use it
            data: Buffer = future.result()
            self.cache.counters.add("prefetch_used")
            piece[:] = memoryview(data)[offset : offset + len(piece)]
            return None
        entry = self.index.get(obj.block_key(index))
        if entry is not None and self._copy_hit(entry, offset, piece):
            self._count_hit(entry, end - start)
            return None if entry.blob.compressed or not whole else entry.blob.checksum
        data, crc = self.get(origin, obj, index, into=piece if whole else None)
        if data is not piece:
            piece[:] = memoryview(data)[offset : offset + len(piece)]
        return crc if whole else None

    def get(
        self, origin: Origin, obj: ObjectRecord, index: int, into: memoryview | None = None
    ) -> tuple[Buffer, int | None]:
        """Block ``index``'s bytes (a view of its tier copy, or fetched) and, where known,
        their CRC32. ``into`` (the block's length) may receive a fetch directly."""
        cache = self.cache
        key = obj.block_key(index)
        length = obj.span(index)[1] - obj.span(index)[0]
        missed = False
        for _ in range(4):
            entry = self.index.get(key)
            if entry is not None:
                blob = cache._open_blob(entry)
                if blob is None:
                    continue  # moved, or damaged and dropped: look again
                if not missed:
                    self._count_hit(entry, length)
                crc = None if entry.blob.compressed else entry.blob.checksum
                return blob.data, crc
            if not missed:
                missed = True
                cache.counters.add("misses")
                cache._trace(key, length, None)
            if not cacheable(self.config, obj):
                buf = into if into is not None else memoryview(bytearray(length))
                crc = read_span(origin, obj.pin, obj.span(index), buf, obj.expected_crc(index))
                cache.counters.add("streamed_bytes", length)
                return buf, crc
            engine = cache._local_engine()
            if engine is not None:
                result = fetcher_for(engine).block(origin, obj, index, into)
                if result.data is not None:
                    return result.data, result.crc
                continue  # another reader stored it meanwhile: read it from its tier
            reply, payload = self._call(
                origin, "block", object=obj.to_json(), index=index, want_data=False
            )
            if reply["status"] == "data":  # no tier took it
                return payload, reply.get("crc")
        raise OSError(f"{key}: the cache kept changing under this read; giving up")

    def _count_hit(self, entry: Entry, length: int) -> None:
        cache = self.cache
        cache.counters.add("hits", tier=entry.tier)
        cache.counters.add("bytes_read", length, tier=entry.tier)
        cache._record_access(entry)
        cache._trace(entry.key, length, entry.tier)

    def _copy_hit(self, entry: Entry, offset: int, piece: memoryview) -> bool:
        """Copy a hit straight from its tier file into ``piece`` (``TierStore.read_into``),
        verified as the tier says. False where that path does not apply or anything goes
        wrong: the caller then takes ``Cache._open_blob``'s, which handles every case."""
        cache = self.cache
        verify = cache._always_verify[entry.tier]
        ttl = cache.config.tiers[entry.tier].verify_ttl_seconds
        if verify and cache.verified.fresh(entry.blob_id, entry.blob, ttl):
            verify = False  # another process on the node hashed this very file lately
        store = cache.stores[entry.tier]
        try:
            if not store.read_into(entry.blob_id, entry.blob, offset, piece, verify=verify):
                return False
        except (OSError, CorruptBlobError):
            return False
        if verify:
            cache.counters.add("read_verifications")
            if ttl > 0:
                cache.verified.record(entry.blob_id, entry.blob)
        return True

    def warm(self, origin: Origin, obj: ObjectRecord) -> int:
        """Fetch every block not yet cached (concurrently, no bytes assembled); returns the
        bytes fetched. An object larger than every tier is not fetched (it could not stay)."""
        if not cacheable(self.config, obj):
            raise ValueError(
                f"{obj.key} ({obj.size} bytes) is larger than every tier; it is streamed "
                "when read, never cached"
            )
        missing = [i for i in range(obj.blocks) if self.index.get(obj.block_key(i)) is None]
        workers = pool(self.threads)
        futures = [workers.submit(self._warm_block, origin, obj, i) for i in missing]
        return sum(f.result() for f in futures)

    def _warm_block(self, origin: Origin, obj: ObjectRecord, index: int) -> int:
        if self.index.get(obj.block_key(index)) is not None:
            return 0
        self.cache.counters.add("misses")
        engine = self.cache._local_engine()
        if engine is not None:
            fetcher_for(engine).block(origin, obj, index)
        else:
            self._call(origin, "block", object=obj.to_json(), index=index, want_data=False)
        start, end = obj.span(index)
        return end - start

    def readahead(
        self, origin: Origin, obj: ObjectRecord, indices: list[int], ahead: Ahead
    ) -> None:
        """Start fetching blocks ``indices`` for a reader that will want them next."""
        workers = pool(self.threads)
        for i in indices:
            if i not in ahead and 0 <= i < obj.blocks:
                self.cache.counters.add("prefetch_issued")
                ahead[i] = workers.submit(self._block_bytes, origin, obj, i)

    def _block_bytes(self, origin: Origin, obj: ObjectRecord, index: int) -> Buffer:
        return self.get(origin, obj, index)[0]

    # -- whole-object check ---------------------------------------------------------------------
    def _check_whole(
        self,
        origin: Origin,
        obj: ObjectRecord,
        dest: memoryview,
        crcs: list[int | None],
        recheck: bool,
    ) -> None:
        """Compare the blocks' combined CRC32 with the object's; refetch once on a mismatch."""
        known: list[int] = []
        total = 0
        for i, crc in enumerate(crcs):
            start, end = obj.span(i)
            if crc is None:
                crc = zlib.crc32(dest[start:end])
            known.append(crc)
            total = crc if i == 0 else crc32_combine(total, crc, end - start)
        if total == obj.crc32:
            engine = self.cache._local_engine()
            if engine is not None:
                fetcher_for(engine).verified(obj, known)
            else:
                self._call(origin, "verified", object=obj.to_json(), crcs=known)
            return
        self.cache.counters.add("checksum_failures")
        message = (
            f"{obj.key}: blocks combine to CRC32 {total:08x}, the origin's CRC32 is {obj.crc32:08x}"
        )
        if not recheck:
            raise OriginIntegrityError(message + " again after reading it afresh")
        log.warning("%s; reading every block afresh", message)
        for i in range(obj.blocks):
            self.cache.engine_call("invalidate", key=obj.block_key(i))
        self.read_into(origin, obj, 0, dest, recheck=False)

    def _call(self, origin: Origin, op: str, **fields: Any) -> tuple[dict[str, Any], Buffer]:
        if origin.pickled is None:
            origin.pickled = dump_origin(origin.fs)
        return self.cache.engine_call(op, _payload=origin.pickled, **fields)

"""The engine's half of block caching: records, and blocks fetched into the tiers.

Runs wherever the engine runs. A block is fetched once however many readers want it (a
single-flight table keyed by block), by a ranged GET pinned to its object's version, and
placed by the same policy code as any object (:meth:`Engine.admit`): a block is just an
entry. Ranged GETs in flight are bounded node-wide by ``[origin] block_concurrency``.

An object larger than every tier is never admitted: its blocks stream through to the
reader (who fetches them itself, see ``blockread.py``) and ``stats()`` counts them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from .blocks import ObjectRecord, records_for
from .config import Config
from .index import Entry
from .origin import Origin
from .ranged import head, read_span
from .tiers.store import Buffer
from .unstored import Held

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("tiercache.blocks")


@dataclass
class BlockResult:
    """A fetched block: its entry (None if no tier took it), its bytes in hand (None when
    they were already in a tier: read them there), and their CRC32."""

    entry: Entry | None
    data: memoryview | None
    crc: int | None


def cacheable(config: Config, obj: ObjectRecord) -> bool:
    """Whether any tier a miss may land in could hold the whole object."""
    first = config.tier_names.index(config.admission.tier)
    return any(obj.size <= t.capacity for t in config.tiers[first:])


class BlockFetcher:
    """Fetches blocks for every reader on the node (one per engine; see :func:`fetcher_for`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.records = records_for(engine.index)
        self._inflight: dict[str, Future[BlockResult]] = {}
        self._gets = threading.BoundedSemaphore(self.config.origin.block_concurrency)

    # -- records ----------------------------------------------------------------------------------
    def describe(self, origin: Origin, path: str) -> ObjectRecord | None:
        """The object's current record (one HEAD); None when it is small enough to be cached
        whole. A new version replaces the record, and the old version's blocks are dropped."""
        path = origin.strip(path)
        key = origin.key(path)
        found = head(origin, path)
        old = self.records.get(key)
        if found.size <= self.config.origin.block_size:
            if old is not None:
                self.records.delete(key)
                self._drop_blocks(old)
            return None
        if old is not None and old.version == found.version:
            obj = replace(old, fetched_at=time.time())
        else:
            obj = ObjectRecord.of(key, path, found, self.config.origin.block_size)
        self.records.put(obj)
        if old is not None and old.version != obj.version:
            log.info("%s changed at the origin (%s -> %s)", key, old.version, obj.version)
            self._drop_blocks(old)
        return obj

    def verified(self, obj: ObjectRecord, crcs: list[int]) -> None:
        """Every block of ``obj`` matched its whole-object CRC32: keep their CRC32s, so a
        block fetched again later is checked on its own."""
        current = self.records.get(obj.key)
        if current is not None and current.version == obj.version and current.crcs is None:
            self.records.put(current.verified(crcs))

    def forget(self, key: str) -> None:
        """Drop ``key``'s record and its blocks, if it is read as blocks."""
        old = self.records.get(key)
        if old is not None:
            self.records.delete(key)
            self._drop_blocks(old)

    def _drop_blocks(self, obj: ObjectRecord) -> None:
        for index in range(obj.blocks):
            self.engine.invalidate(obj.block_key(index))

    # -- blocks ---------------------------------------------------------------------------------
    def block(
        self,
        origin: Origin,
        obj: ObjectRecord,
        index: int,
        into: memoryview | None = None,
        *,
        prefetch: bool = False,
    ) -> BlockResult:
        """Fetch block ``index`` into the tiers once, however many callers ask at once.

        ``into`` (the block's length) receives the bytes straight from the socket: a whole
        read passes its own result buffer, saving a copy. A caller that waited for another
        thread's fetch gets that fetch's result (its bytes, or its entry).
        """
        work = lambda: self._fetch(origin, obj, index, into, prefetch)  # noqa: E731
        return self.engine._once(self._inflight, obj.block_key(index), work)

    def _fetch(
        self,
        origin: Origin,
        obj: ObjectRecord,
        index: int,
        into: memoryview | None,
        prefetch: bool,
    ) -> BlockResult:
        key = obj.block_key(index)
        current = self.engine.index.get(key)
        if current is not None:  # stored while we queued: read it from its tier
            return BlockResult(current, None, None)
        start, end = obj.span(index)
        buf = into if into is not None else memoryview(bytearray(end - start))
        with self._gets:
            fetched_at = time.time()  # the pinned version was current at some instant after
            crc = read_span(origin, obj.pin, (start, end), buf, obj.expected_crc(index))
        entry = None
        if cacheable(self.config, obj):
            # ``buf`` may be a view of a reader's result; admission copies it into the tier.
            held = Held(cast(bytes, buf), obj.version, fetched_at, crc)
            entry = self.engine.admit(key, held, prefetch=prefetch)
        return BlockResult(entry, buf, crc)


_FETCHERS: weakref.WeakKeyDictionary[Any, BlockFetcher] = weakref.WeakKeyDictionary()
_FETCHERS_LOCK = threading.Lock()


def fetcher_for(engine: Engine) -> BlockFetcher:
    """The engine's block fetcher (made on first use: engines that never see a large object
    pay nothing)."""
    with _FETCHERS_LOCK:
        fetcher = _FETCHERS.get(engine)
        if fetcher is None:
            fetcher = _FETCHERS[engine] = BlockFetcher(engine)
        return fetcher


#: Engine requests this module serves for readers in other processes (see ``ipc.py``).
OPS = ("describe", "block", "verified")


def serve(
    engine: Engine, op: str, header: dict[str, Any], origin: Origin
) -> tuple[dict[str, Any], Buffer]:
    """The engine side of a block request from another process.

    * ``describe`` {path}              -> {object: record or None}
    * ``block`` {object, index, want_data, prefetch}
                                       -> {status: "cached"} or {status: "data", crc} + bytes
    * ``verified`` {object, crcs}      -> {status: "ok"}
    """
    fetcher = fetcher_for(engine)
    if op == "describe":
        obj = fetcher.describe(origin, header["path"])
        return {"status": "ok", "object": obj.to_json() if obj else None}, b""
    obj = ObjectRecord.from_json(header["object"])
    if op == "verified":
        fetcher.verified(obj, header["crcs"])
        return {"status": "ok"}, b""
    result = fetcher.block(origin, obj, int(header["index"]), prefetch=bool(header.get("prefetch")))
    if result.entry is not None and not header.get("want_data"):
        return {"status": "cached"}, b""
    data: Buffer
    if result.data is not None:
        data = result.data
    else:
        assert result.entry is not None
        entry = result.entry
        data = engine.stores[entry.tier].get(entry.blob_id, entry.blob)
    return {"status": "data", "crc": result.crc}, data

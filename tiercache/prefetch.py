"""Prefetch: fetching hinted keys ahead of the consumer, within a byte budget."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from .index import blob_id_for
from .origin import ObjectTooLarge
from .plan import PlannedRead

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("tiercache.prefetch")


class Prefetcher:
    """Fetches hinted keys ahead of the consumer, within a byte budget.

    The budget counts bytes fetched ahead and not yet read, and the fetches in flight (at
    the size of the last object fetched, or of the plan's first object in a listing this
    process holds; a GET tells no size before it answers); reading a prefetched key gives
    its bytes back. Keys already cached are skipped, so only what is missing is fetched.
    Counting fetches in flight matters where no tier takes prefetched objects: the engine
    then holds them in memory for their readers, in a hold twice the budget, and the other
    half of that hold is what keeps an object just read for its other readers (the other
    DataLoader workers reading samples of the same shard).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: deque[PlannedRead] = deque()
        self._planned: set[str] = set()  # blob ids of the plan in force
        self._ahead: dict[str, int] = {}  # blob id -> bytes, fetched ahead and not yet read
        self._ahead_bytes = 0
        self._running = 0
        self._typical = 0  # bytes of the last object fetched: the guess for those in flight
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: The share of the budget fetched ahead (``crowded``): halved each time the hold
        #: let go of an object a reader then asked for again, doubled back every 10 s.
        self._scale = 1.0
        self._scaled_at = 0.0

    @property
    def budget(self) -> int:
        engine = self.engine
        admission = engine.config.tiers[engine.admission_tier].capacity
        return min(engine.config.prefetch.depth_bytes, max(1, admission // 2))

    def crowded(self) -> None:
        """The hold let go of an object for room while its readers were still reading it,
        and one of them had to read it from the origin again: objects fetched ahead took
        that room. Fetch less far ahead for a while. (Ranks of one node read the same
        shards with their DataLoader workers at different moments; an object fetched
        ahead costs nothing more to fetch when it is needed, one read again costs its
        bytes twice.)"""
        with self._cond:
            self._scale = max(1 / 16, self._scale / 2)
            self._scaled_at = time.monotonic()

    def _ahead_limit(self) -> int:
        """Under ``_cond``: the bytes to fetch ahead now."""
        if self._scale < 1 and time.monotonic() - self._scaled_at > 10:
            self._scale = min(1.0, self._scale * 2)
            self._scaled_at = time.monotonic()
        budget = self.budget  # 0: prefetch is off (``depth_bytes = 0``)
        return min(budget, max(1, int(budget * self._scale)))

    def plan(self, reads: list[PlannedRead]) -> None:
        """Fetch along ``reads`` (the node's merged plan) from now on.

        Objects fetched ahead that the new plan still lists stay counted as ahead; the
        others are counted as wasted."""
        with self._cond:
            planned = {r.blob_id for r in reads}
            for blob_id in [b for b in self._ahead if b not in planned]:
                self._ahead_bytes -= self._ahead.pop(blob_id)
                self.engine.counters.add("prefetch_wasted")
            self._planned = planned
            self._queue = deque(reads)
            if not self._typical and reads:
                # A listing in hand (the dataset listed its shards) sizes the fetches in
                # flight, so the first window starts at once instead of one object first.
                self._typical = reads[0].origin.listed_size(reads[0].path) or 0
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tiercache-prefetch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def consumed(self, blob_id: str) -> None:
        with self._cond:
            size = self._ahead.pop(blob_id, None)
            if size is not None:
                self._ahead_bytes -= size
                self.engine.counters.add("prefetch_used")
                self._cond.notify_all()

    def _run(self) -> None:
        limit = self.engine.config.prefetch.concurrency
        while True:
            with self._cond:
                while not self._stopped and (
                    not self._queue
                    or self._running >= limit
                    or self._committed() >= self._ahead_limit()
                ):
                    self._cond.wait(0.5)
                if self._stopped:
                    return
                read = self._queue.popleft()
                if (
                    read.blob_id in self._ahead
                    or read.key in self.engine._unstored
                    or self.engine.index.get(read.key) is not None
                ):
                    continue
                self._running += 1
            self.engine.submit(self._fetch_one, read)

    def _committed(self) -> int:
        """Bytes ahead of the reader: fetched and unread, plus the fetches in flight."""
        # Until one object's size is known, one fetch at a time: objects of unknown size
        # never overrun the budget, and the first one, which a reader is about to wait
        # for, gets the origin to itself.
        in_flight = self._typical or self.budget
        return self._ahead_bytes + self._running * in_flight

    def _fetch_one(self, read: PlannedRead) -> None:
        size = 0
        try:
            self.engine.counters.add("prefetch_issued")
            result = self.engine.fetch(read.origin, read.path, prefetch=True)
            size = len(result.data)  # in a tier, or held for the reader (``Unstored``)
        except ObjectTooLarge:
            self._fetch_blocks(read)  # counts its blocks as ahead itself
        except Exception as exc:  # a failed prefetch is only a lost optimisation
            log.debug("prefetch of %s failed: %s", read.path, exc)
        finally:
            with self._cond:
                self._running -= 1
                if size:
                    self._typical = size
                    self._count_ahead(read.blob_id, size)
                self._cond.notify_all()

    def _count_ahead(self, blob_id: str, size: int, *, planned: bool = False) -> None:
        """Under ``_cond``: bytes now waiting for their reader (unless the plan moved on)."""
        if (planned or blob_id in self._planned) and blob_id not in self._ahead:
            self._ahead[blob_id] = size
            self._ahead_bytes += size

    def _fetch_blocks(self, read: PlannedRead) -> None:
        """A large object (cached as blocks) in the plan: its blocks in order, while the
        budget lasts; readers' reads of each block give its bytes back. Blocks past the
        budget are fetched when read (and by a file's readahead)."""
        from .blockfetch import fetcher_for

        fetcher = fetcher_for(self.engine)
        obj = fetcher.describe(read.origin, read.path)
        if obj is None:
            return
        for index in range(obj.blocks):
            with self._cond:
                if self._stopped or read.blob_id not in self._planned:
                    return
                if index and self._ahead_bytes >= self.budget:
                    return
            block = fetcher.block(read.origin, obj, index, prefetch=True)
            start, end = obj.span(index)
            if block.entry is not None:  # stored (bytes only in hand are not kept)
                with self._cond:
                    self._count_ahead(blob_id_for(obj.block_key(index)), end - start, planned=True)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

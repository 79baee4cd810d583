"""Moving blobs between tiers in the background: demotions and promotions.

An admission that evicts from the RAM tier used to copy each victim down to the SSD tier
(read it, hash it, write it, fsync it) inside the engine lock and the index's write
transaction, on the thread of the reader whose miss caused it: every reader and every hit's
access record waited for disk writes of other objects. Now an evicted entry only leaves its
tier's policy; its blob stays where it is, still served to readers, and this thread copies it
down, unlocked, then commits the move (a rename and one index commit under the lock) and
deletes the old copy. Promotions take the same path upwards.

While moves are queued a tier holds more bytes than its policy counts, by at most the
backlog limit: an admission into a tier whose backlog is over it waits for the mover (the
disk really is slower than the origin then) for a bounded time.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .index import Entry
from .tiers.store import BlobMeta, CorruptBlobError

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("tiercache.mover")


@dataclass(frozen=True)
class Move:
    """Copy ``blob_id`` from tier ``src`` to ``dst``, if it is still as ``meta`` says."""

    blob_id: str
    src: int
    dst: int
    meta: BlobMeta

    @property
    def promotion(self) -> bool:
        return self.dst < self.src


class Mover:
    """One background thread that carries out queued moves in order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: deque[Move] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        #: Per tier: bytes queued to leave it (demoted or promoted away, not yet moved).
        self.leaving = [0] * len(engine.stores)
        self._thread = threading.Thread(target=self._run, name="tiercache-mover", daemon=True)
        self._thread.start()

    def demote(self, entry: Entry) -> None:
        self._put(Move(entry.blob_id, entry.tier, entry.tier + 1, entry.blob))

    def promote(self, entry: Entry) -> None:
        self._put(Move(entry.blob_id, entry.tier, entry.tier - 1, entry.blob))

    def _put(self, move: Move) -> None:
        with self._cond:
            self._queue.append(move)
            self.leaving[move.src] += move.meta.stored_size
            self._cond.notify_all()

    def limit(self, tier: int) -> int:
        """How far the tier may run over its capacity while its moves are queued."""
        return max(self.engine.config.tiers[tier].capacity // 8, 16 * 1024**2)

    def wait_room(self, tier: int, timeout: float = 30.0) -> None:
        """Back-pressure: wait while the tier's backlog is over its limit."""
        limit = self.limit(tier)
        with self._cond:
            self._cond.wait_for(lambda: self.leaving[tier] <= limit or self._stopped, timeout)

    def idle(self) -> bool:
        """No move queued or under way (``verify`` checks it holding the engine lock)."""
        with self._cond:
            return not self._queue and not self._busy

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every queued move is done (tests, ``verify``, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                move = self._queue.popleft()
                self._busy = True
            try:
                self._carry_out(move)
            except Exception:  # the mover must outlive any one bad blob
                log.exception(
                    "moving %s from tier %d to %d failed", move.blob_id, move.src, move.dst
                )
            finally:
                with self._cond:
                    self._busy = False
                    self.leaving[move.src] -= move.meta.stored_size
                    self._cond.notify_all()

    def _carry_out(self, move: Move) -> None:
        engine = self.engine
        entry = engine.index.get_by_blob_id(move.blob_id)
        if entry is None or entry.tier != move.src or entry.blob != move.meta:
            return  # dropped, refetched or moved meanwhile
        if not move.promotion and move.blob_id in engine.policies[move.src]:
            return  # admitted to its tier again since it was evicted
        src, dst = engine.stores[move.src], engine.stores[move.dst]
        staged = None
        try:
            # Read (and, from a disk, verify) unlocked; room is made under the lock; the
            # write and its fsync run unlocked again.
            with src.borrowed(
                move.blob_id, entry.blob, verify=src.config.verify == "always"
            ) as data:
                stored, compressed = dst.encode(data)
                with engine._lock:
                    reserved = engine._reserve_move(move, len(stored))
                if reserved:
                    try:
                        # The same stored bytes keep their checksum: no second pass over them.
                        same = not compressed and not entry.blob.compressed
                        staged = dst.stage(
                            move.blob_id,
                            stored,
                            compressed,
                            entry.size,
                            checksum=entry.blob.checksum if same else None,
                        )
                    finally:
                        with engine._lock:
                            engine._staging[move.dst] -= len(stored)
        except (FileNotFoundError, CorruptBlobError) as exc:
            log.info("not moving %s: %s", entry.key, exc)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            engine.counters.add("bypass_full", tier=move.dst)
        with engine._lock:
            engine._finish_move(move, entry, staged)

"""Objects the engine fetched but stored in no tier, held briefly for their other readers."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

from .bounded import Bounded

if TYPE_CHECKING:
    from .tiers.store import Staged


class Held(NamedTuple):
    """Bytes read from the origin, the version they are, and when (wall clock) they were read."""

    data: bytes | bytearray | memoryview  # a bytearray from s3direct, a view from a peer
    version: str
    fetched_at: float
    crc32: int | None = None  # of ``data``, when the origin's read computed it
    #: The bytes already written into a blob file of tier ``staged_tier`` (a peer's answer
    #: received straight into the tier): admitting there publishes it without a copy.
    staged: Staged | None = None
    staged_tier: int = -1


class Unstored:
    """Objects fetched but stored in no tier, held briefly within a byte budget.

    With the tiers full (a ``static`` tier holds its share of the data), an object no tier
    admits would otherwise be read from the origin once per reader: every DataLoader worker
    that reads a sample of the same shard, and again by the reader after a prefetch. Holding
    the bytes of the last few such objects makes each of them one origin read per epoch.

    When the budget is short, the object read by the most readers goes first (the oldest of
    those): it is the likeliest to be finished with, while one fetched ahead and not read
    yet is certain to be wanted.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[str, Held] = OrderedDict()
        self._reads: dict[str, int] = {}
        #: Keys let go for room while already being read (monotonic time): another reader
        #: asking for one soon after means the hold is too small for what is fetched ahead.
        self._let_go: Bounded[str, float] = Bounded(1024)
        self._bytes = 0
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> Held | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, held: Held, *, read: bool) -> None:
        """Hold ``held``; ``read``: a reader is being served it (not a fetch ahead)."""
        if len(held.data) > self.budget:
            return
        with self._lock:
            reads = self._reads.get(key, 0) + read
            self._pop(key)
            self._items[key] = held
            self._reads[key] = reads
            self._bytes += len(held.data)
            while self._bytes > self.budget:
                victim = self._victim()
                if self._reads[victim]:
                    self._let_go[victim] = time.monotonic()
                self._pop(victim)

    def regretted(self, key: str) -> bool:
        """Whether ``key`` was let go for room, while being read, in the last half minute
        (and is now asked for again: an origin read the hold caused)."""
        with self._lock:
            at = self._let_go.pop(key, None)
        return at is not None and time.monotonic() - at < 30

    def _victim(self) -> str:
        most, victim = -1, ""
        for key in self._items:  # oldest first
            if self._reads[key] > most:
                most, victim = self._reads[key], key
        return victim

    def drop(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: str) -> None:
        item = self._items.pop(key, None)
        self._reads.pop(key, None)
        if item is not None:
            self._bytes -= len(item.data)

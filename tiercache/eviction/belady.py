"""Belady's MIN: evict the resident key whose next use lies furthest in the future.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems
Journal 5(2), 1966. With the future known it is the optimum for equal-sized keys and the
yardstick for every other algorithm. Training knows its future: the sampler fixes each
epoch's order in advance, and the torch integration passes it to :meth:`Belady.hint`; in
``tiercache simulate`` the whole trace is the future.

Keys with no known next use (never again, or beyond the hinted horizon) are evicted first,
least recently used first. While no hint covers the current access (none given yet, or the
plan ran out) the decisions are delegated to the ``fallback`` algorithm (default ``"lru"``),
which shadows the resident set all along so that it can take over at any point.

Like libCacheSim's ``Belady``, a missed key is always admitted and the victim chosen among the
others (``bypass=False``); sizes do not enter the choice (byte-weighted MIN is NP-hard; this is
the usual heuristic). ``bypass=True`` is the textbook MIN instead: a key whose next use is
later than every resident's is not admitted, which is never worse for equal sizes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import Any

from .base import Key, PolicyInvariantError, SizedPolicy

#: The next-use time of a key with no known future access.
NEVER = 1 << 62


class Belady(SizedPolicy):
    name = "belady"

    def __init__(
        self, capacity: int, fallback: str = "lru", bypass: bool = False, reorder_window: int = 0
    ) -> None:
        super().__init__(capacity)
        from . import create_policy  # the registry imports this module

        if fallback == self.name:
            raise ValueError("belady cannot be its own fallback")
        self.fallback = fallback
        self.bypass = bypass
        self._shadow = create_policy(fallback, capacity)
        self._next: dict[Key, int] = {}  # resident key -> next use
        self._stamp: dict[Key, int] = {}  # resident key -> time of its last access
        self._heap: list[tuple[int, int, Key]] = []  # (-next use, stamp, key), lazily pruned
        self._future: dict[Key, deque[int]] = {}
        self._now = 0  # the earliest plan position not yet read (the clock)
        self._tick = 0  # accesses recorded, for recency among keys with no known next use
        self._consumed: set[int] = set()  # plan positions read ahead of the clock
        self._just_read: dict[Key, int] = {}  # key -> plan position it was last read at
        self._expiring: deque[tuple[int, Key]] = deque()
        #: How far ahead of the clock an access may match its planned position: readers
        #: in parallel (DataLoader workers, ranks) do not read in exactly the planned order.
        self.reorder_window = reorder_window
        self._horizon = 0  # hints cover accesses before this time
        self._planned = False  # whether a hint covers the access last recorded

    # -- hints -------------------------------------------------------------------------------
    def hint(self, upcoming: Sequence[Key]) -> None:
        """Replace the plan: ``upcoming[i]`` is the key of the i-th access from now."""
        future: dict[Key, deque[int]] = {}
        base = self._now
        for offset, key in enumerate(upcoming):
            times = future.get(key)
            if times is None:
                future[key] = deque((base + offset,))
            else:
                times.append(base + offset)
        self._future = future
        self._consumed = set()
        self._just_read = {}
        self._expiring = deque()
        self._horizon = base + len(upcoming)
        self._heap = []
        for key in self._sizes:
            self._push(key, self._next_use(key))

    def _next_use(self, key: Key) -> int:
        read_at = self._just_read.get(key)
        if read_at is not None and read_at + self.reorder_window >= self._now:
            return read_at  # its other readers are due about now
        times = self._future.get(key)
        if times is None:
            return NEVER
        now = self._now
        while times and times[0] < now:
            times.popleft()
        if not times:
            del self._future[key]
            return NEVER
        return times[0]

    def _push(self, key: Key, next_use: int) -> None:
        stamp = self._stamp[key]
        self._next[key] = next_use
        heapq.heappush(self._heap, (-next_use, stamp, key))
        if len(self._heap) > 4 * len(self._sizes) + 1024:
            # Too many stale entries: rebuild from the live ones.
            self._heap = [(-self._next[k], self._stamp[k], k) for k in self._sizes]
            heapq.heapify(self._heap)

    def _furthest(self) -> Key:
        heap = self._heap
        while True:
            neg_next, stamp, key = heap[0]
            if self._stamp.get(key) == stamp and self._next[key] == -neg_next:
                return key
            heapq.heappop(heap)

    # -- the policy --------------------------------------------------------------------------
    def record(self, key: Key, size: int) -> bool:
        self._planned = self._now < self._horizon
        self._advance(key)
        self._tick += 1
        self._shadow.record(key, size)
        if key not in self._sizes:
            return False
        self._stamp[key] = self._tick
        self._push(key, self._next_use(key))
        return True

    def _advance(self, key: Key) -> None:
        """Move the clock.

        With ``reorder_window = 0`` (the default, and what ``simulate`` replays a trace
        with) every access is one step: the plan lists every access, in order.

        With a window, the clock moves by plan position instead: an access that matches the
        key's next planned position (at most ``reorder_window`` ahead) consumes it, and the
        clock stands at the earliest position nobody has read, trailing the furthest one
        read by at most the window. Repeated reads of one planned object (two DataLoader
        workers reading samples of the same shard) do not move it, so a plan that lists each
        shard once stays in step with readers that open it several times, in nearly but not
        exactly the planned order; and a key just read counts as needed again until the
        clock has moved a window past it, so its other readers find it.
        """
        now = self._now
        if now >= self._horizon or not self.reorder_window:
            self._now = now + 1
            return
        times = self._future.get(key)
        if times:
            while times and times[0] < now:
                times.popleft()
        if not times or times[0] > now + self.reorder_window:
            return  # not this key's turn: a repeat, or an access the plan did not foresee
        position = times.popleft()
        self._just_read[key] = position
        self._expiring.append((position, key))
        self._consumed.add(position)
        while now in self._consumed:
            self._consumed.discard(now)
            now += 1
        self._now = now = max(now, position + 1 - self.reorder_window)
        if self._consumed and min(self._consumed) < now:
            self._consumed = {p for p in self._consumed if p >= now}
        # Keys read more than a window ago are no longer "due now": re-rank them.
        expiring = self._expiring
        while expiring and expiring[0][0] + self.reorder_window < now:
            read_at, old = expiring.popleft()
            if self._just_read.get(old) == read_at:
                del self._just_read[old]
                if old in self._sizes:
                    self._push(old, self._next_use(old))

    def admit(self, key: Key, size: int) -> bool:
        if not self._planned:
            return self._shadow.admit(key, size)
        return self._worth_storing(key, size, self._planned_use(key, 0))

    def admit_ahead(self, key: Key, size: int) -> bool:
        if self._now >= self._horizon:
            return self._shadow.admit(key, size)
        return self._worth_storing(key, size, self._planned_use(key, 1))

    def _worth_storing(self, key: Key, size: int, next_use: int) -> bool:
        if size > self.capacity:
            return False
        if not self.bypass or self.used + size <= self.capacity or not self._sizes:
            return True
        return next_use < self._next[self._furthest()]

    def _planned_use(self, key: Key, skip: int) -> int:
        """The key's planned position after ``skip`` more reads, ignoring that it was just
        read: a missed key is worth a slot for its future reads, not for its other readers
        of this moment (the engine holds the bytes for those)."""
        self._next_use(key)  # drops positions already past
        times = self._future.get(key)
        return times[skip] if times is not None and len(times) > skip else NEVER

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        if size > self.capacity:
            return []
        if not self._planned:
            evicted = self._shadow.insert(key, size)
            for victim in evicted:
                self._forget(victim)
            if key in self._shadow:
                self._add(key, size)
            return evicted
        evicted = []
        while self.used + size > self.capacity:
            victim = self._furthest()
            self._forget(victim)
            self._shadow.remove(victim)
            evicted.append(victim)
        self._add(key, size)
        # The shadow has room for the key, but may still drop keys by its own rules.
        for victim in self._shadow.insert(key, size):
            if victim != key:
                self._forget(victim)
                evicted.append(victim)
        return evicted

    def _add(self, key: Key, size: int) -> None:
        self._sizes[key] = size
        self.used += size
        self._stamp[key] = self._tick
        self._push(key, self._next_use(key))

    def _forget(self, key: Key) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used -= size
            del self._next[key]
            del self._stamp[key]

    def remove(self, key: Key) -> None:
        self._forget(key)
        self._shadow.remove(key)

    def params(self) -> dict[str, Any]:
        return {
            "fallback": self.fallback,
            "bypass": self.bypass,
            "reorder_window": self.reorder_window,
        }

    def check(self) -> None:
        super().check()
        if self._next.keys() != self._sizes.keys() or self._stamp.keys() != self._sizes.keys():
            raise PolicyInvariantError("belady: next-use bookkeeping and residents disagree")
        if not set(self._shadow.resident()) <= self._sizes.keys():
            raise PolicyInvariantError(f"belady: the {self.fallback} shadow holds extra keys")
        self._shadow.check()

"""Approximate access counts for TinyLFU admission: a count-min sketch with periodic halving.

Cormode and Muthukrishnan, "An improved data stream summary: the count-min sketch and its
applications", J. Algorithms 55(1), 2005; used for admission as in Einziger, Friedman and
Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM ToS 13(4), 2017.

Laid out as libCacheSim's W-TinyLFU lays out its counting Bloom filter, so that the two make
the same mistakes at the same rate: one shared array of ``ceil(COUNTERS_PER_KEY * entries)``
counters (14.4 per key, what libCacheSim derives from its 0.1% error target), every update
raising all of a key's counters, an estimate being the least of them. libCacheSim uses 10 hash
functions; here there are 4 (one 64-bit mix of ``hash(key)``, then double hashing), which
costs far less in Python and agreed with libCacheSim as closely as a 10-hash copy did
(docs/policies.md). :meth:`halve`
is TinyLFU's "reset", which ages every count so that old favourites do not block new ones.

Until :meth:`size_for` is called the counts are kept exactly in a dict: a byte-weighted cache
does not know how many keys it will hold until it is full, and replaying the exact counts into
the sketch at that point loses nothing.

``hash()`` of ``str`` keys is salted per process, so which keys collide differs between runs;
int keys are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

#: Counters per expected key; libCacheSim's bits-per-element for a 0.1% error target.
COUNTERS_PER_KEY = -math.log(0.001) / math.log(2) ** 2
HASHES = 4
_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


class FrequencySketch:
    """Approximate per-key counts; exact until sized."""

    def __init__(self) -> None:
        self._exact: dict[Hashable, int] | None = {}
        self._table: list[int] = []
        self.counters = 0

    @property
    def sized(self) -> bool:
        return self._exact is None

    def size_for(self, entries: int) -> None:
        """Switch to a fixed-size sketch for about ``entries`` keys, keeping the counts so far."""
        exact = self._exact
        if exact is None:
            return
        self.counters = max(math.ceil(COUNTERS_PER_KEY * max(1, entries)), 2 * HASHES)
        self._table = [0] * self.counters
        self._exact = None
        table = self._table
        for key, count in exact.items():
            for slot in self._slots(key):
                table[slot] += count

    def _slots(self, key: Hashable) -> tuple[int, int, int, int]:
        h = (hash(key) * _MIX) & _MASK64
        a, b, m = h & _MASK32, h >> 32, self.counters
        return (
            a % m,
            ((a + b) & _MASK32) % m,
            ((a + 2 * b) & _MASK32) % m,
            ((a + 3 * b) & _MASK32) % m,
        )

    def add(self, key: Hashable) -> None:
        exact = self._exact
        if exact is not None:
            exact[key] = exact.get(key, 0) + 1
            return
        i0, i1, i2, i3 = self._slots(key)
        t = self._table
        t[i0] += 1
        t[i1] += 1
        t[i2] += 1
        t[i3] += 1

    def estimate(self, key: Hashable) -> int:
        exact = self._exact
        if exact is not None:
            return exact.get(key, 0)
        i0, i1, i2, i3 = self._slots(key)
        t = self._table
        return min(t[i0], t[i1], t[i2], t[i3])

    def halve(self) -> None:
        if self._exact is not None:
            self._exact = {k: c >> 1 for k, c in self._exact.items() if c > 1}
        else:
            self._table = [c >> 1 for c in self._table]

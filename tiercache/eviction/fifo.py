"""First In, First Out: evict the key that was inserted earliest, ignoring hits.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems
Journal 5(2), 1966 (FIFO is one of the baselines studied there). Hits cost nothing, which is
why FIFO queues are the building block of SIEVE and S3-FIFO; on its own it is rarely the best
choice, but it never reorders anything, so it is the cheapest policy to run.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import Key, SizedPolicy


class FIFO(SizedPolicy):
    name = "fifo"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # oldest insertion first

    def record(self, key: Key, size: int) -> bool:
        return key in self._sizes

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        sizes = self._sizes
        while self.used + size > self.capacity:
            victim, victim_size = sizes.popitem(last=False)
            self.used -= victim_size
            evicted.append(victim)
        sizes[key] = size
        self.used += size
        return evicted
